"""Learning test of human-free training: a model that only ever saw synthetic anomalies finds real ones.

The tiny random-weight CLIP at 128 px is trained on the *normal* train images of four generated categories, with
object-attention synthetic anomalies, through anomalib's Engine (``benchmarks/human_free.py``, the ablation
harness, run as a user would). It is then tested zero-shot on the real anomalies of two categories it never saw
(ring, grain), each category on its own.

Measured (300 steps, seed 0, 2 cores, with the per-step generators of the training module): image AUROC ring 0.53,
grain 0.81; pixel AUROC ring 0.50, grain 0.71. Seeds 1 and 2: image AUROC (mean of the two) 0.59 and 0.80, pixel
AUROC 0.66 and 0.55. Before the draws moved to per-step generators, seed 0 gave ring 0.58 / 0.66, grain 0.78 / 0.43.
Which unseen category's maps transfer changes from draw to draw with these random CLIP weights, so the bars are on
the mean of the two categories, as the MVTec protocol averages them; that is a limit of the tiny random backbone,
stated rather than hidden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from human_free import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


STEPS = 300
IMAGE_AUROC_BAR = 0.62
"""Mean image AUROC over the two unseen categories; measured 0.67 at seed 0 (chance: 0.5)."""
PIXEL_AUROC_BAR = 0.55
"""Mean pixel AUROC over the two unseen categories; measured 0.60 at seed 0 (chance: 0.5)."""


def test_synthetic_only_training_finds_real_anomalies_of_unseen_categories(tmp_path: Path) -> None:
    """Image and pixel AUROC on the unseen categories' real anomalies are above chance by a margin."""
    report = tmp_path / "results.json"
    arguments = ["--output", str(tmp_path), "--variants", "synthetic", "--steps", str(STEPS), "--json", str(report)]
    assert main(arguments) == 0
    result = json.loads(report.read_text())["synthetic"]
    print(f"unseen categories: {result['per_category']}")
    assert result["image_AUROC"] >= IMAGE_AUROC_BAR
    assert result["pixel_AUROC"] >= PIXEL_AUROC_BAR
