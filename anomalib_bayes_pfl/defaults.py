# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""The paper's settings, declared once.

Every constructor that takes one of these (:class:`~anomalib_bayes_pfl.BayesPFL`, the torch model, the backbone,
the anomaly-map generator, the loss) defaults to the constant here, so a default cannot drift between the layer a
user sets and the layer that consumes it.

Paper:
    Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, Sec. 4.1; reference
    code https://github.com/xiaozhen228/Bayes-PFL (MIT), ``train.py`` and ``test.py``.
"""

from __future__ import annotations

BACKBONE = "ViT-L-14-336"
"""CLIP ViT-L/14 at 336 px, the paper's backbone."""

PRETRAINED = "openai"
"""OpenAI's CLIP weights, as in the paper."""

IMAGE_SIZE = 518
"""Input side of the paper (37 x 37 patches of ViT-L/14)."""

FEATURE_LAYERS = (6, 12, 18, 24)
"""1-indexed ViT-L blocks whose patch tokens feed the pixel branch."""

NUM_PROMPTS = 3
"""Prompt pairs in the bank (B)."""

CONTEXT_LENGTH = 5
"""Learned context vectors per prompt (P)."""

STATE_LENGTH = 5
"""Learned state vectors per prompt (Q)."""

NUM_FLOWS = 10
"""Planar flows per distribution (K)."""

NUM_SAMPLES = 10
"""Prompt samples per image at test time (R)."""

GAUSSIAN_SIGMA = 8.0
"""Smoothing of the anomaly map in pixels (the reference's ``gaussian_filter`` sigma)."""

SCORE_ALPHA = 0.5
"""Weight of the image branch in the image score (the reference's 0.5 / 0.5 fusion)."""

TOP_K = 2000
"""Map pixels averaged into the map's share of the image score."""

FOCAL_GAMMA = 2.0
"""Focusing exponent of the focal loss."""

KL_WEIGHT = 0.01
"""Weight of each KL term of the prompt distributions."""

ORTHOGONAL_WEIGHT = 1.0
"""Weight of the prompt orthogonality loss."""

LR = 1e-4
"""Learning rate of the encoders, RCA and mappings."""

LR_PROMPT = 1e-3
"""Learning rate of the prompt bank."""

LR_FLOW = 1e-3
"""Learning rate of the flow parameters."""

LR_TEMPERATURE = 1e-2
"""Learning rate of the two log temperatures."""

BETAS = (0.5, 0.999)
"""Adam betas of both stages."""

WARMUP_RATIO = 0.1
"""Share of the stage-1 steps spent warming up before the cosine decay."""

STAGE_PATIENCE = 4
"""Validation epochs without a better source pixel AP after which stage 1 ends."""
