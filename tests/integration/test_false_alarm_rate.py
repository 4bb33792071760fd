"""Thresholds from normal images only: ``anomalib predict`` labels held-out normal images at the requested rate.

A zero-shot tiny model (random CLIP and head) is validated on ``n`` normal images of a generated category (anomalib's
``val_split_mode="from_train"``), which calibrates the thresholds, and then predicts ``m`` other normal images. Its
scores carry no semantics, which does not matter: the guarantee is about normal images only.

Tolerance. Split conformal gives ``rate - 1/(n+1) <= P(false alarm) <= rate`` for a new normal image (over the draw
of the calibration images too). The measured rate on ``m`` images varies around it by the binomial standard error
``sqrt(rate(1-rate)/m)`` and, for one fixed calibration set, by the spread of the conditional rate,
``Beta(n+1-k, k)`` with ``k = ceil((n+1)(1-rate))``, whose standard deviation is about ``sqrt(rate(1-rate)/(n+2))``
(plus the 1/(n+1) slack). The test accepts three combined standard deviations around ``[rate - 1/(n+1), rate]``.
For pixels, only the mean share of false-alarm pixels is guaranteed (``<= rate``); a share in [0, 1] with mean
``p`` has variance at most ``p(1-p)``, so the same tolerance bounds it from above.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from engines import cpu_engine

from anomalib_bayes_pfl import BayesPFL, generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.thresholds import ThresholdWarning

pytestmark = pytest.mark.integration

RATE = 0.1
CALIBRATION = 200
"""n: normal validation images (half of the train split)."""
HELD_OUT = 600
"""m: normal test images the false-alarm rate is measured on."""


def _tolerance(rate: float, n: int, m: int) -> float:
    """Three standard deviations of the measured rate: binomial over ``m`` plus calibration over ``n``."""
    return 3 * math.sqrt(rate * (1 - rate) / m + rate * (1 - rate) / (n + 2))


@pytest.fixture(scope="module")
def normal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated category with many small normal images (train: calibration, test: held out)."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("normal"),
        categories=["disc"],
        image_size=32,
        num_train=2 * CALIBRATION,
        num_test_normal=HELD_OUT,
        num_test_anomalous=1,
    )


@pytest.fixture(scope="module")
def zero_shot_kwargs(tiny_kwargs: dict, tiny_clip_weights: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A zero-shot tiny model's arguments: a saved random head on the shared random CLIP."""
    kwargs = tiny_kwargs | {"pretrained": tiny_clip_weights, "num_samples": 1}
    head = save_prompt_weights(BayesPFL(**kwargs).model, tmp_path_factory.mktemp("head") / "head.pt")
    return kwargs | {"prompt_weights": str(head), "visualizer": False}  # no pictures of 800 images: time


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(
        root=root,
        category="disc",
        val_split_mode="from_train",
        val_split_ratio=0.5,
        eval_batch_size=50,
        num_workers=0,
        seed=0,
    )


@pytest.fixture(scope="module")
def predicted(zero_shot_kwargs: dict, normal_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``anomalib predict`` of the test split: validation (calibration) first, as the Engine does for zero-shot."""
    model = BayesPFL(**zero_shot_kwargs, false_alarm_rate=RATE)
    warnings.filterwarnings("ignore")
    predictions = cpu_engine(tmp_path_factory.mktemp("run")).predict(model, datamodule=_datamodule(normal_root))
    return model, predictions


def test_held_out_normal_images_are_flagged_at_the_requested_rate(predicted: tuple) -> None:
    """The measured image false-alarm rate lies within the stated tolerance of the requested rate."""
    model, predictions = predicted
    labels = torch.cat([batch.pred_label[~batch.gt_label] for batch in predictions]).float()
    assert model.post_processor.calibration_images == CALIBRATION
    assert len(labels) == HELD_OUT
    measured, tolerance = float(labels.mean()), _tolerance(RATE, CALIBRATION, HELD_OUT)
    assert RATE - 1 / (CALIBRATION + 1) - tolerance <= measured <= RATE + tolerance, measured


def test_held_out_normal_pixels_are_flagged_at_most_at_the_rate(predicted: tuple) -> None:
    """The mean share of false-alarm pixels on held-out normal images is at most the rate, within tolerance."""
    _, predictions = predicted
    masks = torch.cat([batch.pred_mask[~batch.gt_label] for batch in predictions]).float()
    share = float(masks.mean())
    assert 0 < share <= RATE + _tolerance(RATE, CALIBRATION, HELD_OUT), share


def test_thresholds_travel_with_the_checkpoint(predicted: tuple, tmp_path: Path) -> None:
    """The calibrated thresholds, the rate and the image count are restored from a checkpoint."""
    model, _ = predicted
    path = tmp_path / "model.ckpt"
    model.trainer.save_checkpoint(path)
    loaded = BayesPFL.load_from_checkpoint(path)
    for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max"):
        assert torch.equal(getattr(loaded.post_processor, name), getattr(model.post_processor, name)), name
    assert loaded.post_processor.false_alarm_rate == RATE
    assert loaded.post_processor.calibration_images == CALIBRATION


def test_too_few_normal_images_for_the_rate_give_no_labels_and_say_why(
    zero_shot_kwargs: dict, normal_root: Path, tmp_path: Path
) -> None:
    """A rate that n validation images cannot guarantee: a warning with the numbers, then scores without labels."""
    model = BayesPFL(**zero_shot_kwargs, false_alarm_rate=0.01)
    engine = cpu_engine(tmp_path, limit_val_batches=1, limit_predict_batches=1)  # one batch each: 50 images
    with pytest.warns(ThresholdWarning, match=r"at least 99 normal calibration images .* there were 50 ") as caught:
        predictions = engine.predict(model, datamodule=_datamodule(normal_root))
    assert all(batch.pred_label is None and batch.pred_score is not None for batch in predictions)
    assert not any("nothing was validated" in str(warning.message) for warning in caught)
