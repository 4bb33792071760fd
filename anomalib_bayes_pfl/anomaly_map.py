# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Anomaly maps and image scores from the per-pair logits of Bayes-PFL.

Every (normal, abnormal) prompt pair gives a 2-way softmax per pixel and per image. The reference upsamples the
per-layer patch logits bilinearly (``align_corners=True``) to the input size, takes each pair's softmax, keeps the
anomalous probability and averages over all pairs and layers. A 2-way softmax is the sigmoid of the logit
difference, and upsampling is linear, so upsampling the *difference* and applying a sigmoid is the same map with
half the upsampling work. The image score mixes the mean pair probability of the image branch with the mean of
the ``k`` largest values of the unsmoothed map; the map itself is then smoothed with a Gaussian.

Unlike the reference, no min-max normalisation over the test set happens here: a deployed model sees one image at
a time, and anomalib's post-processor normalises with statistics from validation. The paper's evaluation
(``benchmarks/paper_protocol.py``) takes the two halves of the score apart with
:meth:`AnomalyMapGenerator.score_parts` and normalises each over a category's test set.

On request the same pass also gives the per-pixel uncertainty: how much the pairs' maps (the prompt samples)
disagree (:mod:`~anomalib_bayes_pfl.uncertainty`); the map and score stay the same to the bit.

Paper:
    Qu et al., CVPR 2025, Sec. 3.5 and 4.1. Reference code: ``test.py`` of
    https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from anomalib.models.components.filters.blur import compute_kernel_size
from torch import nn

from . import defaults
from .uncertainty import mutual_information


def pair_logit_difference(logits: torch.Tensor) -> torch.Tensor:
    """Abnormal-minus-normal logits of each pair; the last axis holds all normal logits, then all abnormal ones.

    Example:
        >>> pair_logit_difference(torch.tensor([[1.0, 2.0, 4.0, 0.0]])).tolist()
        [[3.0, -2.0]]
    """
    half = logits.shape[-1] // 2
    return logits[..., half:] - logits[..., :half]


def pair_probabilities(
    layer_logits: list[torch.Tensor], grid: tuple[int, int], size: tuple[int, int]
) -> Iterator[torch.Tensor]:
    """Per tapped layer, each pair's anomalous probability at the input resolution ``(N, K, H, W)``."""
    for logits in layer_logits:
        difference = pair_logit_difference(logits).transpose(1, 2).unflatten(2, grid)  # (N, K, h, w)
        upsampled = F.interpolate(difference, size=size, mode="bilinear", align_corners=True)
        yield torch.sigmoid(upsampled)


def pixel_anomaly_maps(
    layer_logits: list[torch.Tensor], grid: tuple[int, int], size: tuple[int, int], uncertainty: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The anomaly probability map and, if asked, the uncertainty map, from one pass over the layers.

    The map is the mean over layers of each layer's mean over pairs (the reference's order, kept to the bit). The
    uncertainty needs each pair's own map (its sample map: the mean over layers), so those are summed alongside;
    the pairs are the ``R x B`` prompt samples (see :mod:`~anomalib_bayes_pfl.uncertainty`).

    Args:
        layer_logits (list[torch.Tensor]): Per tapped layer, patch logits ``(N, P, 2K)`` (``K`` pairs).
        grid (tuple[int, int]): Patch grid ``(h, w)`` with ``h * w = P``.
        size (tuple[int, int]): Output size ``(H, W)``.
        uncertainty (bool): Also compute the uncertainty map. Defaults to ``False``.

    Returns:
        tuple[torch.Tensor, torch.Tensor | None]: Anomaly probability map ``(N, H, W)``; uncertainty map
        ``(N, H, W)`` in nats, or ``None``.
    """
    total = samples = None
    for probability in pair_probabilities(layer_logits, grid, size):
        mean = probability.mean(dim=1)
        total = mean if total is None else total + mean
        if uncertainty:
            samples = probability if samples is None else samples + probability
    spread = None if samples is None else mutual_information(samples / len(layer_logits))
    return total / len(layer_logits), spread


def pixel_anomaly_probability(
    layer_logits: list[torch.Tensor], grid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Mean anomalous probability over layers and pairs ``(N, H, W)`` (arguments of :func:`pixel_anomaly_maps`)."""
    return pixel_anomaly_maps(layer_logits, grid, size)[0]


def image_anomaly_probability(logits: torch.Tensor) -> torch.Tensor:
    """Mean anomalous probability over pairs from image logits ``(N, 2K)``; returns ``(N,)``."""
    return torch.sigmoid(pair_logit_difference(logits)).mean(dim=-1)


