# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Saving and loading the trained head of Bayes-PFL ("prompt weights"), including the authors' released heads.

Only the head is saved (prompt bank, prompt flow with its fixed evaluation noise, RCA, image branch,
temperatures, stage, class name and the settings that shape its outputs, see :mod:`.head_settings`): the frozen
CLIP comes from its own weights, so a head file is small and works with any copy of the same CLIP. A head loads only
into a model with the same settings; a class name given to that model is kept (the stored one is the fallback).
Files are read and checked through :mod:`.safe_loading` (``weights_only=True``, plain data type- and size-checked,
wrong files named with what to pass) before a key reaches the model.

The authors' released heads (``train_visa.pth``, ``train_mvtec.pth``: ``{"MyModel": state_dict}`` of their
``Context_Prompting`` module, https://github.com/xiaozhen228/Bayes-PFL) load through the same ``prompt_weights``
argument: every key is renamed (and reshaped where the layouts differ) by :data:`REFERENCE_RENAMES`; the unused
decoders and the second copies of shared encoders are dropped; any other key is an error. They need the
ViT-L-14-336 OpenAI CLIP with ``activation="gelu"`` (the reference re-implementation's exact GELU).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .finite import check_finite_weights
from .head_settings import check_settings, requested_settings
from .safe_loading import (
    EXTRA_STATE_KEY,
    LIGHTNING_PREFIX,
    PROMPT_WEIGHTS_FIX,
    REFERENCE_CHECKPOINT_KEY,
    _content_kind,
    _quote,
    _quote_keys,
    _wrong_file_message,
    read_checkpoint,
    validate_extra_state,
)

logger = logging.getLogger(__name__)

NOT_HEAD_PREFIXES = ("backbone.", "anomaly_map.", "few_shot.")
"""Not saved with a head: the frozen CLIP (it has its own weights), the smoothing kernel (derived from
``gaussian_sigma``, a setting of the model that loads the head) and the few-shot memory (the reference images of a
category, not trained weights)."""


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained head of a :class:`BayesPFLModel`: everything but the frozen CLIP and derived buffers."""
    return {key: value for key, value in model.state_dict().items() if not key.startswith(NOT_HEAD_PREFIXES)}


def save_prompt_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the head of ``model`` to ``path`` (loadable with ``BayesPFL(prompt_weights=path)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head_state_dict(model), path)
    return path


def _head_from_checkpoint(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Extract the head from a Lightning checkpoint or return a head file as it is."""
    if "state_dict" not in checkpoint:
        return checkpoint
    state_dict = checkpoint["state_dict"]
    return {
        key.removeprefix(LIGHTNING_PREFIX): value
        for key, value in state_dict.items()
        if key.startswith(LIGHTNING_PREFIX) and not key.removeprefix(LIGHTNING_PREFIX).startswith(NOT_HEAD_PREFIXES)
    }


def _squeeze_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.squeeze(-1)


def _flatten_flows(tensor: torch.Tensor) -> torch.Tensor:
    """``(1, K, D, 1)`` / ``(1, K, 1, D)`` -> ``(K, D)``; ``(1, K, 1, 1)`` -> ``(K,)``; ``(1, D)`` -> ``(D,)``."""
    return tensor.reshape(tensor.shape[1], -1).squeeze(-1) if tensor.dim() == 4 else tensor.reshape(-1)


REFERENCE_RENAMES: tuple[tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None], ...] = (
    (r"prompt_(context|state_normal|state_abnormal)$", r"prompt_bank.prompt_\1", None),
    (r"temperature_(pixel|image)$", r"temperature_\1", None),
    (r"context_encoder\.weight_mean\.module\.", "prompt_flow.image_specific.encoder.mean.", None),
    (r"context_encoder\.weight_log_variance\.module\.", "prompt_flow.image_specific.encoder.log_variance.", None),
    (r"state_encoder\.weight_mean\.module\.", "prompt_flow.state_encoder.mean.", None),
    (r"state_encoder\.weight_log_variance\.module\.", "prompt_flow.state_encoder.log_variance.", None),
    (r"PFL_context\.amor_([uwb])\.", r"prompt_flow.image_specific.amortised_\1.", None),
    (r"PFL_(normal|abnormal)\.amor_([uwb])$", r"prompt_flow.\1.\2", _flatten_flows),
    (r"PFL_(normal|abnormal)\.state$", r"prompt_flow.\1.state", _flatten_flows),
    (r"fuse\.fuse_modules\.", "image_branch.pooling.fuse.", None),
    (r"fuse\.compress\.", "image_branch.pooling.score.", None),
    (r"fuse\.post_process\.", "image_branch.pooling.project.", None),
    (r"RCA\.q_proj_pre\.weight$", "rca.query.weight", _squeeze_last),
    (r"RCA\.q_proj_pre\.bias$", "rca.query.bias", None),
    (r"RCA\.linear_proj\.", "rca.patch_projections.", None),
    (r"(class|image)_mapping\.", r"image_branch.\1_mapping.", None),
)
"""Reference key pattern (matched at the start) -> our key, and the reshape where the layouts differ."""

