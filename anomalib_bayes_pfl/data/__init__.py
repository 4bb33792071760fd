# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Data for Bayes-PFL: the cross-dataset training datamodule and an offline synthetic dataset.

* :class:`AuxiliaryTrain` trains on the anomalous *test* split of source categories (Bayes-PFL learns
  from masks), validates on held-out source images and tests on target categories.
* :func:`generate_synthetic_dataset` writes a small MVTec AD style dataset so that demos and tests run
  without downloads; anomalib's stock ``MVTecAD`` datamodule reads it as is.
* :func:`category_from_path` recovers an image's category from its path, which mixed-category batches
  need to pick the right text prompt.
* :class:`SafePredictFolder` predicts a folder of production images, reporting and skipping bad files.

The generator (``synthetic.py``) is for demos and tests: its names are imported on first access, so the
datamodules' import path does not load it.
"""

import importlib
from typing import Any

from .auxiliary import SUPPORTED_FORMATS, AuxiliaryTrain, category_from_path
from .predict import SafePredictDataset, SafePredictFolder, SkippedImage, scan_images

_SYNTHETIC = ("AVAILABLE_CATEGORIES", "DEFAULT_CATEGORIES", "defect_types", "generate_synthetic_dataset")
"""Names of the demo data generator, imported on first use: training and prediction never load it."""

__all__ = [
    "AVAILABLE_CATEGORIES",
    "DEFAULT_CATEGORIES",
    "SUPPORTED_FORMATS",
    "AuxiliaryTrain",
    "SafePredictDataset",
    "SafePredictFolder",
    "SkippedImage",
    "category_from_path",
    "defect_types",
    "generate_synthetic_dataset",
    "scan_images",
]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - returns functions and constants
    """Import the demo data generator's names on first access."""
    if name not in _SYNTHETIC:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(".synthetic", __name__), name)
    globals()[name] = value
    return value