def top_k_mean(anomaly_map: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each map ``(N, H, W)`` (all values if there are fewer)."""
    flat = anomaly_map.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def _is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` in Python, never a setting here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_scoring_settings(image_size: int, sigma: object, alpha: object, top_k: object) -> tuple[float, float, int]:
    """Validate the scoring settings at construction, so a bad value fails there and not at the first forward.

    Args:
        image_size (int): Side of the input; the smoothing kernel must be smaller.
        sigma (object): ``gaussian_sigma``: a finite real number >= 0.
        alpha (object): ``score_alpha``: a real number in [0, 1] (NaN is not).
        top_k (object): ``top_k``: an integer >= 1 (``bool`` and floats such as ``2.5`` or ``3.0`` are not).

    Returns:
        tuple[float, float, int]: ``(sigma, alpha, top_k)`` as plain Python numbers.

    Raises:
        ValueError: Naming the argument, its value and what it must be.

    Example:
        >>> check_scoring_settings(64, 1, 0.5, 20)
        (1.0, 0.5, 20)
    """
    if not _is_real(alpha) or not 0.0 <= float(alpha) <= 1.0:
        msg = f"score_alpha={alpha!r} must be a number in [0, 1]."
        raise ValueError(msg)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        msg = f"top_k={top_k!r} must be an integer >= 1 (pixels averaged into the image score)."
        raise ValueError(msg)
    if not _is_real(sigma) or not math.isfinite(float(sigma)) or float(sigma) < 0:
        msg = f"gaussian_sigma={sigma!r} must be a finite number >= 0 (0 disables smoothing)."
        raise ValueError(msg)
    if compute_kernel_size(float(sigma)) // 2 >= image_size:
        msg = (
            f"gaussian_sigma={sigma!r} gives a smoothing kernel larger than image_size={image_size}; use a smaller one."
        )
        raise ValueError(msg)
    return float(sigma), float(alpha), int(top_k)


class ScoreParts(NamedTuple):
    """The two halves of the image score before fusion, and the unsmoothed map they come from.

    The paper's evaluation min-max normalises each half over a category's test set before fusing them, so it needs
    them apart; the deployed model fuses them per image (:meth:`AnomalyMapGenerator.forward`).
    """

    text_score: torch.Tensor
    """Mean anomalous probability of the image branch over the pairs ``(N,)``."""

    map_score: torch.Tensor
    """Mean of the ``top_k`` largest values of :attr:`raw_map` ``(N,)``."""

    raw_map: torch.Tensor
    """Anomaly probability map before smoothing ``(N, H, W)``."""

    uncertainty_map: torch.Tensor | None = None
    """Mutual information between prompt sample and label ``(N, H, W)``, unsmoothed; ``None`` unless asked for."""


class AnomalyMapGenerator(nn.Module):
    """Fuses per-layer pixel logits and image logits into the anomaly map and the image score.

    Args:
        image_size (int): Side of the (square) input, used to validate the smoothing kernel.
        sigma (float): Gaussian smoothing of the map in pixels; ``0`` disables it. Defaults to ``8``.
        alpha (float): Weight of the image branch in the score. Defaults to ``0.5``.
        top_k (int): Pixels averaged for the map's share of the score. Defaults to ``2000``.

    Raises:
        ValueError: If a setting is not finite, out of range or (``top_k``) not an integer; see
            :func:`check_scoring_settings`.
    """

    def __init__(
        self,
        image_size: int,
        sigma: float = defaults.GAUSSIAN_SIGMA,
        alpha: float = defaults.SCORE_ALPHA,
        top_k: int = defaults.TOP_K,
    ) -> None:
        super().__init__()
        sigma, alpha, top_k = check_scoring_settings(image_size, sigma, alpha, top_k)
        self.alpha, self.top_k = alpha, top_k
        self.blur = GaussianBlur2d(sigma=sigma, channels=1) if sigma > 0 else nn.Identity()

    def forward(
        self,
        image_logits: torch.Tensor,
        layer_logits: list[torch.Tensor],
        grid: tuple[int, int],
        size: tuple[int, int],
        uncertainty: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The image score ``(N,)``, the smoothed anomaly map ``(N, H, W)`` and, if asked, the uncertainty map.

        The uncertainty map ``(N, H, W)`` is returned third, and only with ``uncertainty=True``, so that the
        two-value form stays what it always was.
        """
        parts = self.score_parts(image_logits, layer_logits, grid, size, uncertainty=uncertainty)
        fused = self.fuse(parts)
        return fused if parts.uncertainty_map is None else (*fused, parts.uncertainty_map)

    def fuse(self, parts: ScoreParts) -> tuple[torch.Tensor, torch.Tensor]:
        """The image score ``(N,)`` (the two halves weighted by ``alpha``) and the smoothed map ``(N, H, W)``."""
        score = self.alpha * parts.text_score + (1 - self.alpha) * parts.map_score
        return score, self.blur(parts.raw_map.unsqueeze(1)).squeeze(1)

    def score_parts(
        self,
        image_logits: torch.Tensor,
        layer_logits: list[torch.Tensor],
        grid: tuple[int, int],
        size: tuple[int, int],
        top_k: int | None = None,
        uncertainty: bool = False,
    ) -> ScoreParts:
        """The unfused text and map scores and the unsmoothed map (same arguments as :meth:`forward`).

        Args:
            image_logits (torch.Tensor): Image logits ``(N, 2K)``.
            layer_logits (list[torch.Tensor]): Per tapped layer, patch logits ``(N, P, 2K)``.
            grid (tuple[int, int]): Patch grid ``(h, w)``.
            size (tuple[int, int]): Map size ``(H, W)``.
            top_k (int | None): Pixels averaged into the map score; ``None``: this generator's ``top_k``. The
                paper's evaluation uses fewer for small-defect categories. Defaults to ``None``.
            uncertainty (bool): Also compute the uncertainty map. Defaults to ``False``.

        Returns:
            ScoreParts: ``text_score (N,)``, ``map_score (N,)``, ``raw_map (N, H, W)`` and, if asked,
            ``uncertainty_map (N, H, W)``.
        """
        raw_map, uncertainty_map = pixel_anomaly_maps(layer_logits, grid, size, uncertainty)
        map_score = top_k_mean(raw_map, self.top_k if top_k is None else top_k)
        return ScoreParts(image_anomaly_probability(image_logits), map_score, raw_map, uncertainty_map)
