"""The latency harness runs in quick mode and reports every candidate (times are not asserted)."""

from __future__ import annotations

import math
from pathlib import Path

import latency
import pytest

pytestmark = pytest.mark.integration


def test_quick_mode_reports(tmp_path: Path) -> None:
    """Medians and ratios for each candidate, the correctness checks, a plot and a JSON file."""
    report = latency.main(
        ["--quick", "--rounds", "1", "--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "r.json")]
    )
    assert {"vision", "R=10", "R=1", "reference", "batch4", "eager+post", "openvino", "patchcore"} <= set(
        report["median_s_per_image"]
    )
    assert all(math.isfinite(value) and value > 0 for value in report["median_s_per_image"].values())
    assert report["reference_max_abs_diff"] < 1e-5
    assert report["batch_max_abs_diff"] < 1e-5
    assert (tmp_path / "p.png").stat().st_size > 0
    assert (tmp_path / "r.json").is_file()
