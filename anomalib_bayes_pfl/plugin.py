# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Lets anomalib find plugin models and datamodules by their short names, through entry points.

anomalib 2.7 looks models up among the *imported* subclasses of ``AnomalibModule`` (``get_model("BayesPFL")``, the
CLI's ``--model BayesPFL``) and as attributes of ``anomalib.models`` / ``anomalib.data`` (``class_path: BayesPFL``
in configs and ``anomalib benchmark``). It reads no entry points itself. This module does, lazily:

* :func:`install` runs at interpreter start: through the import line of ``anomalib_bayes_pfl_plugins.pth`` up to
  Python 3.14, and through the matching PEP 829 ``anomalib_bayes_pfl_plugins.start`` file (entry point
  ``anomalib_bayes_pfl.plugin:install``) from Python 3.15, which then skips the ``.pth`` import line. It puts a finder
  on ``sys.meta_path`` that waits for ``anomalib.models`` to be imported, and imports nothing but this module: no
  metadata is read at start-up. It is idempotent, so both start-up files running, or a manual call, are harmless.
* When ``anomalib.models`` has finished importing, :func:`register_entry_points` loads the groups
  ``anomalib.models`` and ``anomalib.data`` and sets each loaded class on those modules. A plugin that fails to load
  gives a warning; the import of anomalib goes on.

Trust rules (importing an entry point runs its package's code):

* Entry points are read only from distributions found on the :func:`trusted_paths`: the absolute ``sys.path``
  entries other than the current working directory and the program's own folder (``sys.path[0]``: the script's
  folder, or the working directory for ``-c``, ``-m``, the REPL and notebooks), unless that entry is a site-packages
  directory. A ``*.dist-info`` folder lying in the directory a user runs Python in, or next to the script, declares
  nothing. Plugins reached through ``PYTHONPATH`` (absolute entries) and ``.pth`` path lines count as installed.
* A plugin never replaces a name the target module already has (anomalib's own classes, or an earlier plugin's):
  it is skipped with a warning before its module is imported. Names that are not public identifiers are skipped too.

Any package can take part by declaring, e.g. ``[project.entry-points."anomalib.models"] MyModel = "pkg:MyModel"``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    import importlib.abc
    import importlib.machinery
    from importlib.metadata import EntryPoint
    from types import ModuleType

GROUPS = {"anomalib.models": "anomalib.models", "anomalib.data": "anomalib.data"}
"""Entry-point group -> the anomalib module whose attributes name its classes."""

TRIGGER = "anomalib.models"
"""Registering waits for this module: the model registry, imported by the CLI, ``get_model`` and the benchmark."""

_REGISTERED: dict[tuple[str, str], str] = {}
"""(module name, attribute) -> entry-point value, for what this module has exposed: registering again is a no-op."""

_REFUSED: set[tuple[str, str, str]] = set()
"""(module name, attribute, entry-point value) refused once: registering again does not repeat the warning."""


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _real(path: str) -> str:
    """``path`` as a canonical, comparable string (symlinks resolved, case folded where the OS does)."""
    import os

    return os.path.normcase(os.path.realpath(path))


def _site_directories() -> set[str]:
    """The site-packages directories of this interpreter (global, and the user one when it is enabled)."""
    import site

    directories = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if getattr(site, "ENABLE_USER_SITE", False) and hasattr(site, "getusersitepackages"):
        directories.append(site.getusersitepackages())
    return {_real(directory) for directory in directories}


