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

With a ``false_alarm_rate``, thresholds come from the normal validation images alone (:mod:`.calibration`): the
split-conformal quantile of their scores (image) and of their pixels (pixel) replaces anomalib's F1-adaptive
threshold, so no labelled anomaly is needed. Normalisation is anomalib's, unchanged: the calibrated threshold maps to
0.5 and labels are ``normalised score > 0.5``, i.e. ``raw score > threshold``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric

from .calibration import NormalScoreThreshold, check_false_alarm_rate, minimum_calibration_images
from .data.auxiliary import category_from_path

NEUTRAL_SENSITIVITY = 0.5
"""anomalib's default sensitivity: the normalised threshold is 0.5, where normalisation puts the learnt one."""


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
        false_alarm_rate (float | None): Set the thresholds from the normal validation images at this false-alarm
            rate (:mod:`.calibration`) instead of anomalib's F1-adaptive threshold; needs normalisation on and the
            default sensitivities. Defaults to ``None``.
        **kwargs (Any): Arguments of :class:`~anomalib.post_processing.PostProcessor`.

    Attributes:
        threshold_categories (list[str] | None): Categories of the images the thresholds were learnt on; ``None``
            when unknown (no validation yet, or images outside the category layout).
        calibration_images (int | None): Normal images the false-alarm thresholds were calibrated on.
    """

    def __init__(self, false_alarm_rate: float | None = None, **kwargs: Any) -> None:  # noqa: ANN401 - anomalib's
        super().__init__(**kwargs)
        self.threshold_categories: list[str] | None = None
        self.calibration_images: int | None = None
        self.false_alarm_rate = false_alarm_rate
        self._validated: set[str] = set()
        self._warned: set[str] = set()
        self._discard_loaded_thresholds = False  # set by load_checkpoint_config, applied as the state loads

    @property
    def false_alarm_rate(self) -> float | None:
        """The false-alarm rate the thresholds are calibrated at; ``None``: anomalib's F1-adaptive thresholds."""
        return self._false_alarm_rate

    @false_alarm_rate.setter
    def false_alarm_rate(self, rate: float | None) -> None:
        """Check the rate and install the threshold metrics that validation fills (also on checkpoint loading)."""
        self._false_alarm_rate = check_false_alarm_rate(rate)
        if rate is not None:
            self._check_calibrated_labels()
        self._image_threshold_metric = _threshold_metric(self._false_alarm_rate, "pred_score", "gt_label")
        self._pixel_threshold_metric = _threshold_metric(self._false_alarm_rate, "anomaly_map", "gt_mask")

    def _check_calibrated_labels(self) -> None:
        """Refuse settings under which labels would not be ``raw score > calibrated threshold``."""
        if not self.enable_normalization or {self.image_sensitivity, self.pixel_sensitivity} != {NEUTRAL_SENSITIVITY}:
            msg = (
                "false_alarm_rate needs enable_normalization=True and image/pixel sensitivity 0.5: anomalib labels "
                "'normalised score > 1 - sensitivity', which is the calibrated threshold only then. Leave those "
                "settings at their defaults, or drop false_alarm_rate."
            )
            raise ValueError(msg)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        """The anomalib settings plus the categories and false-alarm rate the thresholds were learnt with."""
        return (*super()._checkpoint_config_keys, "threshold_categories", "false_alarm_rate", "calibration_images")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start recording the categories of this validation."""
        del trainer, pl_module
        self._validated = set()

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the settings; categories or an image count of the wrong type (a damaged checkpoint) are unknown.

        A false-alarm rate you set is never replaced by the checkpoint's: when they differ, the checkpoint's
        thresholds (learnt at another rate, or F1-adaptive) are discarded as the state loads, with a warning, and
        this run's validation calibrates new ones (no labels until then). Without a rate of yours, the checkpoint's
        rate comes with its thresholds.
        """
        requested = self.false_alarm_rate
        super().load_checkpoint_config(config)
        stored = self.false_alarm_rate
        self._discard_loaded_thresholds = requested is not None and requested != stored
        if self._discard_loaded_thresholds:
            self.false_alarm_rate = requested
            learnt = "by anomalib's F1-adaptive rule" if stored is None else f"at false_alarm_rate={stored}"
            warnings.warn(
                f"The checkpoint's thresholds were learnt {learnt}, and false_alarm_rate={requested} was asked: they "
                "are not used. Validate on normal images (anomalib validate/fit) to calibrate at the asked rate; "
                "until then images get scores without labels.",
                ThresholdWarning,
                stacklevel=2,
            )
        names = self.threshold_categories
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            self.threshold_categories = None
        if isinstance(self.calibration_images, bool) or not isinstance(self.calibration_images, int):
            self.calibration_images = None

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """Load the buffers; thresholds and statistics learnt at another rate than the asked one are reset."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self._discard_loaded_thresholds:
            for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
                getattr(self, name).fill_(float("nan"))
            self._discard_loaded_thresholds = False

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
        if self.enable_thresholding and self.false_alarm_rate is not None:
            self.calibration_images = self._image_threshold_metric.num_images
            if not trainer.sanity_checking and bool(torch.isnan(self._image_threshold)):
                warnings.warn(self._too_few_images_message(), ThresholdWarning, stacklevel=2)

    def _too_few_images_message(self) -> str:
        """Why a false-alarm threshold is missing, and the fix."""
        rate, count = self.false_alarm_rate, self.calibration_images or 0
        return (
            f"No anomaly threshold at false_alarm_rate={rate}: it needs at least {minimum_calibration_images(rate)} "
            f"normal calibration images (held-out validation images) and there were {count} (n images "
            "can guarantee no rate below 1/(n + 1)). Validate on more normal images (e.g. a larger val_split_ratio) "
            "or choose a larger rate."
        )

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
            self._warn_once("<missing>", self._missing_threshold_message())
        elif self.enable_thresholding:
            self._warn_if_borrowed(batch_categories(batch.image_path))
        super().threshold_batch(batch)
        if missing_image:
            batch.pred_label = None
        if missing_pixel:
            batch.pred_mask = None

    def _missing_threshold_message(self) -> str:
        """Why there is no threshold: too few normal images for the rate, or no validation at all."""
        if self.false_alarm_rate is not None and self.calibration_images is not None:
            return self._too_few_images_message()
        return (
            "No anomaly threshold: nothing was validated (a zero-shot model predicting unlabelled images), so "
            "images get scores but no normal/anomalous label. For labels, predict with the checkpoint of a run "
            "that validated (--ckpt_path) or with a datamodule that has a labelled validation split"
            + (" (normal images suffice with false_alarm_rate)." if self.false_alarm_rate is not None else ".")
        )

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


def _threshold_metric(rate: float | None, field: str, target: str) -> Metric:
    """The conformal threshold of normal ``field`` values at ``rate``; without one, anomalib's F1-adaptive one."""
    if rate is None:
        return F1AdaptiveThreshold(fields=[field, target], strict=False)
    return NormalScoreThreshold(rate, field)


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
