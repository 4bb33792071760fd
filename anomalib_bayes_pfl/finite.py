# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Non-finite numbers must never become a verdict: NaN and Inf are stopped where they enter.

A NaN compares false with every threshold, so anomalib's post-processor labels a NaN score *normal*. NaN and Inf
therefore never pass silently:

* a **training loss** that is not finite stops training at once, before the optimiser step, so no checkpoint
  holds weights it produced (:func:`check_finite_loss`);
* **weights** with non-finite values are refused when a head or checkpoint is loaded (:func:`check_finite_weights`);
* an **input image** with a non-finite pixel is an error naming the image in eager use
  (:func:`check_finite_images`); the exported graph cannot raise, so there the torch model scores such an image as
  maximally anomalous (:func:`flag_non_finite_images`).

Example:
    >>> check_finite_weights({"a": torch.ones(2)}, "head.pt")
    >>> check_finite_weights({"a": torch.tensor([1.0, float("nan")])}, "head.pt")
    Traceback (most recent call last):
    ...
    ValueError: head.pt holds non-finite values (NaN or Inf) in 'a'; ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

SHOWN = 5
"""Names listed in an error; the rest are counted."""


def _names(names: Sequence[str]) -> str:
    """``'a', 'b'`` and how many more, for error messages."""
    shown = ", ".join(repr(name) for name in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def non_finite_tensors(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an Inf, in order."""
    return [
        name
        for name, value in state.items()
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def check_finite_weights(state: Mapping[str, object], source: str) -> None:
    """Refuse weights with NaN or Inf values: they would score every image NaN, which is labelled normal.

    Args:
        state (Mapping[str, object]): A state dict (non-tensor entries are skipped).
        source (str): What the weights are, for the message (e.g. the file).

    Raises:
        ValueError: Naming the first tensors with non-finite values.
    """
    bad = non_finite_tensors(state)
    if bad:
        msg = (
            f"{source} holds non-finite values (NaN or Inf) in {_names(bad)}; weights like these score every image "
            "NaN. They come from a diverged training run: use a checkpoint from before the divergence or retrain "
            "(e.g. with lower learning rates)."
        )
        raise ValueError(msg)


def check_finite_loss(terms: Mapping[str, torch.Tensor], step: int, any_rank: bool | None = None) -> None:
    """Stop training at the first non-finite loss, before it reaches the weights.

    Args:
        terms (Mapping[str, torch.Tensor]): The loss terms of one step, ``loss`` among them.
        step (int): The global step, for the message.
        any_rank (bool | None): Whether any DDP rank saw a non-finite loss (so all ranks stop together);
            ``None``: look at ``terms`` only.

    Raises:
        FloatingPointError: Naming the step and the non-finite terms.
    """
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
    if not (bad if any_rank is None else any_rank):
        return
    where = f"in the terms {_names(bad)}" if bad else "on another DDP rank"
    msg = (
        f"Bayes-PFL stopped on a non-finite training loss at step {step} ({where}); nothing of this step was "
        "applied or saved. Check the loss settings (focal_gamma, kl_weight, orthogonal_weight), lower the learning "
        "rates, or look for NaN/Inf pixels in the training images."
    )
    raise FloatingPointError(msg)


def non_finite_images(images: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N,)``: which images of ``(N, ...)`` have a NaN or Inf value."""
    return ~torch.isfinite(images).flatten(1).all(dim=1)


def check_finite_images(images: torch.Tensor, paths: Sequence[str] | None) -> None:
    """Refuse images with NaN or Inf pixels (eager inference), naming them.

    Args:
        images (torch.Tensor): A batch ``(N, C, H, W)``.
        paths (Sequence[str] | None): The images' paths, if known; else they are named by batch position.

    Raises:
        ValueError: Naming the images with non-finite pixels.
    """
    bad = non_finite_images(images).nonzero().flatten().tolist()
    if bad:
        names = [str(paths[index]) if paths is not None else f"image {index} of the batch" for index in bad]
        msg = (
            f"Non-finite pixel values (NaN or Inf) in {_names(names)}: such an image has no anomaly score. Fix or "
            "remove the image (e.g. a float TIFF with NaN no-data pixels: fill them first)."
        )
        raise ValueError(msg)


def flag_non_finite_images(
    images: torch.Tensor, score: torch.Tensor, anomaly_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score and map ``+inf`` for images with a non-finite pixel: in a graph that cannot raise, anomalous.

    ``+inf`` is above every threshold, so the post-processor labels such an image anomalous (its normalised score
    is clamped to 1), where a NaN would be labelled normal.
    """
    flagged = non_finite_images(images)
    infinity = torch.tensor(float("inf"), dtype=score.dtype, device=score.device)
    score = torch.where(flagged, infinity, score)
    anomaly_map = torch.where(flagged.view(-1, *[1] * (anomaly_map.dim() - 1)), infinity, anomaly_map)
    return score, anomaly_map
