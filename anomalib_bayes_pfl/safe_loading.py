# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Reading untrusted checkpoint and head files safely, and checking what they hold before anything uses it.

Files are read with ``torch.load(weights_only=True)`` (with anomalib's own allowlist of enums, as anomalib reads
checkpoints): a crafted pickle cannot run code.

Plain data can still be hostile: a list shared with itself 25 times is a few bytes in a pickle but 2**25 elements
once turned into text. So everything a file supplies besides tensors (the head's stage and class name, the
stage switch's memory, the hyper-parameters of a checkpoint) is checked for type and size before it is used, and
error messages quote values through :func:`_quote`, which never renders a whole structure.

Files that are not what the argument expects (an empty or text file, a tensor, a list, CLIP weights, a head passed
as a checkpoint, a checkpoint of another anomalib model such as PatchCore) are named as such, with what to pass.
:func:`check_checkpoint_file` does this for Lightning checkpoints (``--ckpt_path``, ``load_from_checkpoint``) and
:func:`guard_checkpoint_loading` makes Lightning's own restore run it first.

The keys that tell files apart (:data:`LIGHTNING_PREFIX`, :data:`HEAD_MARKER`, :data:`EXTRA_STATE_KEY`,
:data:`REFERENCE_CHECKPOINT_KEY`) are declared here; :mod:`.checkpoints`, which loads heads, imports them from this
module and this module never imports it.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from anomalib.utils.serialization import anomalib_safe_globals
from torch import nn

from .head_settings import validate_settings

LIGHTNING_PREFIX = "model."
"""State-dict prefix of :class:`BayesPFLModel` inside a Lightning checkpoint of :class:`BayesPFL`."""

EXTRA_STATE_KEY = "_extra_state"
"""State-dict key under which :class:`BayesPFLModel` stores its stage and class name."""

HEAD_MARKER = "prompt_bank."
"""Every head (and, behind :data:`LIGHTNING_PREFIX`, every checkpoint) of BayesPFL has prompt-bank weights."""

REFERENCE_CHECKPOINT_KEY = "MyModel"
"""The reference's checkpoints are ``{"MyModel": state_dict}``."""

CLIP_MARKERS = frozenset({"visual.conv1.weight", "token_embedding.weight"})
"""Keys that mark CLIP weights (open_clip or OpenAI layout)."""

STAGE_SWITCH_ENTRY = "bayes_pfl_stage_tracker"
"""Checkpoint entry of the stage switch's memory (named in messages; ``lightning_model.STAGE_SWITCH_KEY``)."""

STAGES = (1, 2)
"""Training stages of Bayes-PFL."""

MAX_CLASS_NAME_LENGTH = 256
"""Longest class name accepted from a file. CLIP's text context has 77 tokens, of which about 64 remain for the
name next to the learned prompt tokens; at the usual 3-4 characters per token no longer name fits (the longest
MVTec AD / VisA name, "printed circuit board", has 21). The bound keeps tokenising and quoting a crafted name
cheap; a longer name is refused before the tokenizer sees it."""

MAX_TEXT_LENGTH = 4096
"""Longest string accepted in a checkpoint's hyper-parameters (paths included)."""

MAX_PLAIN_ITEMS = 10_000
"""Most values (containers and scalars) a checkpoint's hyper-parameters may hold; far above BayesPFL's ~40."""

QUOTE_LIMIT = 200
"""Longest rendering of one value in an error message."""

PROMPT_WEIGHTS_FIX = (
    "Pass a BayesPFL checkpoint (.ckpt), a head file written by save_prompt_weights (.pt) or the authors' released "
    "head (train_visa.pth, train_mvtec.pth) as prompt_weights."
)
CHECKPOINT_FIX = (
    "Pass a checkpoint written by BayesPFL training (<run folder>/weights/lightning/model.ckpt or last.ckpt) as "
    "--ckpt_path."
)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A file refers to code (a pickled global that is not weights); it was refused without running anything."""


# -- bounded quoting ----------------------------------------------------------------------------------------------


def _type_phrase(value: object) -> str:
    """``"a tensor"``, ``"a list"``, ... : what a value is, in constant time."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    name = type(value).__name__[:40]
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A short rendering of ``value`` for an error message, at most ``limit`` characters.

    The type is checked first and nothing is rendered whole that could be large: strings are cut, containers are
    described by type and length (never ``str()``/``repr()``, which for a memoised nested list is exponential),
    huge integers by their size, tensors by shape and dtype.

    Example:
        >>> _quote("bottle"), _quote([[1], [2]]), _quote(10**100)
        ("'bottle'", 'a list of 2 items', 'an integer of 333 bits')
    """
    if isinstance(value, str):
        text = repr(str(value[:limit]))
        if len(value) > limit:
            text = f"{repr(str(value[: limit // 2]))}... ({len(value)} characters)"
    elif value is None or isinstance(value, (bool, float)):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(int(value)) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    elif isinstance(value, torch.Tensor):
        text = f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    elif isinstance(value, (bytes, bytearray)):
        text = f"{len(value)} bytes"
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        text = f"{_type_phrase(value)} of {len(value)} items"
    else:
        text = _type_phrase(value)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _quote_keys(keys: list, count: int = 5) -> str:
    """The first ``count`` keys, each quoted briefly."""
    shown = ", ".join(_quote(key, 80) for key in keys[:count])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > count else shown


def _cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: Exception) -> str:
    """The first line of an error's message (bounded), else its type."""
    text = str(error)[:10_000].strip()
    return _cut(text.splitlines()[0]) if text else type(error).__name__


def _check_keys(mapping: dict, expected: tuple[str, ...], what: str) -> None:
    """``mapping`` must have exactly the string keys ``expected``."""
    odd = [key for key in mapping if not isinstance(key, str)]
    if odd:
        msg = f"{what}: keys must be strings, got {_quote_keys(odd)}."
        raise ValueError(msg)
    missing = [key for key in expected if key not in mapping]
    unexpected = [key for key in mapping if key not in expected]
    if missing or unexpected:
        parts = ([f"missing {_quote_keys(missing)}"] if missing else []) + (
            [f"unexpected {_quote_keys(unexpected)}"] if unexpected else []
        )
        msg = f"{what}: {'; '.join(parts)} (expected exactly {', '.join(map(repr, expected))})."
        raise ValueError(msg)


# -- validation of plain data read from files ---------------------------------------------------------------------

EXTRA_STATE_WHAT = "Invalid extra state (training stage, class name and settings) of the BayesPFL head"


def validate_extra_state(state: object) -> dict[str, Any]:
    """Check the head's extra state ``{"stage": 1 | 2, "class_name": str, "settings": dict}`` before anything uses it.

    ``settings`` (the head's recorded configuration, see :mod:`.head_settings`) is absent from heads and checkpoints
    written before it was recorded; they stay readable.

    Args:
        state (object): What a file holds under ``_extra_state`` (see ``BayesPFLModel.get_extra_state``).

    Returns:
        dict[str, Any]: ``{"stage": int, "class_name": str}`` plus ``"settings"`` when recorded, plain Python values.

    Raises:
        ValueError: If ``state`` is not such a dict, the stage is not the integer 1 or 2, the class name is not a
            string of at most :data:`MAX_CLASS_NAME_LENGTH` characters, or the settings are not small plain values
            of known names. The message quotes values briefly.

    Example:
        >>> validate_extra_state({"stage": 2, "class_name": "bottle"})
        {'stage': 2, 'class_name': 'bottle'}
    """
    if not isinstance(state, dict):
        msg = f"{EXTRA_STATE_WHAT}: it must be a dict with 'stage' and 'class_name', got {_quote(state)}."
        raise ValueError(msg)
    _check_keys(state, ("stage", "class_name", *(("settings",) if "settings" in state else ())), EXTRA_STATE_WHAT)
    stage, class_name = state["stage"], state["class_name"]
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in STAGES:
        msg = f"{EXTRA_STATE_WHAT}: stage must be 1 or 2 (an int), got {_quote(stage)}."
        raise ValueError(msg)
    if not isinstance(class_name, str):
        msg = (
            f"{EXTRA_STATE_WHAT}: class_name must be a string (at most {MAX_CLASS_NAME_LENGTH} characters), "
            f"got {_quote(class_name)}."
        )
        raise ValueError(msg)
    if len(class_name) > MAX_CLASS_NAME_LENGTH:
        msg = (
            f"{EXTRA_STATE_WHAT}: class_name must be a string of at most {MAX_CLASS_NAME_LENGTH} characters, "
            f"got one of {len(class_name)}: {_quote(class_name, 60)}."
        )
        raise ValueError(msg)
    checked = {"stage": int(stage), "class_name": str(class_name)}
    if "settings" in state:
        checked["settings"] = validate_settings(state["settings"], EXTRA_STATE_WHAT)
    return checked


STAGE_SWITCH_WHAT = f"Invalid '{STAGE_SWITCH_ENTRY}' entry (the stage switch's memory) of the checkpoint"


def validate_stage_switch_state(state: object) -> dict[str, Any]:
    """Check the checkpoint's stage-switch entry ``{"best": float | None, "stale": int, "best_head": dict | None}``.

    ``best_head`` is a head state dict: string keys, tensor values, and the head's extra state (checked by
    :func:`validate_extra_state`) under ``_extra_state``.

    Args:
        state (object): ``checkpoint["bayes_pfl_stage_tracker"]`` as read from the file.

    Returns:
        dict[str, Any]: The same entry with plain Python values (``best`` as ``float``), ready for
        ``StageSwitch.load_state_dict``.

    Raises:
        ValueError: If a key is missing or unknown, or a value has the wrong type or range.

    Example:
        >>> validate_stage_switch_state({"best": 0.5, "stale": 1, "best_head": None})
        {'best': 0.5, 'stale': 1, 'best_head': None}
    """
    if not isinstance(state, dict):
        msg = f"{STAGE_SWITCH_WHAT}: it must be a dict, got {_quote(state)}."
        raise ValueError(msg)
    _check_keys(state, ("best", "stale", "best_head"), STAGE_SWITCH_WHAT)
    best, stale, best_head = state["best"], state["stale"], state["best_head"]
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        msg = f"{STAGE_SWITCH_WHAT}: best must be a number or None, got {_quote(best)}."
        raise ValueError(msg)
    if isinstance(stale, bool) or not isinstance(stale, int) or stale < 0:
        msg = f"{STAGE_SWITCH_WHAT}: stale must be an integer >= 0, got {_quote(stale)}."
        raise ValueError(msg)
    if best_head is not None:
        best_head = _validate_head_entries(best_head, f"{STAGE_SWITCH_WHAT}: best_head")
    return {"best": None if best is None else float(best), "stale": int(stale), "best_head": best_head}


def _validate_head_entries(head: object, what: str) -> dict[str, Any]:
    """A head state dict: string keys, tensors, and a valid extra state; returns a checked copy."""
    if not isinstance(head, dict):
        msg = f"{what} must be a dict of tensors, got {_quote(head)}."
        raise ValueError(msg)
    odd = [key for key in head if not isinstance(key, str)]
    if odd:
        msg = f"{what}: keys must be strings, got {_quote_keys(odd)}."
        raise ValueError(msg)
    checked = {}
    for key, value in head.items():
        if key == EXTRA_STATE_KEY:
            try:
                checked[key] = validate_extra_state(value)
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from None
        elif isinstance(value, torch.Tensor):
            checked[key] = value
        else:
            msg = f"{what}[{_quote(key, 80)}] must be a tensor, got {_quote(value)}."
            raise ValueError(msg)
    return checked


def _is_plain_scalar(value: object) -> bool:
    """None, a bool, a float, an int of at most 64 bits or a string of at most :data:`MAX_TEXT_LENGTH`."""
    if value is None or isinstance(value, (bool, float)):
        return True
    if isinstance(value, int):
        return value.bit_length() <= 64
    return isinstance(value, str) and len(value) <= MAX_TEXT_LENGTH


def _check_plain_data(value: object, what: str) -> None:
    """Nested lists/tuples/dicts of plain scalars, at most :data:`MAX_PLAIN_ITEMS` values in all.

    The walk counts every visit, so a structure that shares itself (small in a pickle, exponential when walked)
    is refused once the budget is spent, after at most that many steps.
    """
    pending, visited = [value], 0
    while pending:
        item = pending.pop()
        visited += 1
        if visited > MAX_PLAIN_ITEMS:
            msg = f"{what} holds more than {MAX_PLAIN_ITEMS} values (or one structure shared with itself)."
            raise ValueError(msg)
        if isinstance(item, dict):
            if not all(isinstance(key, str) and len(key) <= MAX_TEXT_LENGTH for key in item):
                msg = f"{what}: keys must be strings of at most {MAX_TEXT_LENGTH} characters."
                raise ValueError(msg)
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif not _is_plain_scalar(item):
            msg = (
                f"{what} may hold only numbers, strings (at most {MAX_TEXT_LENGTH} characters), None and lists or "
                f"dicts of those, got {_quote(item)}."
            )
            raise ValueError(msg)


def _check_hyper_parameters(hyper: object) -> None:
    """A BayesPFL checkpoint's hyper-parameters: a dict of plain data; ``class_name`` None or a short string."""
    if not isinstance(hyper, dict):
        msg = f"hyper_parameters must be a dict, got {_quote(hyper)}."
        raise ValueError(msg)
    _check_plain_data(hyper, "hyper_parameters")
    class_name = hyper.get("class_name")
    if class_name is not None and (not isinstance(class_name, str) or len(class_name) > MAX_CLASS_NAME_LENGTH):
        msg = (
            f"hyper_parameters['class_name'] must be None or a string of at most {MAX_CLASS_NAME_LENGTH} "
            f"characters, got {_quote(class_name)}."
        )
        raise ValueError(msg)


# -- reading files ------------------------------------------------------------------------------------------------

UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
"""How ``torch.load(weights_only=True)`` names the code object a pickle wanted to call."""


def _file_format(path: Path) -> str:
    """The format of a file, from its first byte and zip directory.

    Returns:
        str: ``"empty"``, ``"torch"`` (torch's zip format), ``"torchscript"``, ``"zip"`` (another zip),
        ``"legacy"`` (torch's pre-1.6 pickle format) or ``"other"``.
    """
    if path.stat().st_size == 0:
        return "empty"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "other"
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            return "torchscript"
        return "torch" if any(name.endswith("data.pkl") for name in names) else "zip"
    with path.open("rb") as file:
        start = file.read(1)
    return "legacy" if start == b"\x80" else "other"


def _load_safely(path: Path, what: str, fix: str) -> object:
    """``torch.load(weights_only=True)`` with anomalib's allowlist, memory-mapped; errors name the file and the fix.

    Raises:
        FileNotFoundError: If there is no such file.
        UnsafeCheckpointError: If the pickle refers to code; nothing was run.
        ValueError: If the file is empty, not a PyTorch file, or unreadable.
    """
    if not path.is_file():
        msg = f"{what} {path} not found (or not a file). {fix}"
        raise FileNotFoundError(msg)
    file_format = _file_format(path)
    if file_format == "empty":
        msg = f"{path} is empty (0 bytes): the file was not written completely (an interrupted save or copy?). {fix}"
        raise ValueError(msg)
    if file_format == "torchscript":
        msg = (
            f"{path} is a TorchScript archive (a scripted model), not a checkpoint or head file; if it holds CLIP, "
            f"pass it as pretrained (--model.pretrained {path}). {fix}"
        )
        raise ValueError(msg)
    if file_format in {"zip", "other"}:
        kind = "a zip file without PyTorch data" if file_format == "zip" else "neither a zip nor a pickle file"
        msg = f"{path} is not a PyTorch checkpoint ({kind}). {fix}"
        raise ValueError(msg)
    try:
        with anomalib_safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=file_format == "torch")
    except Exception as error:  # noqa: BLE001 - every unpickling failure is reported the same way, with the file
        unsafe = UNSAFE_GLOBAL.search(str(error)[:10_000])
        if unsafe:
            msg = (
                f"Could not read {path} as safe weights (it refers to {_cut(unsafe.group(1), 120)}, "
                f"which is not weights; refused without running it). Only tensors and plain data are loaded. {fix}"
            )
            raise UnsafeCheckpointError(msg) from None
        msg = f"Could not read {path} as safe weights ({_first_line(error)}). {fix}"
        raise ValueError(msg) from None


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint or head file safely (``weights_only``), with errors that name the file and the fix.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is empty, not a PyTorch file, refers to code, or does not hold a dict.
    """
    path = Path(path)
    content = _load_safely(path, "Prompt weights", PROMPT_WEIGHTS_FIX)
    if not isinstance(content, dict):
        msg = f"{path} holds {_type_phrase(content)}, not a dict of weights. {PROMPT_WEIGHTS_FIX}"
        raise ValueError(msg)
    return content


def _state_dict_keys(content: dict) -> list[str]:
    """String keys of a checkpoint's ``state_dict`` (``module.`` prefixes removed), else of the dict itself."""
    state_dict = content.get("state_dict", content)
    if not isinstance(state_dict, dict):
        return []
    return [key.removeprefix("module.") for key in state_dict if isinstance(key, str)]


