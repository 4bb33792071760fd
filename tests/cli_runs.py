"""anomalib's stock CLI in a fresh process, as a user runs it, for the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

ANOMALIB = (sys.executable, "-c", "from anomalib.cli.cli import main; main()")
"""``anomalib`` of this interpreter, whichever virtual environment's scripts folder is on the path."""


def run_anomalib(*arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``anomalib *arguments`` and require success, showing the end of its error output otherwise.

    The child does not inherit ``PL_GLOBAL_SEED`` (earlier tests may have seeded this process): what it trains must
    follow from its own arguments, as a user's run does.
    """
    environment = {key: value for key, value in os.environ.items() if key != "PL_GLOBAL_SEED"}
    environment["PYTHONWARNINGS"] = "ignore"
    completed = subprocess.run(
        [*ANOMALIB, *arguments], capture_output=True, text=True, timeout=timeout, env=environment
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def model_arguments(settings: Mapping[str, object]) -> list[str]:
    """``--model BayesPFL --model.<key> <value> ...`` for Python settings (None as null, tuples as lists)."""
    arguments = ["--model", "BayesPFL"]
    for key, value in settings.items():
        text = "null" if value is None else json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        arguments += [f"--model.{key}", text]
    return arguments
