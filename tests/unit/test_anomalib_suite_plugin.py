"""The plugin that runs anomalib's own model and CLI suites on BayesPFL (``make anomalib-suite``) builds our model.

The suites themselves need anomalib's test files (not in its sdist or wheel) and run for minutes, so CI runs only
this: what the plugin gives anomalib's ``get_model`` and ``AnomalibCLI`` is BayesPFL's default configuration on
the tiny offline backbone.
"""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

PLUGIN = Path(__file__).parents[2] / "devtools" / "anomalib_suite_plugin.py"


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    """The plugin module, loaded from its file (devtools is no package)."""
    spec = importlib.util.spec_from_file_location("anomalib_suite_plugin", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_its_examples_hold(plugin: ModuleType) -> None:
    """The name matching and the argument rewriting of the docstrings."""
    assert doctest.testmod(plugin).failed == 0


def _is_default_tiny(model: object) -> bool:
    """Whether ``model`` is BayesPFL with the tiny settings and every other argument at its default."""
    expected = dict(TINY_MODEL_ARGS, synthetic_anomalies=None, prompt_weights=None)
    return isinstance(model, BayesPFL) and all(
        tuple(value) == tuple(model.hparams[name]) if isinstance(value, tuple) else model.hparams[name] == value
        for name, value in expected.items()
    )


def test_the_model_suite_gets_the_tiny_default_model(plugin: ModuleType) -> None:
    """``get_model`` by the name ``list_models()`` gives; other models are untouched."""
    from anomalib.models import Padim, get_model

    tiny_get_model = plugin._tiny_get_model(get_model)  # noqa: SLF001
    assert _is_default_tiny(tiny_get_model("bayes_p_f_l"))
    assert isinstance(tiny_get_model("padim", backbone="resnet18", pre_trained=False), Padim)


def test_the_cli_suite_gets_the_tiny_default_model(plugin: ModuleType, tmp_path: Path) -> None:
    """The CLI suite's ``--model Padim`` command, rewritten, parses into the same model, with BayesPFL's folder."""
    from anomalib.cli import AnomalibCLI

    checkpoint = f"{tmp_path}/Padim/MVTecAD/dummy/v0/weights/lightning/model.ckpt"
    args = ["fit", "--model", "Padim", "--default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"]
    rewritten = plugin.cli_arguments([*args, "--ckpt_path", checkpoint])
    assert rewritten[-1] == checkpoint.replace("/Padim/", "/BayesPFL/")
    cli = AnomalibCLI(args=rewritten[:-2], run=False)
    assert _is_default_tiny(cli.model)