REFERENCE_UNUSED = re.compile(r"(context_decoder|state_decoder|PFL_\w+\.(encoder|decoder|p_mu))\.")
"""Reference keys with no counterpart: unused reconstruction decoders and second copies of shared encoders."""

REFERENCE_STAGE = re.compile(r"epoch_post_\d+_([12])\.pth")
"""The reference names its per-epoch files ``epoch_post_{epoch}_{stage}.pth`` (matched whole); released files and any
file named otherwise (``my_run_3.pth``, ``train_visa_1.pth``) are stage 2."""


def reference_stage(path: Path) -> int:
    """The training stage of a reference file, from its name (see :data:`REFERENCE_STAGE`).

    Example:
        >>> reference_stage(Path("epoch_post_7_1.pth")), reference_stage(Path("train_visa_1.pth"))
        (1, 2)
    """
    match = REFERENCE_STAGE.fullmatch(path.name)
    return int(match.group(1)) if match else 2


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference's head keys to ours, reshaping where needed.

    Raises:
        ValueError: If a key matches neither a rename nor the known unused keys.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for pattern, replacement, reshape in REFERENCE_RENAMES:
            match = re.match(pattern, key)
            if match:
                converted[match.expand(replacement) + key[match.end() :]] = reshape(value) if reshape else value
                break
        else:
            if not REFERENCE_UNUSED.match(key):
                unknown.append(key)
    if unknown:
        msg = (
            f"Unknown keys in the reference checkpoint: {_quote_keys(unknown, 8)}. Is this a Bayes-PFL "
            "Context_Prompting file?"
        )
        raise ValueError(msg)
    return converted


