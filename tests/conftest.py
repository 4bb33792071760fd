"""Shared fixtures: a tiny random-weight CLIP configuration and a small generated dataset."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict:
    """Constructor arguments of the tiny model (a fresh copy per use)."""
    from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

    return dict(TINY_MODEL_ARGS)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MVTec-layout dataset of six categories at 64 px."""
    from anomalib_bayes_pfl import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), image_size=64)


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A saved random tiny CLIP, so separately built models share one backbone (as real weights would)."""
    from anomalib_bayes_pfl.demo import save_random_tiny_clip

    return str(save_random_tiny_clip(tmp_path_factory.mktemp("clip") / "bayes-pfl-tiny.pt", seed=0))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread. Learning tests use it: their bars were measured so, and training on random CLIP
    weights is chaotic enough that another summation order (two threads) moves the result by about 0.1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
