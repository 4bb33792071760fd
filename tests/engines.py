"""The Engine the integration tests build: one CPU device, no logger, no progress bar."""

from __future__ import annotations

from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import Callback


def cpu_engine(root: Path, *callbacks: Callback, **trainer_arguments: object) -> Engine:
    """An anomalib ``Engine`` writing under ``root``; ``trainer_arguments`` override the defaults."""
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    return Engine(default_root_dir=root, callbacks=list(callbacks), **(defaults | trainer_arguments))
