# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Where the anomaly threshold comes from: no labels from a missing threshold, a warning for a borrowed one.

anomalib's ``PostProcessor`` learns an F1-adaptive threshold and min-max statistics on validation images and
applies them to test and predict images. Two cases go wrong silently for a zero-shot model:

* **no threshold**: nothing was validated (``anomalib predict --data <folder>`` of a zero-shot model, or
  ``SafePredictFolder``, which has no labelled images). The threshold is NaN and anomalib passes the raw score
  through as the label, which batches turn into ``True`` for any non-zero score: every image "anomalous". Here the
  labels (and masks) stay empty instead, with a :class:`ThresholdWarning` saying how to get a threshold.
* **borrowed threshold**: the threshold was learnt on validation images of other categories (the paper's protocol
  validates on the source categories and tests on unseen targets), so labels and normalised scores of the targets
  depend on how other categories score. Labels are still given, with a :class:`ThresholdWarning` naming both sets.

The categories come from the image paths (:func:`~anomalib_bayes_pfl.data.auxiliary.category_from_path`); the ones
validation saw are kept in the checkpoint with the post-processor's settings, so a reloaded model knows them too.
Metrics never depend on any of this: the evaluator reads the scores before post-processing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer

from .data.auxiliary import category_from_path


class ThresholdWarning(UserWarning):
    """Labels are missing (no threshold) or come from validation on other categories."""


def batch_categories(paths: Iterable[str] | None) -> set[str]:
    """The category folders of a batch's images (images outside the MVTec/VisA layout have none).

    Example:
        >>> sorted(batch_categories(["d/coffee/test/good/0.png", "photo.png", "d/rocket/test/hole/1.png"]))
        ['coffee', 'rocket']
    """
    return {category for category in map(category_from_path, paths or []) if category is not None}


class BayesPFLPostProcessor(PostProcessor):
    """anomalib's post-processor that never labels from a missing threshold and warns about a borrowed one.

    Args:
        **kwargs (Any): Arguments of :class:`~anomalib.post_processing.PostProcessor`.

    Attributes:
        threshold_categories (list[str] | None): Categories of the images the thresholds were learnt on; ``None``
            when unknown (no validation yet, or images outside the category layout).
    """

    def __init__(self, **kwargs: Any) -> None:  # noqa: ANN401 - anomalib's arguments
        super().__init__(**kwargs)
        self.threshold_categories: list[str] | None = None
        self._validated: set[str] = set()
        self._warned: set[str] = set()

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        """The anomalib settings plus the categories the thresholds were learnt on."""
        return (*super()._checkpoint_config_keys, "threshold_categories")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start recording the categories of this validation."""
        del trainer, pl_module
        self._validated = set()

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the settings; categories that are not a list of names (a damaged checkpoint) count as unknown."""
        super().load_checkpoint_config(config)
        names = self.threshold_categories
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            self.threshold_categories = None

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args: Any,  # noqa: ANN401
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        """Collect threshold statistics (anomalib) and the batch's categories."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        self._validated |= batch_categories(outputs.image_path)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Set the thresholds (anomalib) and remember which categories they come from."""
        super().on_validation_epoch_end(trainer, pl_module)
        if self.enable_thresholding:
            self.threshold_categories = sorted(self._validated) or None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Warn once per run."""
        del trainer, pl_module
        self._warned = set()

    on_predict_start = on_test_start

    def threshold_batch(self, batch: Batch) -> None:
        """Labels and masks (anomalib's) where a threshold was learnt; none, with a warning, where not (NaN).

        With normalisation on, anomalib compares against the normalised threshold (0.5) even when none was learnt,
        and the scores stay raw: labels would silently be ``raw score > 0.5``. So the learnt thresholds are checked.
        """
        missing_image, missing_pixel = bool(torch.isnan(self.image_threshold)), bool(torch.isnan(self.pixel_threshold))
        if self.enable_thresholding and missing_image:
            self._warn_once(
                "<missing>",
                "No anomaly threshold: nothing was validated (a zero-shot model predicting unlabelled images), so "
                "images get scores but no normal/anomalous label. For labels, predict with the checkpoint of a run "
                "that validated (--ckpt_path) or with a datamodule that has a labelled validation split.",
            )
        elif self.enable_thresholding:
            self._warn_if_borrowed(batch_categories(batch.image_path))
        super().threshold_batch(batch)
        if missing_image:
            batch.pred_label = None
        if missing_pixel:
            batch.pred_mask = None

    def _warn_if_borrowed(self, categories: set[str]) -> None:
        """Warn when images of categories that validation did not see are labelled."""
        if not self.threshold_categories:
            return
        for category in sorted(categories - set(self.threshold_categories)):
            self._warn_once(
                category,
                f"Labels and normalised scores of '{category}' use the threshold and statistics learnt on validation "
                f"images of {self.threshold_categories}: they depend on how those categories score. Metrics are "
                "unaffected (computed before post-processing); for labels of a category, validate on it.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        """Warn about ``key`` (a category, or ``"<missing>"``) once per test or predict run."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, ThresholdWarning, stacklevel=2)


def _has_validation_data(trainer: Trainer) -> bool:
    """Whether Lightning has somewhere to get validation batches from (a datamodule, dataloaders or the model).

    Reads the validate loop's data source (Lightning 2.x, private); when that is not found, assumes there is data.
    """
    source = getattr(getattr(trainer, "validate_loop", None), "_data_source", None)
    return source is None or source.is_defined()


class SkipValidationWithoutData(Callback):
    """Turns a ``validate`` with no validation data at all into a run of no batches.

    anomalib's ``Engine.predict`` validates a zero-shot model first, to learn thresholds; given a folder (``anomalib
    predict --data <folder>``) there is no datamodule, Lightning asks the model for validation data, and the run
    stops (``val_dataloader must be implemented``). Skipping it leaves the thresholds unset, which
    :class:`BayesPFLPostProcessor` reports. The trainer's ``limit_val_batches`` is restored when the run ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._limit: int | float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Set ``limit_val_batches`` to 0 for a ``validate`` without data."""
        del pl_module
        if stage == "validate" and not _has_validation_data(trainer):
            self._limit, trainer.limit_val_batches = trainer.limit_val_batches, 0

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Restore ``limit_val_batches``."""
        del pl_module, stage
        if self._limit is not None:
            trainer.limit_val_batches, self._limit = self._limit, None