def _reference_head(checkpoint: dict, path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Our head from a reference file; evaluation noise and class name come from ``model``, the stage from the name."""
    state_dict = checkpoint.get(REFERENCE_CHECKPOINT_KEY, checkpoint)
    if not isinstance(state_dict, dict) or not all(isinstance(key, str) for key in state_dict):
        msg = (
            f"{path}: '{REFERENCE_CHECKPOINT_KEY}' must be a state dict with string keys, got {_quote(state_dict)}. "
            f"{PROMPT_WEIGHTS_FIX}"
        )
        raise ValueError(msg)
    head = convert_reference_state_dict(state_dict)
    head["prompt_flow.eval_noise"] = model.state_dict()["prompt_flow.eval_noise"]
    head[EXTRA_STATE_KEY] = {"stage": reference_stage(path), "class_name": model.class_name}
    return head


def _read_prompt_weights(path: Path) -> tuple[str, dict]:
    """Read a prompt-weights file; return what it is (``bayes_pfl``, ``head``, ``reference``) and its content.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not prompt weights (see :func:`load_prompt_weights`).
    """
    checkpoint = read_checkpoint(path)
    kind = _content_kind(checkpoint)
    problem = _wrong_file_message(path, kind, checkpoint, for_checkpoint=False)
    if problem:
        raise ValueError(problem)
    if kind == "bayes_pfl" and not all(isinstance(key, str) for key in checkpoint["state_dict"]):
        msg = f"{path}: state_dict keys must be strings. {PROMPT_WEIGHTS_FIX}"
        raise ValueError(msg)
    return kind, checkpoint


def _checked_extra_state(head: dict, path: Path) -> dict | None:
    """The head's validated extra state (``None`` if it has none), with errors naming the file."""
    if EXTRA_STATE_KEY not in head:
        return None
    try:
        return validate_extra_state(head[EXTRA_STATE_KEY])
    except ValueError as error:
        msg = f"{path}: {error} Use the file BayesPFL saved (save_prompt_weights or a training checkpoint)."
        raise ValueError(msg) from None


def check_prompt_weights_settings(path: str | Path, arguments: Mapping[str, object]) -> None:
    """Refuse prompt weights trained with other settings than ``arguments``, before a model is built.

    Only settings known without building CLIP are compared (see :func:`~.head_settings.requested_settings`); the
    rest are checked when the weights load. Files without recorded settings (earlier versions, the authors') pass.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not prompt weights, or naming each setting that differs and what to pass.
    """
    path = Path(path)
    kind, checkpoint = _read_prompt_weights(path)
    if kind == "reference":
        return
    state = _checked_extra_state(_head_from_checkpoint(checkpoint), path)
    try:
        check_settings(None if state is None else state.get("settings"), requested_settings(arguments), str(path))
    except ValueError as error:
        # The anomalib CLI (jsonargparse) reports a constructor's error deep inside its "Does not validate against
        # any of the Union subtypes" listing; logged here, the plain message leads the output.
        logger.error("%s", error)  # noqa: TRY400 - the message, not a traceback, is what the user needs
        raise


def load_prompt_weights(model: nn.Module, path: str | Path) -> None:
    """Load trained head weights (ours or the authors' released ones) into ``model``, checking every key first.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not prompt weights (empty, not a PyTorch file, a tensor or list, CLIP weights,
            another anomalib model's checkpoint), its extra state or keys are malformed, its recorded settings
            differ from the model's (each is named, with the arguments to pass), or keys are missing or unexpected,
            or shapes differ (a head trained with other sizes).
    """
    path = Path(path)
    kind, checkpoint = _read_prompt_weights(path)
    if kind == "reference":
        head = _reference_head(checkpoint, path, model)
    else:
        head = _head_from_checkpoint(checkpoint)
    odd = [key for key in head if not isinstance(key, str)]
    if odd:
        msg = f"{path}: keys must be strings, got {_quote_keys(odd)}. {PROMPT_WEIGHTS_FIX}"
        raise ValueError(msg)
    state = _checked_extra_state(head, path)
    if state is not None:
        head[EXTRA_STATE_KEY] = state
    settings = None if state is None else state.get("settings")
    if settings is None and kind != "reference":
        logger.warning(
            "%s was saved by an earlier version without its settings: they could not be checked. Pass the backbone, "
            "image_size, feature_layers, activation, locality and eval_seed it was trained with.",
            path,
        )
    check_settings(settings, model.settings, str(path))
    expected = head_state_dict(model)
    missing = sorted(set(expected) - set(head))
    unexpected = sorted(set(head) - set(expected))
    mismatched = sorted(
        key
        for key in set(expected) & set(head)
        if isinstance(expected[key], torch.Tensor)
        and (not isinstance(head[key], torch.Tensor) or expected[key].shape != head[key].shape)
    )
    if missing or unexpected or mismatched:
        msg = (
            f"{path} does not fit this BayesPFL configuration: missing [{_quote_keys(missing)}], unexpected "
            f"[{_quote_keys(unexpected)}], shape mismatch [{_quote_keys(mismatched)}]. Use the backbone and prompt "
            "sizes (num_prompts, context_length, state_length, num_flows, num_samples, feature_layers) the weights "
            "were trained with."
        )
        raise ValueError(msg)
    check_finite_weights(head, str(path))
    model.load_state_dict(head, strict=False)
