"""Latency and memory harness: BayesPFL against its own vision forward, the reference procedure, WinCLIP, PatchCore.

Everything is timed in one process, interleaved (one round runs every candidate once, in a rotating order), and
the table reports the median per image and ratios, so machine load drifts hit all candidates alike.

Candidates:
    vision     the bare vision forward of BayesPFL's own CLIP backbone (the floor)
    R=10, R=1  BayesPFL inference with 10 and 1 prompt samples per image (same weights)
    reference  the reference implementation's procedure on the same weights (benchmarks/reference_procedure.py);
               its outputs are checked against ours before timing
    batch      BayesPFL R=10 on a batch, per image (checked equal to batch-1 outputs)
    openvino   the exported OpenVINO model (f32), same input, pre- and post-processing included
    winclip    anomalib's WinCLIP (random weights, its fixed ViT-B-16-plus-240); full mode only
    patchcore  anomalib's PatchCore (random backbone) at the same image size

Usage:
    python benchmarks/latency.py --backbone ViT-L-14-336 --image-size 518 [--rounds 3] [--plot perf.png]
    python benchmarks/latency.py --quick          # tiny configuration, under a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

sys.path.insert(0, str(Path(__file__).parent))
from reference_procedure import reference_output  # noqa: E402

Candidate = Callable[[], object]


def machine() -> str:
    """The processor, torch's thread count and the device, as the reports name the machine."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}"


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (CPU) or peak CUDA allocation since the last reset."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bayes_pfl(args: argparse.Namespace) -> BayesPFL:
    """The model under test: tiny in quick mode, else the given backbone with the paper's head sizes."""
    if args.quick:
        return BayesPFL(**(TINY_MODEL_ARGS | {"num_samples": 10}))
    layers = args.feature_layers or even_taps(args.backbone)
    return BayesPFL(
        backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size, feature_layers=layers
    )


