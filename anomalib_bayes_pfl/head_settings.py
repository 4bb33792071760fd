# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""The settings that shape a trained head's outputs: recorded with every head and checkpoint, compared on load.

A head (prompt weights) only means what it was trained to mean with the CLIP blocks it tapped, the input size, the
MLP activation, the locality window and the evaluation noise it was trained and calibrated with. Loaded into a model
configured otherwise, it would give other scores without a word (or fail deep inside on a shape). So each head and
checkpoint records :data:`HEAD_SETTINGS` (in the model's extra state, see ``BayesPFLModel.get_extra_state``), and
loading into a model with other values is refused with one message naming every difference and the arguments that
reproduce the head's configuration. The user's settings are never replaced by stored ones.

The scoring settings (``gaussian_sigma``, ``score_alpha``, ``top_k``) act after the head and are the user's to
change at test time: they are not recorded.

Example:
    >>> stored = {"image_size": 64, "feature_layers": [1, 2]}
    >>> settings_mismatches(stored, {"image_size": 518, "feature_layers": [1, 2]})
    ['image_size: head has 64, this model has 518']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .backbone import model_name

HEAD_SETTINGS = (
    "backbone",
    "image_size",
    "feature_layers",
    "activation",
    "locality_window",
    "locality_layers",
    "num_prompts",
    "context_length",
    "state_length",
    "num_flows",
    "num_samples",
    "eval_seed",
)
"""Constructor arguments whose values shape the head's outputs (in the order messages list them)."""

UNRESOLVED = {"activation": "auto", "locality_layers": None}
"""Arguments whose value is only known once CLIP is built (``auto`` follows the weights; ``None``: the last block)."""

MAX_SETTING_TEXT = 256
"""Longest string accepted as a recorded setting (a backbone name)."""

MAX_SETTING_ITEMS = 64
"""Longest list accepted as a recorded setting (tapped or windowed blocks; ViTs have at most a few dozen)."""


def _plain(value: object) -> object:
    """A setting as plain, comparable data: sequences become lists of ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [int(item) for item in value]
    return value


def requested_settings(arguments: Mapping[str, object]) -> dict[str, object]:
    """The recorded settings a model built from ``arguments`` will have, as far as they are known before building.

    Values in :data:`UNRESOLVED` are left out: they are compared once the model exists.

    Example:
        >>> requested_settings({"backbone": "bayes-pfl-tiny", "activation": "auto", "image_size": 64})
        {'backbone': 'bayes-pfl-tiny', 'image_size': 64}
    """
    settings = {}
    for name in HEAD_SETTINGS:
        if name not in arguments or (name in UNRESOLVED and arguments[name] == UNRESOLVED[name]):
            continue
        value = arguments[name]
        settings[name] = model_name(value) if name == "backbone" else _plain(value)
    return settings


def _valid_setting(value: object) -> bool:
    """An int, a short string, None, or a short list of ints (never a bool)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value is None or value.bit_length() <= 64
    if isinstance(value, str):
        return len(value) <= MAX_SETTING_TEXT
    return (
        isinstance(value, list)
        and len(value) <= MAX_SETTING_ITEMS
        and all(isinstance(item, int) and not isinstance(item, bool) and item.bit_length() <= 64 for item in value)
    )


def validate_settings(settings: object, what: str) -> dict[str, object]:
    """Check recorded settings read from a file: a dict of known names with small plain values.

    Raises:
        ValueError: Naming ``what``, the offending setting and what it must be.
    """
    if not isinstance(settings, dict):
        msg = f"{what}: settings must be a dict, got a {type(settings).__name__[:40]}."
        raise ValueError(msg)
    unknown = [name for name in settings if name not in HEAD_SETTINGS]
    if unknown:
        shown = ", ".join(repr(name)[:60] if isinstance(name, str) else "a non-string key" for name in unknown[:5])
        msg = f"{what}: unknown settings {shown} (known: {', '.join(HEAD_SETTINGS)})."
        raise ValueError(msg)
    bad = [name for name, value in settings.items() if not _valid_setting(value)]
    if bad:
        msg = (
            f"{what}: settings {', '.join(map(repr, bad))} must be integers, None, strings of at most "
            f"{MAX_SETTING_TEXT} characters or lists of at most {MAX_SETTING_ITEMS} integers."
        )
        raise ValueError(msg)
    return dict(settings)


def _differing(stored: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """Names of the settings recorded in both that differ, in :data:`HEAD_SETTINGS` order."""
    return [name for name in HEAD_SETTINGS if name in stored and name in current and stored[name] != current[name]]


def settings_mismatches(stored: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """Settings recorded in both that differ, each as ``"name: head has X, this model has Y"``."""
    return [
        f"{name}: head has {stored[name]!r}, this model has {current[name]!r}" for name in _differing(stored, current)
    ]


def _cli_value(value: object) -> str:
    """A value as the anomalib CLI takes it: ``null``, ``"[1, 2]"``, ``64``, ``gelu``."""
    if value is None:
        return "null"
    return f'"{value}"' if isinstance(value, list) else str(value)


def settings_fix(stored: Mapping[str, object], names: Sequence[str]) -> str:
    """The CLI and Python arguments that give a model the head's values of ``names``."""
    cli = " ".join(f"--model.{name} {_cli_value(stored[name])}" for name in names)
    python = ", ".join(f"{name}={stored[name]!r}" for name in names)
    return f"Pass the head's settings: {cli} (Python: BayesPFL({python}))."


def check_settings(stored: Mapping[str, object] | None, current: Mapping[str, object], source: str) -> None:
    """Refuse a head whose recorded settings differ from the model's; ``None`` (an older head) is not checked.

    Args:
        stored (Mapping[str, object] | None): The head's recorded settings (validated).
        current (Mapping[str, object]): The model's settings (:func:`requested_settings` before it is built).
        source (str): What holds the head, for the message (a file name, "This checkpoint").

    Raises:
        ValueError: Listing every differing setting as "name: head has X, this model has Y", then the exact
            arguments to pass.
    """
    if stored is None:
        return
    mismatches = settings_mismatches(stored, current)
    if mismatches:
        msg = (
            f"{source} was trained with other settings than this BayesPFL model ({'; '.join(mismatches)}). "
            f"{settings_fix(stored, _differing(stored, current))}"
        )
        raise ValueError(msg)
