"""The split-conformal order statistic, its statistics, and the post-processor that applies it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import ImageBatch, InferenceBatch

from anomalib_bayes_pfl.calibration import (
    NormalScoreThreshold,
    check_false_alarm_rate,
    conformal_rank,
    conformal_threshold,
    minimum_calibration_images,
)
from anomalib_bayes_pfl.thresholds import BayesPFLPostProcessor, ThresholdWarning

TRIALS = 4000
"""Calibration sets drawn per statistical check: the mean rate's standard error is then about 0.001."""


@pytest.mark.parametrize(
    ("num_images", "rate", "rank"),
    [(9, 0.1, 9), (19, 0.1, 18), (99, 0.01, 99), (9, 0.3, 7), (10, 0.1, 10), (8, 0.1, None), (98, 0.01, None)],
)
def test_the_rank_is_ceil_of_n_plus_one_times_one_minus_rate(num_images: int, rate: float, rank: int | None) -> None:
    """k = ceil((n+1)(1-rate)) computed on the decimal rate (0.7 * 10 is 7, not 8 as in binary floating point)."""
    assert conformal_rank(num_images, rate) == rank
    assert (rank is None) == (num_images < minimum_calibration_images(rate))


def test_the_threshold_is_that_order_statistic_of_any_shape() -> None:
    """Image scores (n,) and maps (n, H, W) use the same rule; too few images give NaN."""
    scores = torch.randperm(19).float()
    assert conformal_threshold(scores, 0.1) == 17  # the 18th smallest of 0..18
    maps = torch.arange(19 * 4.0).reshape(19, 2, 2)
    assert conformal_threshold(maps, 0.1) == conformal_rank(19, 0.1, 4) - 1
    assert torch.isnan(conformal_threshold(scores[:8], 0.1))


@pytest.mark.parametrize(("num_images", "rate"), [(19, 0.1), (10, 0.1), (49, 0.05)])
def test_the_false_alarm_rate_is_guaranteed_over_calibration_sets(num_images: int, rate: float) -> None:
    """Uniform normal scores: a new one exceeds the threshold t with probability 1 - t; averaged over calibration
    sets it lies in [rate - 1/(n+1), rate] (the split-conformal bounds), here within 5 standard errors."""
    generator = torch.Generator().manual_seed(0)
    thresholds = torch.stack(
        [conformal_threshold(torch.rand(num_images, generator=generator), rate) for _ in range(TRIALS)]
    )
    mean_rate = float((1 - thresholds).mean())
    slack = 5 * float((1 - thresholds).std()) / TRIALS**0.5
    assert rate - 1 / (num_images + 1) - slack <= mean_rate <= rate + slack


def test_the_mean_share_of_false_alarm_pixels_is_guaranteed_for_correlated_pixels() -> None:
    """Pixels share their image's level (strongly correlated): the mean false-alarm share still stays <= rate."""
    generator = torch.Generator().manual_seed(0)
    num_images, pixels, rate = 19, 16, 0.1

    def maps(count: int) -> torch.Tensor:
        level = torch.randn(count, 1, generator=generator)
        return level + 0.3 * torch.randn(count, pixels, generator=generator)

    shares = torch.stack(
        [(maps(1) > conformal_threshold(maps(num_images), rate)).float().mean() for _ in range(TRIALS)]
    )
    assert float(shares.mean()) <= rate + 5 * float(shares.std()) / TRIALS**0.5


@pytest.mark.parametrize("rate", [0, 1, 1.5, -0.1, True, "0.1"])
def test_a_rate_outside_zero_one_is_refused(rate: object) -> None:
    """The message names the value and what is accepted."""
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        check_false_alarm_rate(rate)


def test_only_normal_images_calibrate() -> None:
    """An anomalous validation image, however high its score, does not move the threshold."""
    metric = NormalScoreThreshold(0.1, "pred_score")
    scores = torch.arange(20.0)
    labels = torch.zeros(20, dtype=torch.bool)
    labels[-1] = True  # score 19, anomalous
    metric.update(ImageBatch(image=torch.zeros(20, 3, 4, 4), pred_score=scores, gt_label=labels))
    assert metric.compute() == 17
    assert metric.num_images == 19


def _calibrated(rate: float = 0.1) -> BayesPFLPostProcessor:
    """A post-processor after a validation epoch on 19 normal images scored 0..18 (maps 0..75), as a fit leaves it."""
    post = BayesPFLPostProcessor(false_alarm_rate=rate)
    normal = ImageBatch(
        image=torch.zeros(19, 3, 2, 2),
        pred_score=torch.arange(19.0),
        anomaly_map=torch.arange(19 * 4.0).reshape(19, 2, 2),
        gt_label=torch.zeros(19, dtype=torch.bool),
        gt_mask=torch.zeros(19, 2, 2, dtype=torch.bool),
    )
    trainer = SimpleNamespace(sanity_checking=False)
    post.on_validation_epoch_start(trainer, None)
    post.on_validation_batch_end(trainer, None, normal)
    post.on_validation_epoch_end(trainer, None)
    return post


