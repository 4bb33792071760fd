# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Shared fixtures for the data tests: one tiny synthetic dataset per session, in two layouts.

The session datasets are shared between tests, so tests must not write into them; tests that change
files generate their own copy under ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anomalib_bayes_pfl.data import AuxiliaryTrain, generate_synthetic_dataset


@dataclass(frozen=True)
class SyntheticSetup:
    """What the shared synthetic dataset contains, so tests need not repeat the numbers."""

    root: Path
    source: tuple[str, ...] = ("disc", "stripes")  # one object, one texture
    target: tuple[str, ...] = ("ring", "grain")
    # Small, but with enough test images per label that a held-out image of each label remains.
    counts: dict[str, int] = field(
        default_factory=lambda: {"image_size": 32, "num_train": 2, "num_test_normal": 4, "num_test_anomalous": 6},
    )

    @property
    def categories(self) -> tuple[str, ...]:
        return self.source + self.target


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSetup:
    """MVTec AD layout with two source and two target categories (32 px)."""
    setup = SyntheticSetup(root=tmp_path_factory.mktemp("mvtec"))
    generate_synthetic_dataset(setup.root, categories=setup.categories, **setup.counts)
    return setup


@pytest.fixture(scope="session")
def visa_root(tmp_path_factory: pytest.TempPathFactory, synthetic: SyntheticSetup) -> Path:
    """Root in the converted VisA layout (``<root>/visa_pytorch/<category>``) that anomalib's ``Visa`` reads."""
    root = tmp_path_factory.mktemp("visa")
    generate_synthetic_dataset(root / "visa_pytorch", categories=synthetic.source, **synthetic.counts)
    return root


@pytest.fixture
def make_datamodule(synthetic: SyntheticSetup) -> Callable[..., AuxiliaryTrain]:
    """Build an :class:`AuxiliaryTrain` on the shared data; keyword arguments override the defaults."""

    def _make(**overrides: object) -> AuxiliaryTrain:
        arguments: dict[str, object] = {
            "source_root": synthetic.root,
            "source_categories": list(synthetic.source),
            "target_root": synthetic.root,
            "target_categories": list(synthetic.target),
            "num_workers": 0,
        }
        arguments.update(overrides)
        return AuxiliaryTrain(**arguments)  # type: ignore[arg-type]

    return _make
