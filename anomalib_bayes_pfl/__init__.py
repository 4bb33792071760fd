# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Bayes-PFL (Bayesian Prompt Flow Learning, CVPR 2025) as an anomalib model.

Example:
    >>> from anomalib_bayes_pfl import BayesPFL
    >>> model = BayesPFL(backbone="bayes-pfl-tiny", pretrained=None, image_size=64,
    ...                  feature_layers=(2, 4), gaussian_sigma=1.0)
    >>> model.learning_type.value
    'one_class'
"""

from .checkpoints import load_prompt_weights, save_prompt_weights
from .data import AuxiliaryTrain, category_from_path, generate_synthetic_dataset
from .lightning_model import BayesPFL
from .torch_model import BayesPFLModel

__all__ = [
    "AuxiliaryTrain",
    "BayesPFL",
    "BayesPFLModel",
    "category_from_path",
    "generate_synthetic_dataset",
    "load_prompt_weights",
    "save_prompt_weights",
]