def trusted_paths() -> list[str]:
    """The ``sys.path`` entries whose distributions may declare plugins, in ``sys.path`` order.

    An entry is trusted when it is absolute and is neither the current working directory nor the program's folder,
    ``sys.path[0]`` (Python puts there the script's folder, or the working directory for ``-c``, ``-m``, the REPL and
    notebook kernels, unless ``-P``, ``PYTHONSAFEPATH`` or ``-I`` is given). Relative entries (``''``, ``'.'``) name
    whatever the working directory is and are never trusted. Site-packages directories are always trusted, even when
    they are the working directory or the program's folder: writing there already runs code at start-up.

    Returns:
        The trusted entries, unchanged (not canonicalised), in ``sys.path`` order.
    """
    import os

    try:
        untrusted = {_real(os.getcwd())}
    except OSError:  # the working directory was removed: nothing to compare with
        untrusted = set()
    safe_path = getattr(sys.flags, "safe_path", False) or sys.flags.isolated
    if sys.path and not safe_path and isinstance(sys.path[0], str) and os.path.isabs(sys.path[0]):
        untrusted.add(_real(sys.path[0]))
    site_directories = _site_directories()
    trusted = []
    for entry in sys.path:
        if not isinstance(entry, str) or not os.path.isabs(entry):
            continue
        real = _real(entry)
        if real in site_directories or real not in untrusted:
            trusted.append(entry)
    return trusted


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` declared by distributions on the :func:`trusted_paths`.

    Like :func:`importlib.metadata.entry_points`, a distribution found on more than one path entry counts once: the
    first one on ``sys.path`` wins.

    Args:
        group: Entry-point group, e.g. ``"anomalib.models"``.

    Returns:
        The entry points, in ``sys.path`` order.
    """
    from importlib.metadata import distributions

    seen: set[str] = set()
    found = []
    for distribution in distributions(path=trusted_paths()):
        name = getattr(distribution, "_normalized_name", None) or distribution.metadata["Name"] or ""
        key = name.lower().replace("-", "_").replace(".", "_")
        if key and key in seen:
            continue
        seen.add(key)
        found.extend(entry_point for entry_point in distribution.entry_points if entry_point.group == group)
    return found


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


def _refusal(module: ModuleType, entry_point: EntryPoint) -> str | None:
    """Why ``entry_point`` may not be exposed on ``module`` (checked before anything is imported), or ``None``."""
    name = entry_point.name
    if not name.isidentifier() or name.startswith("_"):
        return "its name is not a public identifier"
    if name in vars(module) or name in vars(module).get("_deferred_plugins", {}):
        return f"{module.__name__}.{name} already exists (anomalib's own, or an earlier plugin's) and is kept"
    return None


def register_entry_points() -> dict[str, list[str]]:
    """Load every entry point of :data:`GROUPS` and expose it where anomalib looks; return what is registered.

    Only :func:`entry_points` from the :func:`trusted_paths` are considered. An entry point whose name the target
    module already has is skipped with a warning (once per process), before its module is imported; one this module
    exposed before (an earlier call) is left as it is and listed again, so calling this twice is harmless. A plugin
    whose module is still being imported (it imported anomalib first) is exposed on first attribute access instead:
    its classes exist by the time anyone asks for them.

    Returns:
        Group -> names exposed for it, by this call or an earlier one.
    """
    import importlib

    registered: dict[str, list[str]] = {}
    for group, module_name in GROUPS.items():
        module = importlib.import_module(module_name)
        for entry_point in entry_points(group=group):
            key = (module_name, entry_point.name)
            if _REGISTERED.get(key) == entry_point.value:
                registered.setdefault(group, []).append(entry_point.name)
                continue
            refusal = _refusal(module, entry_point)
            if refusal is not None:
                if (*key, entry_point.value) not in _REFUSED:
                    _REFUSED.add((*key, entry_point.value))
                    _warn(f"anomalib plugin {entry_point.name!r} ({entry_point.value}) is skipped: {refusal}")
                continue
            if _initializing(entry_point):
                _defer(module, entry_point)
            else:
                try:
                    plugin = entry_point.load()
                except Exception as error:  # noqa: BLE001 - one broken plugin must not break anomalib
                    _warn(
                        f"anomalib plugin {entry_point.name!r} ({entry_point.value}) could not be loaded and is "
                        f"skipped: {type(error).__name__}: {error}"
                    )
                    continue
                setattr(module, entry_point.name, plugin)
            _REGISTERED[key] = entry_point.value
            registered.setdefault(group, []).append(entry_point.name)
    return registered


class _RegisterAfterLoad:
    """Runs the real loader of :data:`TRIGGER`, then registers the plugins (an ``importlib.abc.Loader``)."""

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


class _TriggerFinder:
    """Finds :data:`TRIGGER` with the other finders and wraps its loader; removes itself after the first use.

    An ``importlib.abc.MetaPathFinder`` by duck typing: subclassing it would import ``importlib.abc`` (and with it
    ``importlib.resources``, ``pathlib``, ``tempfile``...) at every interpreter start.
    """

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterLoad(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if anomalib's model registry is loaded, else as soon as it is (idempotent).

    The start-up entry point of both ``anomalib_bayes_pfl_plugins.pth`` (import line) and
    ``anomalib_bayes_pfl_plugins.start`` (PEP 829): running it several times leaves one finder, or registers once.
    """
    if TRIGGER in sys.modules:
        register_entry_points()
    elif not any(isinstance(finder, _TriggerFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TriggerFinder())
