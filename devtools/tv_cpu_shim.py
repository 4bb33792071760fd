"""Lazy work-around that lets a CUDA build of torchvision import next to a CPU-only torch.

Why this exists
---------------
On the CI/dev boxes torch is installed from a local CPU-only wheel (``torch==2.13.0+cpu``) while the
torchvision wheel that PyPI serves for Linux x86_64 (``torchvision==0.28.0``) is a CUDA build. Its
compiled extension ``torchvision/_C*.so`` links against CUDA libraries that are absent, so
``torch.ops.load_library`` raises ``OSError``. torchvision tolerates that for most operators (it only
registers their meta kernels when ``extension._has_ops()`` is true), but
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` *unconditionally* with ``torch.library.register_fake``. Without the C++ library
those operator schemas do not exist and ``import torchvision`` dies with::

    RuntimeError: operator torchvision::nms does not exist

The fix is to define the two schemas ourselves (``torch.library.Library("torchvision", "DEF")``) before
torchvision is imported for the first time. The fake registrations then succeed and every pure-Python
part of torchvision (``transforms.v2``, ``tv_tensors``, models, ...) works. Calling ``nms``/``qnms``
still raises, because no real kernel is registered -- exactly as with any torchvision whose extension
failed to load.

How it is wired
---------------
``devtools/bootstrap.sh`` copies this file into the virtual environment's ``site-packages`` as
``_tv_cpu_shim.py`` together with ``_tv_cpu_shim.pth`` containing ``import _tv_cpu_shim``. At
interpreter start-up this module only installs a tiny :data:`sys.meta_path` finder and imports nothing
but the standard library (in particular it does **not** import torch). The finder wakes up the first time
``torchvision`` is imported, removes itself, decides whether the fix is needed, applies it if so, and
then returns ``None`` so that the normal import machinery imports torchvision as usual.

The fix is applied only when **both** hold:

* ``torch.version.cuda is None`` (a CPU-only torch), and
* ``torch.ops.load_library(<torchvision>/_C*.so)`` raises ``OSError``.

With a matching CPU or CUDA torchvision the module is a no-op (the successful probe loads the same
``_C`` library torchvision is about to load itself, which is idempotent). Any unexpected error inside the
shim is swallowed so it can never break an import; set ``TV_CPU_SHIM_DEBUG=1`` to see it, or
``TV_CPU_SHIM_DISABLE=1`` to turn the shim off entirely.
"""

from __future__ import annotations

import os
import sys

__all__ = ["TorchvisionCpuShimFinder", "apply_fix", "find_torchvision_extension", "install", "needs_fix"]

#: Operator schemas that ``torchvision/_meta_registrations.py`` registers fake kernels for without checking
#: ``torchvision.extension._has_ops()`` (taken from torchvision's ``csrc/ops/nms.cpp``).
_UNGUARDED_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

#: Keeps the ``torch.library.Library`` object alive; its definitions are dropped when it is collected.
_LIBRARY = None
#: Whether :func:`apply_fix` defined the schemas in this process.
APPLIED = False


def _debug(msg: str) -> None:
    if os.environ.get("TV_CPU_SHIM_DEBUG"):
        sys.stderr.write(f"[_tv_cpu_shim] {msg}\n")


def find_torchvision_extension(path: list[str] | None = None) -> str | None:
    """Return the path of torchvision's ``_C`` extension without importing torchvision.

    Args:
        path: Directories to search for the ``torchvision`` package; ``None`` means :data:`sys.path`.

    Returns:
        The file name of ``torchvision/_C*.so`` (or ``.pyd``), or ``None`` if torchvision or its extension
        cannot be found.
    """
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("torchvision", path)
    if spec is None or not spec.submodule_search_locations:
        return None
    loader_details = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for location in spec.submodule_search_locations:
        ext_spec = importlib.machinery.FileFinder(location, loader_details).find_spec("_C")
        if ext_spec is not None and ext_spec.origin:
            return ext_spec.origin
    return None


def needs_fix(torch_module=None, extension_path: str | None = None) -> bool:
    """Decide whether torchvision needs the missing ``nms``/``qnms`` schemas defined.

    Args:
        torch_module: The ``torch`` module to inspect (imported if ``None``).
        extension_path: Path of ``torchvision/_C*.so`` (looked up with :func:`find_torchvision_extension`
            if ``None``).

    Returns:
        ``True`` only if torch is a CPU-only build (``torch.version.cuda is None``) *and* loading
        torchvision's extension with ``torch.ops.load_library`` raises ``OSError``; ``False`` otherwise,
        including when the extension cannot be found or the operators already exist.
    """
    if torch_module is None:
        import torch as torch_module  # noqa: PLC0415 - deliberately lazy

    if getattr(torch_module.version, "cuda", None) is not None:
        return False
    if extension_path is None:
        extension_path = find_torchvision_extension()
    if extension_path is None:
        return False
    try:
        torch_module.ops.load_library(extension_path)
    except OSError as exc:
        _debug(f"torchvision extension failed to load ({exc}); defining torchvision::nms/qnms schemas")
    else:
        return False
    # Somebody (an earlier call, another shim) may already have defined the operators.
    return not _op_exists(torch_module, "torchvision::nms")


def _op_exists(torch_module, qualified_name: str) -> bool:
    try:
        torch_module._C._dispatch_find_schema_or_throw(qualified_name, "")
    except Exception:  # noqa: BLE001 - any failure means "not there"
        return False
    return True


def apply_fix(torch_module=None) -> None:
    """Define the ``torchvision::nms`` and ``torchvision::qnms`` schemas (no kernels)."""
    global _LIBRARY, APPLIED  # noqa: PLW0603
    if torch_module is None:
        import torch as torch_module  # noqa: PLC0415 - deliberately lazy

    try:
        lib = torch_module.library.Library("torchvision", "DEF")
    except RuntimeError:
        # The namespace already has a DEF library (e.g. a partial registration); add to it instead.
        lib = torch_module.library.Library("torchvision", "FRAGMENT")
    for schema in _UNGUARDED_SCHEMAS:
        name = schema.split("(", 1)[0]
        if not _op_exists(torch_module, f"torchvision::{name}"):
            lib.define(schema)
    _LIBRARY = lib
    APPLIED = True


class TorchvisionCpuShimFinder:
    """One-shot :data:`sys.meta_path` finder that runs :func:`apply_fix` just before torchvision imports."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != "torchvision":
            return None
        self.uninstall()  # one shot; also prevents recursion while torch is being imported
        try:
            if needs_fix():
                apply_fix()
        except Exception as exc:  # noqa: BLE001 - never break the import we are piggy-backing on
            _debug(f"shim failed, leaving torchvision alone: {type(exc).__name__}: {exc}")
        return None  # let the regular finders import torchvision

    def uninstall(self) -> None:
        """Remove this finder from :data:`sys.meta_path`."""
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def install() -> TorchvisionCpuShimFinder | None:
    """Put the finder at the front of :data:`sys.meta_path` (idempotent).

    Returns:
        The installed finder, or ``None`` when disabled, already installed, or torchvision is already
        imported (too late to help).
    """
    if os.environ.get("TV_CPU_SHIM_DISABLE") or "torchvision" in sys.modules:
        return None
    if any(type(f).__name__ == TorchvisionCpuShimFinder.__name__ for f in sys.meta_path):
        return None
    finder = TorchvisionCpuShimFinder()
    sys.meta_path.insert(0, finder)
    return finder


if __name__ == "_tv_cpu_shim":  # imported from _tv_cpu_shim.pth at start-up
    install()
