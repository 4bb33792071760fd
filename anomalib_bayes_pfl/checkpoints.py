# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Saving and loading the trained head of Bayes-PFL ("prompt weights").

Only the head is saved (prompt bank, prompt flow with its fixed evaluation noise, RCA, image branch,
temperatures, stage and class name): the frozen CLIP comes from its own weights, so a head file is small and
works with any copy of the same CLIP. Files are read with ``torch.load(weights_only=True)``: a crafted pickle
cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

BACKBONE_PREFIX = "backbone."
"""State-dict prefix of the frozen CLIP inside :class:`BayesPFLModel`."""

LIGHTNING_PREFIX = "model."
"""State-dict prefix of :class:`BayesPFLModel` inside a Lightning checkpoint of :class:`BayesPFL`."""


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable head of a :class:`BayesPFLModel`: everything but the frozen CLIP."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith(BACKBONE_PREFIX)}


def save_prompt_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the head of ``model`` to ``path`` (loadable with ``BayesPFL(prompt_weights=path)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head_state_dict(model), path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely, with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        msg = f"Prompt weights not found: {path}. Pass a BayesPFL checkpoint (.ckpt) or a head file (.pt)."
        raise FileNotFoundError(msg)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        msg = (
            f"Could not read {path} as safe weights ({reason}). Only tensors and plain data are loaded; "
            "pass a checkpoint written by BayesPFL or anomalib-bayes-pfl."
        )
        raise ValueError(msg) from None


def _head_from_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Extract the head from a Lightning checkpoint or return a head file as it is."""
    if "state_dict" not in checkpoint:
        return checkpoint
    state_dict = checkpoint["state_dict"]
    return {
        key.removeprefix(LIGHTNING_PREFIX): value
        for key, value in state_dict.items()
        if key.startswith(LIGHTNING_PREFIX) and not key.startswith(LIGHTNING_PREFIX + BACKBONE_PREFIX)
    }


def load_prompt_weights(model: nn.Module, path: str | Path) -> None:
    """Load trained head weights into ``model``, checking every key and shape first.

    Raises:
        ValueError: If keys are missing or unexpected, or shapes differ (a head trained with other sizes).
    """
    head = _head_from_checkpoint(read_checkpoint(path))
    expected = head_state_dict(model)
    missing = sorted(set(expected) - set(head))
    unexpected = sorted(set(head) - set(expected))
    mismatched = sorted(
        key
        for key in set(expected) & set(head)
        if isinstance(expected[key], torch.Tensor) and expected[key].shape != getattr(head[key], "shape", None)
    )
    if missing or unexpected or mismatched:
        msg = (
            f"{path} does not fit this BayesPFL configuration: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {mismatched[:5]}. Use the backbone and prompt sizes (num_prompts, context_length, "
            "state_length, num_flows, num_samples, feature_layers) the weights were trained with."
        )
        raise ValueError(msg)
    model.load_state_dict(head, strict=False)
