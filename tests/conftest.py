"""Shared fixtures: a tiny random-weight CLIP configuration and a small generated dataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)

TINY = {
    "backbone": "bayes-pfl-tiny",
    "pretrained": None,
    "image_size": 64,
    "feature_layers": (1, 2, 3, 4),
    "num_samples": 3,
    "gaussian_sigma": 1.0,
    "top_k": 20,
}
"""Keyword arguments of a tiny Bayes-PFL: 4-block ViT, 8 x 8 patch grid, random weights, 3 samples."""

SOURCE_CATEGORIES = ["disc", "square", "stripes", "checker"]
TARGET_CATEGORIES = ["ring", "grain"]


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict:
    """Constructor arguments of the tiny model (a fresh copy per use)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MVTec-layout dataset of six categories at 64 px."""
    from anomalib_bayes_pfl import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), image_size=64)


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved random tiny CLIP, so separately built models share one backbone (as real weights would)."""
    import torch

    from anomalib_bayes_pfl.backbone import ClipBackbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "bayes-pfl-tiny.pt"
    torch.save(ClipBackbone("bayes-pfl-tiny", None, 64, (1,)).clip.state_dict(), path)
    return str(path)