def is_reference_checkpoint(checkpoint: dict) -> bool:
    """Whether ``checkpoint`` is one of the reference implementation's files."""
    return REFERENCE_CHECKPOINT_KEY in checkpoint or "prompt_context" in checkpoint


def _content_kind(content: object) -> str:
    """What a loaded file is.

    Returns:
        str: ``"bayes_pfl"`` (our Lightning checkpoint), ``"head"``, ``"reference"`` (the authors' head), ``"clip"``
        (CLIP weights), ``"other_lightning"`` (another model's checkpoint), ``"not_dict"`` or ``"unknown"``.
    """
    if not isinstance(content, dict):
        return "not_dict"
    keys = _state_dict_keys(content)
    if any(key in CLIP_MARKERS for key in keys):
        return "clip"
    if "state_dict" in content:
        lightning_marker = LIGHTNING_PREFIX + HEAD_MARKER
        return "bayes_pfl" if any(key.startswith(lightning_marker) for key in keys) else "other_lightning"
    if is_reference_checkpoint(content):
        return "reference"
    return "head" if any(key.startswith(HEAD_MARKER) for key in keys) else "unknown"


COMPONENT_ARGUMENTS = frozenset({"self", "pre_processor", "post_processor", "evaluator", "visualizer"})
"""Constructor arguments of anomalib models that are not saved as hyper-parameters."""


