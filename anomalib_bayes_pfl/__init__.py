# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Bayes-PFL (Bayesian Prompt Flow Learning, CVPR 2025) as an anomalib model.

Names are imported on first use, so that the plugin hook (``anomalib_bayes_pfl.plugin``), which runs at interpreter
start, imports neither torch nor anomalib.

Example:
    >>> from anomalib_bayes_pfl import BayesPFL
    >>> model = BayesPFL(backbone="bayes-pfl-tiny", pretrained=None, image_size=64,
    ...                  feature_layers=(2, 4), gaussian_sigma=1.0)
    >>> model.learning_type.value
    'one_class'
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself is not imported: this module runs at interpreter start-up
if TYPE_CHECKING:
    from typing import Any

_EXPORTS = {
    "AuxiliaryTrain": ".data",
    "BadImageError": ".images",
    "BayesPFL": ".lightning_model",
    "BayesPFLModel": ".torch_model",
    "SafePredictFolder": ".data",
    "category_from_path": ".data",
    "generate_synthetic_dataset": ".data.synthetic",
    "load_prompt_weights": ".checkpoints",
    "read_rgb": ".images",
    "save_prompt_weights": ".checkpoints",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 - returns classes and functions
    """Import a public name from its module on first access."""
    if name not in _EXPORTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
