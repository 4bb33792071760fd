"""Ablation of the human-free options on generated data: every variant trained and tested in one process.

Protocol: the tiny random-weight CLIP (one saved file shared by all variants) at ``--image-size`` (the 64 px images
are upsampled), trained on four generated categories and tested zero-shot on two others (ring, grain) with their
real anomalies; each target category is tested on its own and the metrics are averaged (the MVTec AD protocol:
pooling categories mixes their score scales). ``labelled`` variants train on the source categories' anomalous
test images with masks (the paper's protocol); ``synthetic`` variants see only normal train images and make their
anomalies with object-attention anomaly generation; ``mixed`` uses both. Every variant runs the same number of
optimisation steps with the same seed, stage 1 then stage 2, no checkpoint selection (the last weights are tested).

Random CLIP weights carry no semantics: the table shows what each option does to a model that can only learn
from image statistics, not what it does with real CLIP weights.

Usage:
    python benchmarks/human_free.py [--steps 600] [--image-size 128] [--json results.json] [--variants ...]
    python benchmarks/human_free.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL, generate_synthetic_dataset
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS, save_random_tiny_clip

SOURCE_CATEGORIES = ("disc", "square", "stripes", "checker")
TARGET_CATEGORIES = ("ring", "grain")
LOCALITY = {"locality_window": 3, "locality_layers": (3, 4)}
VARIANTS: dict[str, tuple[str, dict]] = {
    "labelled": ("test", {}),
    "labelled + locality": ("test", LOCALITY),
    "synthetic": ("train", {"synthetic_anomalies": True}),
    "synthetic + MPTS": ("train", {"synthetic_anomalies": True, "meta_guidance": True}),
    "synthetic + locality": ("train", {"synthetic_anomalies": True} | LOCALITY),
    "synthetic + MPTS + locality": ("train", {"synthetic_anomalies": True, "meta_guidance": True} | LOCALITY),
    "mixed (labelled + synthetic)": ("both", {"synthetic_anomalies": True}),
}
"""Variant name -> (AuxiliaryTrain's ``train_split``, BayesPFL options)."""
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def run_variant(
    name: str,
    data_root: Path,
    clip_weights: Path,
    steps: int,
    image_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """Train one variant for about ``steps`` optimisation steps and test it on the target categories."""
    train_split, options = VARIANTS[name]
    datamodule = AuxiliaryTrain(
        data_root,
        SOURCE_CATEGORIES,
        train_split=train_split,
        train_batch_size=8,
        eval_batch_size=32,
        num_workers=0,
        seed=seed,
    )
    datamodule.setup()
    epochs = max(math.ceil(steps / len(datamodule.train_dataloader())), 2)
    seed_everything(seed)
    model = BayesPFL(
        **(TINY_MODEL_ARGS | {"pretrained": str(clip_weights), "image_size": image_size}),
        lr=1e-3,
        stage1_max_epochs=max(round(epochs * 0.85), 1),
        visualizer=False,
        **options,
    )
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(
            max_epochs=epochs,
            default_root_dir=folder,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - start
        per_category = {target: _test(engine, model, data_root, target, seed) for target in TARGET_CATEGORIES}
    means = {metric: sum(row[metric] for row in per_category.values()) / len(per_category) for metric in METRICS}
    return means | {"train_s": seconds, "epochs": epochs, "per_category": per_category}


def _test(engine: Engine, model: BayesPFL, data_root: Path, category: str, seed: int) -> dict[str, float]:
    """Test metrics on one target category."""
    datamodule = AuxiliaryTrain(
        data_root, SOURCE_CATEGORIES, target_categories=[category], eval_batch_size=32, num_workers=0, seed=seed
    )
    results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    return {metric: float(results[metric]) for metric in METRICS}


def _table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of the results."""
    lines = ["| variant (mean of targets) | " + " | ".join(METRICS) + " | train s |", "|---" * (len(METRICS) + 2) + "|"]
    for name, row in results.items():
        values = " | ".join(f"{row[metric]:.3f}" for metric in METRICS)
        lines.append(f"| {name} | {values} | {row['train_s']:.0f} |")
    return "\n".join(lines)


def run(
    output: Path,
    variants: Sequence[str],
    steps: int,
    image_size: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Generate the data once, then train and test every variant in turn."""
    data_root = generate_synthetic_dataset(
        output / "data", image_size=64, num_train=24, num_test_normal=16, num_test_anomalous=24, seed=seed
    )
    clip_weights = save_random_tiny_clip(output / "clip-tiny-random.pt", seed)
    return {name: run_variant(name, data_root, clip_weights, steps, image_size, seed) for name in variants}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("human_free_output"), help="data and CLIP file")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=600, help="optimisation steps per variant (rounded to epochs)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="two variants, 24 steps at 64 px (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.variants, args.steps, args.image_size = ["labelled", "synthetic + MPTS + locality"], 24, 64
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    results = run(args.output, args.variants, args.steps, args.image_size, args.seed)
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
