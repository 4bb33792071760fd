"""The uncertainty overhead harness runs in quick mode and reports both candidates (times are not asserted)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import uncertainty

pytestmark = pytest.mark.integration


def test_quick_mode_reports(tmp_path: Path) -> None:
    """Medians of the forwards and the isolated maps, both overheads, the bit-identity check and a JSON file."""
    report = uncertainty.main(["--quick", "--rounds", "1", "--map-rounds", "1", "--json", str(tmp_path / "r.json")])
    assert set(report["median_s_per_image"]) == {"R=10", "R=10+uncertainty", "maps", "maps+uncertainty"}
    assert all(math.isfinite(value) and value > 0 for value in report["median_s_per_image"].values())
    assert math.isfinite(report["overhead"]) and math.isfinite(report["isolated_overhead"])
    assert report["outputs_bit_identical"]
    assert (tmp_path / "r.json").is_file()
