"""The training-step harness runs both modes in quick mode and reports time and memory (not asserted)."""

from __future__ import annotations

import pytest
import train_step

pytestmark = pytest.mark.integration


def test_quick_mode_reports_both_modes() -> None:
    """One result per mode with positive time, throughput and memory."""
    results = train_step.main(["--quick", "--steps", "1"])
    assert [result["mode"] for result in results] == list(train_step.MODES)
    assert all(result["s_per_step"] > 0 and result["peak_memory_mb"] > 0 for result in results)