def even_taps(backbone: str) -> list[int]:
    """Four evenly spaced blocks, ending with the last (6/12/18/24 for a 24-block ViT, 3/6/9/12 for 12)."""
    from anomalib_bayes_pfl.backbone import vision_depth

    depth = vision_depth(backbone)
    return [depth * quarter // 4 for quarter in range(1, 5)]


def _with_samples(model: BayesPFL, samples: int) -> Candidate:
    """Score with the first ``samples`` evaluation samples (R=1 is the model's first sample)."""
    noise = model.model.prompt_flow.eval_noise

    def run(images: torch.Tensor) -> object:
        model.model.prompt_flow.eval_noise = noise[:, :samples]
        try:
            return model.model(images)
        finally:
            model.model.prompt_flow.eval_noise = noise

    return run


def _check_reference(model: BayesPFL, image: torch.Tensor) -> float:
    """Largest difference of score and map between our model and the reference procedure (unsmoothed maps)."""
    blur = model.model.anomaly_map.blur
    model.model.anomaly_map.blur = torch.nn.Identity()
    try:
        ours = model.model(image)
        score, anomaly_map = reference_output(model.model, image)
    finally:
        model.model.anomaly_map.blur = blur
    return max(float((ours.pred_score - score).abs().max()), float((ours.anomaly_map - anomaly_map).abs().max()))


def _check_batch(model: BayesPFL, images: torch.Tensor) -> float:
    """Largest difference between batched and one-by-one scores and maps."""
    batched = model.model(images)
    single = [model.model(image.unsqueeze(0)) for image in images]
    scores = torch.cat([output.pred_score for output in single])
    maps = torch.cat([output.anomaly_map for output in single])
    return max(float((batched.pred_score - scores).abs().max()), float((batched.anomaly_map - maps).abs().max()))


def _openvino(model: BayesPFL, size: int, folder: Path) -> tuple[Candidate, float]:
    """Export (timed) and compile the OpenVINO model in f32."""
    import openvino as ov

    start = time.perf_counter()
    path = model.to_openvino(export_root=folder, input_size=(size, size), onnx_kwargs={"opset_version": 18})
    export_seconds = time.perf_counter() - start
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return (lambda images: compiled(images.numpy())), export_seconds


def _winclip() -> tuple[Candidate, int]:
    """anomalib's WinCLIP with random weights (offline), at its own 240 px."""
    from anomalib.models.image.winclip import torch_model

    torch_model.PRETRAINED = None
    model = torch_model.WinClipModel(class_name="object").eval()
    return model, 240


def _patchcore(size: int, images: torch.Tensor) -> Candidate:
    """anomalib's PatchCore with a random backbone and a memory bank from a few images."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False)
    model.train()
    with torch.no_grad():
        model.memory_bank = torch.cat([model(image.unsqueeze(0)) for image in images])
    return model.eval()


def time_interleaved(candidates: dict[str, tuple[Candidate, torch.Tensor]], rounds: int) -> dict[str, list[float]]:
    """Run every candidate once per round in a rotating order; seconds per image of each run."""
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:  # warm-up: allocations, lazy initialisation, OpenVINO first inference
            candidates[name][0](candidates[name][1])
        for index in range(rounds):
            for name in names[index % len(names) :] + names[: index % len(names)]:
                run, images = candidates[name]
                start = time.perf_counter()
                run(images)
                times[name].append((time.perf_counter() - start) / images.shape[0])
    return times


def main(argv: list[str] | None = None) -> dict:
    """Build, check, time; print the table; return it as a dict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--pretrained", default=None, help="open_clip tag, local file, or none (random)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--feature-layers", type=int, nargs="*", help="default: four evenly spaced blocks")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the batched candidate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny configuration; skips WinCLIP")
    parser.add_argument("--skip", nargs="*", default=[], help="candidates to leave out")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = _bayes_pfl(args).eval()
    size = model.model.backbone.image_size
    image = torch.rand(1, 3, size, size)
    batch = torch.rand(args.batch, 3, size, size)
    normalised = model.pre_processor.transform(image)
    with torch.no_grad():
        checks = {"reference_max_abs_diff": _check_reference(model, normalised)}
        checks["batch_max_abs_diff"] = _check_batch(model, model.pre_processor.transform(batch))
    candidates: dict[str, tuple[Candidate, torch.Tensor]] = {
        "vision": (model.model.backbone, normalised),
        "R=10": (_with_samples(model, model.model.prompt_flow.num_samples), normalised),
        "R=1": (_with_samples(model, 1), normalised),
        "reference": (lambda images: reference_output(model.model, images), normalised),
        f"batch{args.batch}": (model.model, model.pre_processor.transform(batch)),
        "eager+post": (model, image),
    }
    skip = set(args.skip) | ({"winclip"} if args.quick else set())
    extra = {}
    with tempfile.TemporaryDirectory() as folder:
        if "openvino" not in skip:
            candidates["openvino"], extra["openvino_export_s"] = _openvino(model, size, Path(folder))
            candidates["openvino"] = (candidates["openvino"], image)
        if "winclip" not in skip:
            winclip, winclip_size = _winclip()
            candidates["winclip"] = (winclip, torch.rand(1, 3, winclip_size, winclip_size))
        if "patchcore" not in skip:
            candidates["patchcore"] = (_patchcore(size, torch.rand(2, 3, size, size)), normalised)
        times = time_interleaved({name: value for name, value in candidates.items() if name not in skip}, args.rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "machine": machine(),
        "config": {
            "backbone": "bayes-pfl-tiny" if args.quick else args.backbone,
            "image_size": size,
            "rounds": args.rounds,
        },
        "median_s_per_image": medians,
        "ratio_to_vision": {name: value / medians["vision"] for name, value in medians.items()},
        "reference_over_R10": medians.get("reference", float("nan")) / medians["R=10"],
        "eager_over_openvino": medians["eager+post"] / medians["openvino"] if "openvino" in medians else None,
        "peak_memory_mb": peak_memory_mb(),
        **checks,
        **extra,
    }
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        _plot(report, args.plot)
    return report


def _print(report: dict) -> None:
    print(f"\n{report['config']} on {report['machine']}")
    print(f"{'candidate':<12} {'median s/img':>13} {'x vision':>9}")
    for name, seconds in report["median_s_per_image"].items():
        print(f"{name:<12} {seconds:>13.4f} {report['ratio_to_vision'][name]:>9.2f}")
    print(f"reference / R=10: {report['reference_over_R10']:.2f}x   eager / OpenVINO: {report['eager_over_openvino']}")
    print(f"checks: reference {report['reference_max_abs_diff']:.2e}, batch {report['batch_max_abs_diff']:.2e}; "
          f"peak memory {report['peak_memory_mb']:.0f} MB")  # fmt: skip


def _plot(report: dict, path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["median_s_per_image"])
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.bar(names, [report["median_s_per_image"][name] for name in names])
    axis.set_ylabel("median s / image")
    axis.tick_params(axis="x", labelrotation=30)
    axis.set_title(
        f"{report['config']['backbone']} @ {report['config']['image_size']} ({report['machine']})", fontsize=8
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
