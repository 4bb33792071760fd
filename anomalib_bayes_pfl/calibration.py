# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Decision thresholds from normal images only, at a false-alarm rate the user chooses (split conformal).

Given the scores of ``n`` normal calibration images that took no part in building what they are scored against (held-out
validation images, not the few-shot references that form the memory), the threshold is the ``k``-th smallest of them
with ``k = ceil((n + 1)(1 - rate))``, and an image is anomalous when its score is *above* it. Guarantee (split conformal
prediction): for a new normal image whose score is exchangeable with the calibration scores, ``P(false alarm) <= rate``,
the probability being over the calibration images and the new one. Without ties it is also ``>= rate - 1 / (n + 1)``.
The assumption is what matters in practice: calibration and new images come from the same distribution (same line,
lighting, camera, product); a drift breaks it. The smallest rate that ``n`` images can guarantee is ``1 / (n + 1)``: a
smaller one needs more images (:func:`minimum_calibration_images`), and no threshold is set.

Pixels are calibrated with the same rule over all ``n * N`` pixels of the ``n`` images (``N`` pixels each), with
``k = ceil((n + 1) * N * (1 - rate))``: by the same exchangeability argument over images, the expected share of
false-alarm pixels in a new normal image is at most ``rate`` (pixels of one image are not independent, so this
bounds the mean share, not the chance that a given image has no false-alarm pixel).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from anomalib.data import Batch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def check_false_alarm_rate(rate: float | None) -> float | None:
    """Return ``rate`` if it is ``None`` or a number strictly between 0 and 1.

    Raises:
        ValueError: Naming the value and what is accepted.
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
        msg = f"false_alarm_rate={rate!r} must be a number strictly between 0 and 1 (e.g. 0.01), or None."
        raise ValueError(msg)
    return float(rate)


def _exact(rate: float) -> Fraction:
    """The rate as the decimal the user wrote (``0.1`` is 1/10, not the nearest binary fraction)."""
    return Fraction(repr(float(rate)))


def minimum_calibration_images(rate: float) -> int:
    """Fewest normal images that can guarantee ``rate``: the smallest ``n`` with ``1 / (n + 1) <= rate``.

    Example:
        >>> minimum_calibration_images(0.1), minimum_calibration_images(0.01), minimum_calibration_images(0.3)
        (9, 99, 3)
    """
    return math.ceil(1 / _exact(rate)) - 1


def conformal_rank(num_images: int, rate: float, values_per_image: int = 1) -> int | None:
    """1-indexed rank of the threshold among the sorted calibration values; ``None`` if there are too few images.

    Example:
        >>> conformal_rank(9, 0.1), conformal_rank(19, 0.1), conformal_rank(8, 0.1), conformal_rank(9, 0.1, 4)
        (9, 18, None, 36)
    """
    rank = math.ceil((num_images + 1) * values_per_image * (1 - _exact(rate)))
    return rank if rank <= num_images * values_per_image else None


def conformal_threshold(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """The split-conformal threshold of normal scores: flag a new normal image with probability at most ``rate``.

    Args:
        scores (torch.Tensor): One row per calibration image: shape ``(n,)`` for image scores, ``(n, ...)`` for
            maps (every value of a row is a pixel of that image).
        rate (float): The false-alarm rate, in (0, 1).

    Returns:
        torch.Tensor: The ``k``-th smallest value (module docstring), or NaN when ``n`` is below
        :func:`minimum_calibration_images` (no threshold can guarantee the rate).

    Example:
        >>> conformal_threshold(torch.arange(1.0, 20.0), 0.1)  # k = ceil(20 * 0.9) = 18
        tensor(18.)
    """
    flat = scores.detach().reshape(len(scores), -1).float()
    rank = conformal_rank(flat.shape[0], rate, flat.shape[1]) if flat.numel() else None
    if rank is None:
        return torch.tensor(float("nan"), device=scores.device)
    return flat.flatten().kthvalue(rank).values


class NormalScoreThreshold(Metric):
    """Collects the scores of the normal images of validation batches; computes their conformal threshold.

    A drop-in for anomalib's ``F1AdaptiveThreshold`` inside its ``PostProcessor`` (``update(batch)``, ``compute``,
    ``reset``), reading one field of the batch (``pred_score`` or ``anomaly_map``) of the images labelled normal.
    Scores are concatenated across processes (DDP), so every rank computes the same threshold.

    Args:
        rate (float): The false-alarm rate.
        field (str): The batch field to calibrate.
    """

    full_state_update = False

    def __init__(self, rate: float, field: str) -> None:
        super().__init__()
        self.rate, self.field = rate, field
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.scores: list[torch.Tensor]
        self.num_images = 0

    def update(self, batch: Batch) -> None:
        """Keep the field's values of the batch's images labelled normal (none from a batch without labels)."""
        values = getattr(batch, self.field, None)
        if values is None or batch.gt_label is None:
            return
        normal = ~batch.gt_label.bool().reshape(-1).to(values.device)
        self.scores.append(values.detach()[normal].float())

    def compute(self) -> torch.Tensor:
        """The threshold (NaN with too few normal images); notes in ``num_images`` how many there were."""
        scores = dim_zero_cat(self.scores) if len(self.scores) else torch.empty(0)
        self.num_images = len(scores)
        return conformal_threshold(scores, self.rate)
