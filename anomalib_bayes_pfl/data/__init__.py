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
"""

from .auxiliary import SUPPORTED_FORMATS, AuxiliaryTrain, category_from_path
from .predict import SafePredictDataset, SafePredictFolder, SkippedImage, scan_images
from .synthetic import AVAILABLE_CATEGORIES, DEFAULT_CATEGORIES, defect_types, generate_synthetic_dataset

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
