# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""pytest plugin: anomalib's own model and CLI suites, run on BayesPFL alone, as a new user would run it.

anomalib checks every model with ``tests/integration/model/test_models.py`` (fit, test, train, validate, predict
and export through ``Engine``, parametrised over ``list_models()``) and the CLI with
``tests/integration/cli/test_cli.py`` (the same through ``AnomalibCLI``, written for ``Padim``). Their files are
run unchanged from an anomalib checkout (``devtools/anomalib_suite.py`` fetches and runs them); this plugin only

* keeps the model suite's cases of ``BayesPFL`` and deselects the other models', and
* gives BayesPFL its tiny offline backbone: the arguments of :data:`anomalib_bayes_pfl.demo.TINY_MODEL_ARGS` are
  added where those files build the model (``get_model``) or name it on the command line (``--model Padim``
  becomes ``--model BayesPFL --model.backbone bayes-pfl-tiny ...``, and ``Padim``'s result folder ``BayesPFL``'s).

Everything else is BayesPFL's default configuration: no prompt weights, no ``synthetic_anomalies`` setting, on
anomalib's generated MVTecAD-like data whose train split is normal-only.

Use: ``python -m pytest -p anomalib_suite_plugin tests/integration/model/test_models.py ...`` from the anomalib
checkout, with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

MODEL = "BayesPFL"
"""The model the suites run on, as users name it on the command line."""

CLI_SUITE_MODEL = "Padim"
"""The model anomalib's CLI suite names in every command (and in its checkpoint paths)."""


def tiny_arguments() -> dict[str, Any]:
    """BayesPFL's tiny offline settings: random 4-block CLIP, 64 px (imported late: plugins load before anomalib)."""
    from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

    return dict(TINY_MODEL_ARGS)


def is_bayes_pfl(name: str) -> bool:
    """Whether a model name of ``list_models()``/``get_model`` (``bayes_p_f_l``, ``BayesPFL``, ...) is ours.

    Example:
        >>> is_bayes_pfl("bayes_p_f_l"), is_bayes_pfl("BayesPFL"), is_bayes_pfl("padim")
        (True, True, False)
    """
    return name.replace("_", "").lower() == MODEL.lower()


def cli_arguments(args: list[Any]) -> list[Any]:
    """The CLI suite's arguments for BayesPFL: its model name with the tiny settings after it, and its folder.

    Example:
        >>> cli_arguments(["fit", "--model", "Padim", "--ckpt_path", "p/Padim/MVTecAD/model.ckpt"])[:4]
        ['fit', '--model', 'BayesPFL', '--model.backbone=bayes-pfl-tiny']
        >>> cli_arguments(["--ckpt_path", "p/Padim/MVTecAD/model.ckpt"])
        ['--ckpt_path', 'p/BayesPFL/MVTecAD/model.ckpt']
    """
    settings = [f"--model.{name}={json.dumps(value) if not isinstance(value, str) else value}"
                for name, value in tiny_arguments().items()]  # fmt: skip
    rewritten: list[Any] = []
    for arg in args:
        if arg == CLI_SUITE_MODEL:
            rewritten += [MODEL, *settings]
        elif isinstance(arg, str) and f"/{CLI_SUITE_MODEL}/" in arg:
            rewritten.append(arg.replace(f"/{CLI_SUITE_MODEL}/", f"/{MODEL}/"))
        else:
            rewritten.append(arg)
    return rewritten


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the model suite's cases of other models."""
    deselected = [item for item in items if not is_bayes_pfl(_model_name(item) or MODEL)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


def _model_name(item: pytest.Item) -> str | None:
    """The ``model_name`` parameter of a case of the model suite; ``None`` for cases without one."""
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("model_name")


def _tiny_get_model(get_model: Callable[..., Any]) -> Callable[..., Any]:
    """The suite's ``get_model``, with BayesPFL's tiny settings added under the suite's own arguments."""

    def get_tiny_model(model: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - anomalib's signature
        if isinstance(model, str) and is_bayes_pfl(model):
            kwargs = tiny_arguments() | kwargs
        return get_model(model, *args, **kwargs)

    return get_tiny_model


def _tiny_cli(cli: Callable[..., Any]) -> Callable[..., Any]:
    """The suite's ``AnomalibCLI``, called with the suite's arguments rewritten for BayesPFL."""

    def run_cli(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - anomalib's signature
        kwargs["args"] = cli_arguments(kwargs["args"])
        return cli(*args, **kwargs)

    return run_cli


@pytest.fixture(autouse=True)
def _bayes_pfl_in_anomalib_suites(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the suite module's model construction (``get_model``, ``AnomalibCLI``) through the tiny settings."""
    module = request.module
    if hasattr(module, "get_model"):
        monkeypatch.setattr(module, "get_model", _tiny_get_model(module.get_model))
    if hasattr(module, "AnomalibCLI"):
        monkeypatch.setattr(module, "AnomalibCLI", _tiny_cli(module.AnomalibCLI))
