"""Zero-shot vs few-shot BayesPFL vs anomalib's WinCLIP few-shot vs PatchCore, on generated data, in one process.

Protocol: the generated MVTec-layout dataset (``generate_synthetic_dataset``, 64 px; per category 8 normal train
images, 40 normal and 20 anomalous test images), each category tested on its own with anomalib's ``MVTecAD``
datamodule, metrics averaged over categories. Validation is a seeded half of the test split
(``val_split_mode=from_test``) and the other half is tested, so the thresholds never see the images that measure
their false-alarm rate. Rows:

* ``BayesPFL zero-shot``: the tiny random CLIP with a seeded random head (``prompt_weights``);
* ``BayesPFL k=K``: the same head with the memory of the first ``K`` normal train images (``few_shot_weight`` 0.5),
  and ``memory only k=K`` (weight 1);
* ``WinCLIP k=K``: anomalib's WinCLIP (random ViT-B-16-plus-240, offline) with the same ``K`` references;
* ``PatchCore``: all normal train images (random wide-ResNet50, offline).

Columns: image AUROC, pixel AUROC, pixel AUPRO, and the false-alarm rate: the share of the held-out normal test
images labelled anomalous. BayesPFL is thresholded at ``--false-alarm-rate`` from normal validation images
(``false_alarm_rate``), the others at anomalib's F1-adaptive threshold.

Random weights carry no semantics: the numbers show that each mode runs end to end through anomalib and how far
plain image statistics of the frozen random features go (the memory compares tokens, so it can find a patch that
differs from the references even with random weights; the zero-shot head cannot, it was never trained). They do not
rank the methods on real data: with real CLIP weights and a trained head, see the paper and ``notes/peers.md``.

Usage:
    python benchmarks/few_shot.py [--categories ring grain] [--shots 1 2 4] [--false-alarm-rate 0.1]
        [--models bayes-pfl winclip patchcore] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC, Evaluator
from anomalib.models import AnomalibModule, Patchcore, WinClip
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl import BayesPFL, generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS
from anomalib_bayes_pfl.torch_model import BayesPFLModel

CATEGORIES = ("ring", "grain", "disc", "square", "stripes", "checker")
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
FALSE_ALARMS = "false_alarm_rate"
MODELS = ("bayes-pfl", "winclip", "patchcore")
DATASET = {"num_train": 8, "num_test_normal": 40, "num_test_anomalous": 20}
"""Per category: enough normal test images that half of them (validation) calibrate a 0.1 false-alarm rate (9 are
needed) and the other half measure it."""


def _evaluator() -> Evaluator:
    """The table's metrics for the anomalib models (their defaults lack AUPRO); BayesPFL's own evaluator has them."""
    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ],
    )


def _engine(root: Path, *callbacks: Callback) -> Engine:
    return Engine(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
        callbacks=list(callbacks),
    )


def false_alarm_rate(predictions: Sequence) -> float:
    """Share of the normal images among ``predictions`` (post-processed batches) that are labelled anomalous.

    NaN when the model gave no labels (no threshold could be set).
    """
    if any(batch.pred_label is None for batch in predictions):
        return math.nan
    labels = torch.cat([batch.pred_label.flatten().bool() for batch in predictions])
    normal = torch.cat([batch.gt_label.flatten() == 0 for batch in predictions])
    return float(labels[normal].float().mean()) if normal.any() else math.nan


def category_data(data_root: Path, category: str) -> MVTecAD:
    """One category; validation is a seeded half of its test split, so thresholds never see the measuring half."""
    return MVTecAD(
        root=data_root, category=category, eval_batch_size=32, num_workers=0, val_split_mode="from_test", seed=0
    )


class TestBatches(Callback):
    """Keeps the test batches: the post-processor labels them in place after this hook, before the test ends.

    Reading the labels of the test pass spares a predict pass over the same images (a third of WinCLIP's CPU time).
    """

    def __init__(self) -> None:
        self.batches: list = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        """Keep a reference to the batch; its labels are read once the test is over."""
        del trainer, pl_module, args
        self.batches.append(outputs)


def evaluate(model: AnomalibModule, data_root: Path, category: str, work: Path) -> dict[str, float]:
    """Fit (training or, for zero- and few-shot models, validation: the thresholds), test, and label the test set."""
    datamodule = category_data(data_root, category)
    batches = TestBatches()
    engine = _engine(work, batches)
    engine.fit(model, datamodule=datamodule)
    results = engine.test(model, datamodule=datamodule, verbose=False)[0]
    return {metric: float(results[metric]) for metric in METRICS} | {FALSE_ALARMS: false_alarm_rate(batches.batches)}


def variants(
    head: Path, shots: Sequence[int], rate: float | None, models: Sequence[str]
) -> dict[str, Callable[[], AnomalibModule]]:
    """The rows of the table for ``models`` (of :data:`MODELS`), each a fresh model factory."""
    bayes = TINY_MODEL_ARGS | {"prompt_weights": str(head)}
    if rate is not None:
        bayes |= {"false_alarm_rate": rate}
    rows: dict[str, Callable[[], AnomalibModule]] = {}
    if "bayes-pfl" in models:
        rows["BayesPFL zero-shot"] = lambda: BayesPFL(**bayes)
    for k in shots:
        if "bayes-pfl" in models:
            rows[f"BayesPFL k={k}"] = lambda k=k: BayesPFL(**bayes, k_shot=k)
            rows[f"BayesPFL memory only k={k}"] = lambda k=k: BayesPFL(**bayes, k_shot=k, few_shot_weight=1.0)
        if "winclip" in models:
            rows[f"WinCLIP k={k}"] = lambda k=k: WinClip(k_shot=k, evaluator=_evaluator())
    if "patchcore" in models:
        rows["PatchCore (all normal train images)"] = lambda: Patchcore(pre_trained=False, evaluator=_evaluator())
    return rows


def table(results: dict[str, dict[str, float]], rate: float | None) -> str:
    """Markdown table of the category means."""
    threshold = f"FAR (BayesPFL at {rate})" if rate is not None else "FAR (F1 threshold)"
    lines = ["| model (mean of categories) | " + " | ".join(METRICS) + f" | {threshold} | s |", "|---" * 6 + "|"]
    for name, row in results.items():
        values = " | ".join(f"{row[key]:.3f}" for key in (*METRICS, FALSE_ALARMS))
        lines.append(f"| {name} | {values} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def run(
    categories: Sequence[str], shots: Sequence[int], rate: float | None, models: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Every row on every category; returns the per-row means (and per-category values under ``categories``)."""
    from anomalib.models.image.winclip import torch_model as winclip_model

    winclip_model.PRETRAINED = None  # offline: random weights, like the tiny CLIP
    results = {}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        data_root = generate_synthetic_dataset(root / "data", categories, image_size=64, **DATASET)
        torch.manual_seed(0)
        head = save_prompt_weights(BayesPFLModel(**TINY_MODEL_ARGS), root / "head.pt")
        for name, build in variants(head, shots, rate, models).items():
            start, per_category = time.perf_counter(), {}
            for category in categories:
                seed_everything(0, workers=True)
                per_category[category] = evaluate(build(), data_root, category, root / "runs")
            means = {
                key: sum(row[key] for row in per_category.values()) / len(categories)
                for key in (*METRICS, FALSE_ALARMS)
            }
            results[name] = means | {"seconds": time.perf_counter() - start, "categories": per_category}
            logging.getLogger(__name__).warning("%s: %s", name, means)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--false-alarm-rate", type=float, default=0.1, help="BayesPFL's; 'none': F1 thresholds")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    results = run(args.categories, args.shots, args.false_alarm_rate, args.models)
    print(table(results, args.false_alarm_rate))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