def _anomalib_model_name(content: dict) -> str | None:
    """The anomalib model whose constructor arguments are exactly the checkpoint's hyper-parameters, if one is."""
    hyper = content.get("hyper_parameters")
    if not isinstance(hyper, dict) or not hyper:
        return None
    keys = {key for key in hyper if isinstance(key, str)}
    import anomalib.models  # noqa: PLC0415 - only when naming a foreign checkpoint
    from anomalib.models.components import AnomalibModule  # noqa: PLC0415

    names = []
    for name in getattr(anomalib.models, "__all__", ()):
        model = getattr(anomalib.models, name, None)
        if not (isinstance(model, type) and issubclass(model, AnomalibModule)) or model.__module__.startswith(
            __package__ or "anomalib_bayes_pfl"
        ):
            continue
        try:
            parameters = inspect.signature(model.__init__).parameters
        except (TypeError, ValueError):
            continue
        arguments = {
            key
            for key, parameter in parameters.items()
            if parameter.kind not in {parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD}
        }
        if arguments - COMPONENT_ARGUMENTS == keys and model.__name__ not in names:
            names.append(model.__name__)
    return " or ".join(names) or None


def _wrong_file_message(path: Path, kind: str, content: object, for_checkpoint: bool) -> str | None:
    """Why ``content`` cannot serve as a Lightning checkpoint (``for_checkpoint``) or as prompt weights.

    Returns:
        str | None: The message, naming the file, what it is and what to pass; ``None`` when the file can serve.
    """
    fix = CHECKPOINT_FIX if for_checkpoint else PROMPT_WEIGHTS_FIX
    if kind == "not_dict":
        expected = "a Lightning checkpoint" if for_checkpoint else "a dict of weights"
        return f"{path} holds {_type_phrase(content)}, not {expected}. {fix}"
    if kind == "clip":
        return (
            f"{path} holds CLIP weights, not a BayesPFL {'checkpoint' if for_checkpoint else 'head'}: pass it as "
            f"pretrained (--model.pretrained {path}, BayesPFL(pretrained=...)). {fix}"
        )
    if kind == "other_lightning":
        name = _anomalib_model_name(content)
        if name:
            return f"{path} is a checkpoint of another anomalib model ({name}), not BayesPFL. {fix}"
        return (
            f"{path} is a Lightning checkpoint of another model, not BayesPFL (its state_dict has no "
            f"'{LIGHTNING_PREFIX}{HEAD_MARKER}' weights). {fix}"
        )
    if not for_checkpoint:
        return None
    if kind in {"head", "reference"}:
        return (
            f"{path} holds BayesPFL prompt weights (a trained head), not a Lightning checkpoint: pass it as "
            f"--model.prompt_weights {path} (BayesPFL(prompt_weights=...)) instead of --ckpt_path."
        )
    if kind == "unknown":
        keys = [key for key in content if isinstance(key, str)] if isinstance(content, dict) else []
        return f"{path} is not a Lightning checkpoint (no 'state_dict'; keys: {_quote_keys(keys, 3)}). {fix}"
    return None


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Check that ``path`` is a readable BayesPFL Lightning checkpoint before Lightning restores it.

    The file must exist, be non-empty, be in torch's zip format, load with ``weights_only=True`` (anomalib's
    allowlist), hold a dict with a ``state_dict`` of BayesPFL weights (``model.prompt_bank.*``), and its plain data
    (extra state, hyper-parameters, stage-switch memory) must have the expected types and sizes. Tensors are
    memory-mapped, so the check reads little of a large file. Remote paths (``s3://...``) and file objects are left
    to Lightning.

    Args:
        path (str | os.PathLike): What was given as ``--ckpt_path`` or to ``BayesPFL.load_from_checkpoint``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a BayesPFL checkpoint; the message names the file, what it is instead
            (empty, text, a tensor, a head, CLIP weights, another anomalib model's checkpoint...) and what to pass.
    """
    if not isinstance(path, (str, os.PathLike)) or "://" in str(path):
        return
    path = Path(path).expanduser()
    if path.is_file() and _file_format(path) == "legacy":
        msg = f"{path} is not a Lightning checkpoint (an old pickle-format file, not torch's zip). {CHECKPOINT_FIX}"
        raise ValueError(msg)
    content = _load_safely(path, "Checkpoint", CHECKPOINT_FIX)
    kind = _content_kind(content)
    problem = _wrong_file_message(path, kind, content, for_checkpoint=True)
    if problem:
        raise ValueError(problem)
    try:
        _check_own_checkpoint(content)
    except ValueError as error:
        msg = f"{path} is not a usable BayesPFL checkpoint: {error} Use a checkpoint written by BayesPFL."
        raise ValueError(msg) from None


def _check_own_checkpoint(content: dict) -> None:
    """The plain data of a BayesPFL checkpoint: string keys, a valid extra state, hyper-parameters, stage memory."""
    state_dict = content["state_dict"]
    odd = [key for key in state_dict if not isinstance(key, str)]
    if odd:
        msg = f"state_dict keys must be strings, got {_quote_keys(odd)}."
        raise ValueError(msg)
    extra_key = LIGHTNING_PREFIX + EXTRA_STATE_KEY
    if extra_key in state_dict:
        validate_extra_state(state_dict[extra_key])
    if "hyper_parameters" in content:
        _check_hyper_parameters(content["hyper_parameters"])
    if STAGE_SWITCH_ENTRY in content:
        validate_stage_switch_state(content[STAGE_SWITCH_ENTRY])


class _CheckedLoad:
    """``CheckpointIO.load_checkpoint`` that first runs :func:`check_checkpoint_file`.

    The check runs only while ``module`` is the trainer's model: the same IO object may later restore a checkpoint
    of another model.
    """

    def __init__(self, load: Callable[..., Any], module: nn.Module) -> None:
        self.load = load
        self.module = weakref.ref(module)

    def __call__(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        module = self.module() if self.module is not None else None
        trainer = getattr(module, "_trainer", None)
        if trainer is not None and trainer.lightning_module is module:
            check_checkpoint_file(path)
        return self.load(path, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (spawned DDP workers): the weak reference is dropped, so a copy checks nothing."""
        return {"load": self.load, "module": None}


def guard_checkpoint_loading(module: nn.Module) -> None:
    """Make the trainer's checkpoint loading run :func:`check_checkpoint_file` first (``--ckpt_path``).

    Lightning calls ``setup`` before it reads the ``ckpt_path`` file, but ``trainer.ckpt_path`` is only set once
    the file was read, so a hook cannot check the path itself. Called from ``setup``, this wraps the strategy's
    ``CheckpointIO.load_checkpoint`` (anomalib's ``AnomalibCheckpointIO`` or Lightning's) so the path is checked
    when Lightning loads it; the IO object keeps its type. Calling it again only re-targets the check.

    Args:
        module (nn.Module): The LightningModule (BayesPFL) whose checkpoints are expected; without a trainer
            nothing happens.
    """
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return
    checkpoint_io = trainer.strategy.checkpoint_io
    load = checkpoint_io.load_checkpoint
    if isinstance(load, _CheckedLoad):
        load.module = weakref.ref(module)
        return
    checkpoint_io.load_checkpoint = _CheckedLoad(load, module)