SCORES = torch.tensor([0.0, 16.9, 17.0, 17.1, 40.0])
MAPS = torch.tensor([0.0, 70.9, 71.0, 71.1]).reshape(1, 2, 2).repeat(5, 1, 1)
LABELS = [False, False, False, True, True]
"""Scores around the image threshold of :func:`_calibrated` (17), and their labels."""
MASK = [False, False, False, True]
"""Labels of the pixels of ``MAPS`` around the pixel threshold: the ceil(20 * 4 * 0.9) = 72nd smallest of 76, 71."""


class _Labels(torch.nn.Module):
    """The post-processor as an exported model runs it: scores and maps in, labels and masks out."""

    def __init__(self, post: BayesPFLPostProcessor) -> None:
        super().__init__()
        self.post = post

    def forward(self, scores: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.post(InferenceBatch(pred_score=scores, anomaly_map=maps))
        return result.pred_label, result.pred_mask


def test_labels_are_raw_scores_above_the_calibrated_thresholds_after_normalisation() -> None:
    """The model's forward (what is exported) labels exactly the scores above the calibrated thresholds."""
    post = _calibrated()
    assert post.image_threshold == 17
    labels, masks = _Labels(post)(SCORES, MAPS)
    assert labels.tolist() == LABELS
    assert masks[0].flatten().tolist() == MASK


def test_the_exported_post_processor_labels_at_the_calibrated_thresholds(tmp_path: Path) -> None:
    """Exported as anomalib exports (torch.onnx, dynamo) and run by OpenVINO: the thresholds are in the graph."""
    import openvino

    path = tmp_path / "labels.onnx"
    torch.onnx.export(_Labels(_calibrated()).eval(), (SCORES, MAPS), path, dynamo=True)
    labels, masks = openvino.Core().compile_model(path, "CPU")([SCORES.numpy(), MAPS.numpy()]).values()
    assert labels.tolist() == LABELS
    assert masks[0].flatten().tolist() == MASK


def test_the_rate_and_image_count_travel_with_the_checkpoint_settings() -> None:
    """Saved and restored with the post-processor's settings; an image count of the wrong type reads as unknown."""
    loaded = BayesPFLPostProcessor()
    loaded.load_checkpoint_config(_calibrated(0.05).checkpoint_config())
    assert (loaded.false_alarm_rate, loaded.calibration_images) == (0.05, 19)
    assert isinstance(loaded._image_threshold_metric, NormalScoreThreshold)  # noqa: SLF001
    loaded.load_checkpoint_config({"calibration_images": "19"})
    assert loaded.calibration_images is None


@pytest.mark.parametrize("stored", [0.05, None])
def test_a_rate_you_set_is_never_replaced_by_the_checkpoints(stored: float | None) -> None:
    """Loading a checkpoint learnt at another rate (or F1-adaptive) keeps your rate and drops its thresholds."""
    saved = _calibrated(stored) if stored is not None else BayesPFLPostProcessor()
    saved._image_threshold.fill_(17.0)  # noqa: SLF001 - a learnt threshold, whatever its rule
    loaded = BayesPFLPostProcessor(false_alarm_rate=0.1)
    with pytest.warns(ThresholdWarning, match=r"false_alarm_rate=0\.1 was asked: they are not used"):
        loaded.load_checkpoint_config(saved.checkpoint_config())
    loaded.load_state_dict(saved.state_dict())
    assert loaded.false_alarm_rate == 0.1
    assert torch.isnan(loaded.image_threshold)
    assert torch.isnan(loaded._pixel_threshold)  # noqa: SLF001


def test_the_same_rate_keeps_the_checkpoints_thresholds() -> None:
    """Resuming or testing at the rate the checkpoint was calibrated at keeps its thresholds."""
    saved = _calibrated(0.1)
    loaded = BayesPFLPostProcessor(false_alarm_rate=0.1)
    loaded.load_checkpoint_config(saved.checkpoint_config())
    loaded.load_state_dict(saved.state_dict())
    assert loaded.image_threshold == saved.image_threshold


def test_settings_that_would_move_labels_off_the_calibrated_threshold_are_refused() -> None:
    """anomalib labels 'normalised score > 1 - sensitivity': only sensitivity 0.5 with normalisation is the rate."""
    with pytest.raises(ValueError, match="needs enable_normalization=True and image/pixel sensitivity 0.5"):
        BayesPFLPostProcessor(false_alarm_rate=0.1, image_sensitivity=0.3)
    with pytest.raises(ValueError, match="needs enable_normalization=True"):
        BayesPFLPostProcessor(false_alarm_rate=0.1, enable_normalization=False)


def test_a_rate_with_another_post_processor_is_refused(tiny_kwargs: dict) -> None:
    """The rate acts through BayesPFL's post-processor: with one of the user's it would be silently ignored."""
    from anomalib.post_processing import PostProcessor

    from anomalib_bayes_pfl import BayesPFL

    with pytest.raises(ValueError, match="false_alarm_rate=0.1 sets the thresholds"):
        BayesPFL(**tiny_kwargs, false_alarm_rate=0.1, post_processor=PostProcessor())
