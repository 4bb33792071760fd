"""Where the golden files made by the official Bayes-PFL code live.

They are model weights and model outputs, so they are not committed: they sit in ``shared/fixtures/reference`` beside
the checkout (where the team, CI and the mutation tool find them), or wherever ``BAYES_PFL_REFERENCE`` points.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENVIRONMENT = "BAYES_PFL_REFERENCE"
"""Overrides the folder of the golden files."""

REFERENCE = Path(os.environ.get(ENVIRONMENT) or Path(__file__).resolve().parents[2] / "shared/fixtures/reference")
"""The folder of the golden files (``<checkout>/../shared/fixtures/reference`` by default)."""


def reference_file(name: str) -> Path:
    """The golden file ``name``; a missing folder fails the test with where to put it (never skips)."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(
            f"Golden file {path} not found. The official code's fixtures belong in shared/fixtures/reference beside "
            f"the checkout; set {ENVIRONMENT}=<folder> if they are elsewhere.",
            pytrace=False,
        )
    return path
