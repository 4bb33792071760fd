# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Lets anomalib find plugin models and datamodules by their short names, through entry points.

anomalib 2.7 looks models up among the *imported* subclasses of ``AnomalibModule`` (``get_model("BayesPFL")``, the
CLI's ``--model BayesPFL``) and as attributes of ``anomalib.models`` / ``anomalib.data`` (``class_path: BayesPFL``
in configs and ``anomalib benchmark``). It reads no entry points itself. This module does, lazily:

* :func:`install` (run at interpreter start by the ``anomalib_bayes_pfl_plugins.pth`` file the wheel installs) puts
  a finder on ``sys.meta_path`` that waits for ``anomalib.models`` to be imported. Programs that never import
  anomalib pay for a few standard-library imports and nothing else.
* When ``anomalib.models`` has finished importing, :func:`register_entry_points` loads the groups
  ``anomalib.models`` and ``anomalib.data`` and sets each loaded class on those modules. A plugin that fails to load
  gives a warning; the import of anomalib goes on.

Any package can take part by declaring, e.g. ``[project.entry-points."anomalib.models"] MyModel = "pkg:MyModel"``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

GROUPS = {"anomalib.models": "anomalib.models", "anomalib.data": "anomalib.data"}
"""Entry-point group -> the anomalib module whose attributes name its classes."""

TRIGGER = "anomalib.models"
"""Registering waits for this module: the model registry, imported by the CLI, ``get_model`` and the benchmark."""


def _initializing(entry_point: EntryPoint) -> bool:
    """Whether the entry point's package is being imported right now (it imported anomalib on its way)."""
    package = entry_point.module.split(".")[0]
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name == package or name.startswith(package + ".")
    )


def _defer(module: ModuleType, entry_point: EntryPoint) -> None:
    """Expose ``entry_point`` on ``module`` on first attribute access, once its own import has finished."""
    deferred = module.__dict__.setdefault("_deferred_plugins", {})
    deferred[entry_point.name] = entry_point

    def __getattr__(name: str) -> object:  # noqa: N807 - a module-level __getattr__ (PEP 562)
        if name not in deferred:
            msg = f"module {module.__name__!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = deferred.pop(name).load()
        setattr(module, name, value)
        return value

    module.__getattr__ = __getattr__


def register_entry_points() -> dict[str, list[str]]:
    """Load every entry point of :data:`GROUPS` and expose it where anomalib looks; return what was registered.

    A plugin whose module is still being imported (it imported anomalib first) is exposed on first attribute
    access instead: its classes exist by the time anyone asks for them.
    """
    registered: dict[str, list[str]] = {}
    for group, module_name in GROUPS.items():
        module = importlib.import_module(module_name)
        for entry_point in entry_points(group=group):
            if _initializing(entry_point):
                _defer(module, entry_point)
                registered.setdefault(group, []).append(entry_point.name)
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # noqa: BLE001 - one broken plugin must not break anomalib
                warnings.warn(
                    f"anomalib plugin {entry_point.name!r} ({entry_point.value}) could not be loaded and is skipped: "
                    f"{type(error).__name__}: {error}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            setattr(module, entry_point.name, plugin)
            registered.setdefault(group, []).append(entry_point.name)
    return registered


class _RegisterAfterLoad(importlib.abc.Loader):
    """Runs the real loader of :data:`TRIGGER`, then registers the plugins."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> object:
        """Everything else (resource readers, ``is_package``, ...) is the real loader's."""
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        register_entry_points()


class _TriggerFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`TRIGGER` with the other finders and wraps its loader; removes itself after the first use."""

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoad(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if anomalib's model registry is loaded, else as soon as it is (idempotent)."""
    if TRIGGER in sys.modules:
        register_entry_points()
    elif not any(isinstance(finder, _TriggerFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TriggerFinder())
