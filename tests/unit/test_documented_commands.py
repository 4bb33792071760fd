"""Every command the README and the help texts (docstrings: ``--model.help BayesPFL``) tell a user to run exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_COMMAND = re.compile(r"python -m (anomalib_bayes_pfl(?:\.\w+)*)")
WRAPPER_COMMAND = re.compile(r"anomalib-bayes-pfl (?!contributors)(\w+)")
ANOMALIB_SUBCOMMANDS = {"train", "fit", "validate", "test", "predict", "export", "benchmark", "install", "hpo"}
"""Subcommands of the ``anomalib`` CLI, which the ``anomalib-bayes-pfl`` wrapper takes unchanged."""


def _texts() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "anomalib_bayes_pfl").rglob("*.py"))]
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in files}


@pytest.mark.parametrize(("where", "text"), sorted(_texts().items()))
def test_documented_commands_exist(where: str, text: str) -> None:
    """``python -m`` modules can run (they have a ``__main__`` guard) and wrapper subcommands are anomalib's."""
    for module in MODULE_COMMAND.findall(text):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"{where}: no module {module}"
        assert 'if __name__ == "__main__":' in Path(spec.origin).read_text(encoding="utf-8"), f"{where}: {module}"
    for command in WRAPPER_COMMAND.findall(text):
        assert command in ANOMALIB_SUBCOMMANDS, f"{where}: anomalib-bayes-pfl {command} does not exist"
