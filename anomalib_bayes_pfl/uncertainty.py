# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""How sure Bayes-PFL is, per pixel: the mutual information between the prompt sample and the label.

Bayes-PFL scores every image with ``R x B`` prompt pairs (``R = num_samples`` draws of the prompt distributions,
``B = num_prompts`` pairs of the bank); each gives an anomalous-probability map ``p_s`` and the anomaly map is their
mean ``p̄``. Where the samples disagree, the prompt posterior has not pinned the answer down. The measure here is
the mutual information (BALD) between the sample ``s`` and the pixel's label ``y``:

    I(y; s) = H(p̄) - mean_s H(p_s),   H(p) = -p ln p - (1 - p) ln(1 - p),

in nats, in ``[0, ln 2]``. It is zero exactly when all samples agree (whatever their probability: a pixel that
every sample calls 0.5 is ambiguous, not disagreed on) and grows as they spread. It is chosen over the standard
deviation of ``p_s`` because it is the Bayesian quantity for what the samples are, draws from a posterior: the
epistemic part of the predictive entropy, with the aleatoric part ``mean H(p_s)`` taken out; and its scale is
fixed (``ln 2``), so maps are comparable across images, models and ``R``, ``B``. A standard deviation of 0.05
means much more near ``p̄ = 0.02`` than near 0.5, which the mutual information accounts for (about
``var / (2 p̄ (1 - p̄))`` for a small spread). The cost is one entropy per sample map, a small share of the
text tower's work for the same ``R x B`` prompts (``benchmarks/uncertainty.py``). The map is not smoothed and
not normalised by the post-processor: it is in nats.

Where it goes:

* **eager** (Lightning's test and predict): the returned batch carries ``uncertainty_map (N, H, W)`` beside
  ``anomaly_map``, and the pictures show it (:class:`~anomalib_bayes_pfl.reporting.CategoryImageVisualizer`).
* **export**: anomalib 2.7 names the ONNX/OpenVINO outputs after the non-``None`` fields of whatever the
  module's ``forward`` returns (``ExportMixin.to_onnx`` probes it with ``_asdict()``), and its post-processor
  rebuilds a four-field ``InferenceBatch``, dropping anything else. An extra output is therefore possible, but
  anomalib's ``OpenVINOInferencer`` and ``TorchInferencer`` pass every output to ``NumpyImageBatch`` /
  ``ImageBatch``, which have no such field and raise ``TypeError``. The default export thus keeps anomalib's four
  outputs; inside :func:`uncertainty_output`, ``to_onnx``/``to_openvino`` add ``uncertainty_map``, to be read
  with OpenVINO's or ONNX Runtime's own API.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

import torch
from anomalib.data import InferenceBatch

from .finite import non_finite_images

if TYPE_CHECKING:
    from .lightning_model import BayesPFL

MAX_UNCERTAINTY = math.log(2)
"""Largest mutual information between a binary label and anything (nats): half the samples certain each way."""


class UncertainInferenceBatch(NamedTuple):
    """anomalib's ``InferenceBatch`` with the uncertainty map as a fifth field (its field names, in its order)."""

    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None


def bernoulli_entropy(probability: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of a binary label with the given probability, elementwise; 0 at 0 and 1.

    Example:
        >>> [round(value, 6) for value in bernoulli_entropy(torch.tensor([0.0, 0.5, 1.0])).tolist()]
        [0.0, 0.693147, 0.0]
    """
    return torch.special.entr(probability) + torch.special.entr(1 - probability)  # entr(x) = -x ln x, 0 at 0


def mutual_information(sample_maps: torch.Tensor) -> torch.Tensor:
    """Mutual information between sample and label per pixel, from sample maps ``(N, S, H, W)``; ``(N, H, W)``.

    Rounding can make the difference of entropies a few ulps negative where the samples agree; it is clamped at 0.

    Example:
        >>> agree, split = torch.full((1, 2, 1, 1), 0.3), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
        >>> float(mutual_information(agree)), round(float(mutual_information(split)), 6) == round(math.log(2), 6)
        (0.0, True)
    """
    mean_entropy = bernoulli_entropy(sample_maps).mean(dim=1)
    return (bernoulli_entropy(sample_maps.mean(dim=1)) - mean_entropy).clamp_min(0)


def with_uncertainty(
    prediction: InferenceBatch | UncertainInferenceBatch, images: torch.Tensor, uncertainty_map: torch.Tensor
) -> UncertainInferenceBatch:
    """``prediction`` with ``uncertainty_map``; images with a NaN or Inf pixel get the largest uncertainty.

    Such images have no score (the anomaly map flags them ``+inf``, :func:`~anomalib_bayes_pfl.finite.
    flag_non_finite_images`); ``ln 2`` says the same here, where a NaN would pass silently.
    """
    flagged = non_finite_images(images).view(-1, *[1] * (uncertainty_map.dim() - 1))
    uncertainty_map = torch.where(flagged, torch.full_like(uncertainty_map, MAX_UNCERTAINTY), uncertainty_map)
    return UncertainInferenceBatch(**(prediction._asdict() | {"uncertainty_map": uncertainty_map}))


def forward_with_uncertainty(module: BayesPFL, images: torch.Tensor) -> UncertainInferenceBatch:
    """Run anomalib's pipeline (pre-processor, model, post-processor) and keep the model's uncertainty map.

    The post-processor normalises the score and map and thresholds them; the uncertainty (nats) passes unchanged.
    """
    images = module.pre_processor(images) if module.pre_processor else images
    prediction = module.model(images, uncertainty=True)
    processed = module.post_processor(prediction) if module.post_processor else prediction
    return UncertainInferenceBatch(**(processed._asdict() | {"uncertainty_map": prediction.uncertainty_map}))


@contextmanager
def uncertainty_output(module: BayesPFL) -> Iterator[BayesPFL]:
    """Inside, ``module``'s ``forward`` (what ``to_onnx``/``to_openvino`` export) adds ``uncertainty_map``.

    Not for ``to_torch`` or anomalib's inferencers: they accept the four ``InferenceBatch`` fields only (see the
    module's notes).

    Example:
        >>> with uncertainty_output(model):  # doctest: +SKIP
        ...     model.to_openvino("export")  # outputs: pred_score, pred_label, anomaly_map, pred_mask, uncertainty_map
    """
    previous, module.exports_uncertainty = module.exports_uncertainty, True
    try:
        yield module
    finally:
        module.exports_uncertainty = previous
