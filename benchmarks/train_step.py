"""Training-step cost: time per step and peak memory of one stage-1 step, with and without the text-side savings.

``optimised`` is BayesPFL as shipped: prompts cut after the longest end-of-text token, all prompts of the batch in
one text pass. ``full-length`` pads every prompt to the full 77-token context, as the reference does. Each mode
runs in its own process so that its peak memory is its own (peak RSS on CPU, peak CUDA allocation on a GPU).

Usage:
    python benchmarks/train_step.py --backbone ViT-L-14-336 --image-size 518 --batch 8 [--steps 2]
    python benchmarks/train_step.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS
from anomalib_bayes_pfl.training import build_optimizers

MODES = ("optimised", "full-length")


def _model(args: argparse.Namespace) -> BayesPFL:
    if args.quick:
        return BayesPFL(**TINY_MODEL_ARGS)
    return BayesPFL(backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size)


def _pad_text_to_full_context(model: BayesPFL) -> None:
    """Make the model encode full-length prompts: report the longest end-of-text as the end of the context."""
    tokenize = model.model._tokenize
    full = model.model.backbone.context_length - model.model.prompt_bank.num_learned_tokens

    def padded(names: list[str]) -> tuple[torch.Tensor, int]:
        return tokenize(names)[0], full

    model.model._tokenize = padded


def run_mode(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` stage-1 steps (after one warm-up step) in this process."""
    torch.manual_seed(0)
    model = _model(args)
    if args.mode == "full-length":
        _pad_text_to_full_context(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.model.to(device).train()
    hparams = model.hparams
    optimizer, _ = build_optimizers(model.model, hparams.lr, hparams.lr_prompt, hparams.lr_flow, hparams.lr_temperature,
                                    hparams.betas)  # fmt: skip
    size = model.model.backbone.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    masks = (torch.rand(args.batch, size, size, device=device) > 0.95).float()
    labels = torch.arange(args.batch, device=device) % 2
    names = ["bottle"] * args.batch
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        outputs = model.model(images, names)
        loss = model.loss(outputs, labels, masks, step % 3, 1, model.model.backbone.grid_size)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    per_step = statistics.median(times[1:])
    return {"mode": args.mode, "s_per_step": per_step, "images_per_s": args.batch / per_step, "peak_memory_mb": peak}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run each mode in a subprocess and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.mode:
        print(json.dumps(run_mode(args)))
        return []
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = []
    for mode in MODES:
        command = [sys.executable, __file__, *forwarded, "--mode", mode]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    config = "bayes-pfl-tiny @ 64" if args.quick else f"{args.backbone} @ {args.image_size}"
    print(f"\nstage-1 training step, {config}, batch {args.batch}")
    for result in results:
        print(f"{result['mode']:<12} {result['s_per_step']:8.2f} s/step {result['images_per_s']:7.2f} img/s "
              f"peak {result['peak_memory_mb']:8.0f} MB")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
