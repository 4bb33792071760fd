# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""What test and predict runs leave behind: pictures per category with the decision, a CSV, per-category metrics.

Bayes-PFL is tested on several unseen categories at once (the paper's protocol), whose files share names
(``000.png`` in every category). anomalib's visualiser names a picture after the image's path below the
datamodule's ``category``, so categories overwrite each other's pictures, and the evaluator reports pooled metrics
only. Here:

* :class:`CategoryImageVisualizer` saves each picture as ``images/<category>/<defect>/<file>`` (images outside the
  MVTec/VisA layout keep anomalib's naming), adds the uncertainty map as a last panel when the batch has one, and
  writes the decision under it: score and label;
* :class:`PredictionTable` writes ``predictions.csv`` (path, category, score, label) in the run folder at the end of
  every ``predict``, atomically, whatever the datamodule;
* :class:`CategoryMetrics` logs the test metrics of each category (``ring/image_AUROC``) beside the pooled ones when
  a test set spans several categories.

Scores and labels in pictures and CSV are the post-processed ones (normalised to ``[0, 1]``, with 0.5 at the
threshold, once validation has set one; raw otherwise). A label is missing, not guessed, when there is no threshold
(:mod:`anomalib_bayes_pfl.thresholds`). Metrics, like the evaluator's, use the scores before post-processing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.metrics import AnomalibMetric, Evaluator
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.functional import add_text_to_image, visualize_anomaly_map
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from .atomic import atomic_write_csv
from .data.auxiliary import category_from_path
from .images import display_path
from .uncertainty import MAX_UNCERTAINTY

TABLE_NAME = "predictions.csv"
"""File, in the run folder, with one row per predicted image."""

TABLE_HEADER = ("path", "category", "score", "label")
"""Columns of the prediction table."""

CAPTION_HEIGHT = 28
"""Pixels of the strip under a picture that carries its decision."""

UNCERTAINTY_TITLE = "Uncertainty (MI)"
"""Title of the uncertainty panel (mutual information); its colours span 0 to ln 2 nats, the same for every image."""


def decision(label: torch.Tensor | bool | None) -> str:
    """The label in words; empty when there is none (no threshold).

    Example:
        >>> decision(torch.tensor(True)), decision(False), decision(None)
        ('anomalous', 'normal', '')
    """
    return "" if label is None else ("anomalous" if bool(label) else "normal")


def caption(item: ImageItem, category: str | None) -> str:
    """What a picture says under it: category, score and label (or that there is no threshold).

    Example:
        >>> item = ImageItem(image=torch.zeros(3, 8, 8), pred_score=torch.tensor(0.734), pred_label=torch.tensor(True))
        >>> caption(item, "ring")
        'ring | score 0.734 | anomalous'
    """
    parts = [category] if category else []
    if item.pred_score is not None:
        parts.append(f"score {float(item.pred_score):.3f}")
    parts.append(decision(item.pred_label) or "no threshold: no label")
    return " | ".join(parts)


def add_caption(picture: Image.Image, text: str) -> Image.Image:
    """The picture with a black strip under it that carries ``text``."""
    canvas = Image.new("RGB", (picture.width, picture.height + CAPTION_HEIGHT), "black")
    canvas.paste(picture.convert("RGB"), (0, 0))
    return add_text_to_image(canvas, text, size=CAPTION_HEIGHT // 2, background=None, position=(6, picture.height + 6))


def beside(picture: Image.Image, panel: Image.Image) -> Image.Image:
    """``panel`` pasted to the right of ``picture``, top-aligned, on black."""
    canvas = Image.new("RGB", (picture.width + panel.width, max(picture.height, panel.height)), "black")
    canvas.paste(picture.convert("RGB"), (0, 0))
    canvas.paste(panel.convert("RGB"), (picture.width, 0))
    return canvas


def picture_path(image_path: str, output_dir: Path, dataset_name: str | None, category: str | None) -> Path:
    """``<output_dir>/<category>/<defect>/<file>`` for the category layout, else anomalib's name (folder created).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> picture_path("data/rocket/test/crack/000.png", out, None, "brick").relative_to(out).as_posix()
        'rocket/crack/000.png'
    """
    found = category_from_path(image_path)
    if found is None:
        return generate_output_filename(image_path, output_dir, dataset_name, category)
    parts = PurePosixPath(str(image_path).replace("\\", "/")).parts
    path = output_dir / found / parts[-2] / parts[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run_category(trainer: Trainer) -> str | None:
    """The datamodule's category (a single-category run), if it names one."""
    category = getattr(getattr(trainer, "datamodule", None), "category", None)
    return category if isinstance(category, str) and category else None


class CategoryImageVisualizer(ImageVisualizer):
    """anomalib's ``ImageVisualizer`` that saves per category and writes the score and label under each picture.

    Args:
        **kwargs (Any): Arguments of :class:`~anomalib.visualization.ImageVisualizer`.
    """

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save one captioned picture per image (anomalib calls this for predict batches too)."""
        del pl_module, outputs, batch_idx, dataloader_idx
        output_dir = Path(self.output_dir or Path(trainer.default_root_dir) / "images")
        dataset_name = getattr(getattr(trainer, "datamodule", None), "name", None)
        run_category = _run_category(trainer)
        uncertainty = getattr(batch, "uncertainty_map", None)
        for index, item in enumerate(batch):
            picture = self.visualize(item)
            if picture is None:
                continue
            if uncertainty is not None:
                picture = beside(picture, self.uncertainty_panel(uncertainty[index]))
            path = str(item.image_path or "")
            text = caption(item, category_from_path(path) or run_category)
            add_caption(picture, text).save(picture_path(path, output_dir, dataset_name, run_category))

    def uncertainty_panel(self, uncertainty_map: torch.Tensor) -> Image.Image:
        """The uncertainty map ``(H, W)`` in the anomaly map's colours, scaled from 0 to ``ln 2``, titled.

        A fixed scale, not min-max per image: a picture whose samples all agree stays dark instead of showing its
        rounding noise at full contrast.
        """
        scaled = (uncertainty_map.detach().float().cpu() / MAX_UNCERTAINTY).clamp(0, 1)
        panel = visualize_anomaly_map(scaled, colormap=True, normalize=False).resize(self.field_size)
        text_config = dict(self.text_config)
        if not text_config.pop("enable", True):
            return panel
        return add_text_to_image(panel, UNCERTAINTY_TITLE, **text_config)


class PredictionTable(Callback):
    """Writes ``predictions.csv`` (path, category, score, label) in the run folder when ``predict`` ends.

    The file is replaced atomically, so a reader sees the previous run's table or this one's, whole. In a
    multi-process run each process writes the images it predicted, to ``predictions-rank<N>.csv``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str, str]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty table."""
        del trainer, pl_module
        self.rows = []

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add a row per post-processed image."""
        del pl_module, batch_idx, dataloader_idx
        run_category = _run_category(trainer) or ""
        for item in outputs:
            path = str(item.image_path or "")
            score = "" if item.pred_score is None else f"{float(item.pred_score):.6g}"
            category = category_from_path(path) or run_category
            self.rows.append((display_path(path), category, score, decision(item.pred_label)))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the table."""
        del pl_module
        name = TABLE_NAME if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.csv"
        atomic_write_csv(Path(trainer.default_root_dir) / name, TABLE_HEADER, self.rows)


def _select(batch: ImageBatch, fields: Iterable[str], keep: torch.Tensor) -> SimpleNamespace:
    """The ``fields`` of the batch's images where ``keep`` is true (what anomalib metrics read)."""
    values = {field: getattr(batch, field, None) for field in fields}
    kept = {field: None if value is None else value[keep.to(value.device)] for field, value in values.items()}
    return SimpleNamespace(**kept)


class CategoryMetrics(Callback):
    """The evaluator's test metrics per category, logged as ``<category>/<metric>`` when a test spans several.

    Runs before the post-processor, as the evaluator does, so the metrics see the model's scores.

    Args:
        evaluator (Evaluator): The model's evaluator; its test metrics are copied for each category.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.metrics: dict[str, list[AnomalibMetric]] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the previous run's categories."""
        del trainer, pl_module
        self.metrics = {}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the metrics of each category in the batch with its images."""
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        categories = [category_from_path(path) for path in batch.image_path or []]
        for category in sorted({name for name in categories if name is not None}):
            keep = torch.tensor([name == category for name in categories])
            for metric in self._metrics_of(category):
                metric.update(_select(batch, metric.fields, keep))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log each category's metrics, if there are several categories."""
        del trainer
        if len(self.metrics) < 2:
            return
        for category, metrics in sorted(self.metrics.items()):
            for metric in metrics:
                value = metric.compute()
                if value is not None:
                    pl_module.log(f"{category}/{metric.name}", value)

    def _metrics_of(self, category: str) -> list[AnomalibMetric]:
        if category not in self.metrics:
            self.metrics[category] = [copy.deepcopy(metric) for metric in self.evaluator.test_metrics]
            for metric in self.metrics[category]:
                metric.reset()
        return self.metrics[category]
