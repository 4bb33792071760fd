"""Tests for devtools/tv_cpu_shim.py (the torchvision-on-CPU-torch import work-around)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SHIM_PATH = Path(__file__).resolve().parents[2] / "devtools" / "tv_cpu_shim.py"


@pytest.fixture
def shim(monkeypatch):
    """Import devtools/tv_cpu_shim.py by path under a private name (which does not auto-install the finder)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # keep devtools/ free of __pycache__
    spec = importlib.util.spec_from_file_location("tv_cpu_shim_under_test", SHIM_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_torch(cuda=None, load_error=None, op_exists=False):
    calls = []

    def load_library(path):
        calls.append(path)
        if load_error is not None:
            raise load_error

    def find_schema(name, overload):
        if not op_exists:
            raise RuntimeError(f"operator {name} does not exist")

    torch = SimpleNamespace(
        version=SimpleNamespace(cuda=cuda),
        ops=SimpleNamespace(load_library=load_library),
        _C=SimpleNamespace(_dispatch_find_schema_or_throw=find_schema),
    )
    return torch, calls


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_torchvision_transforms_v2_imports_in_fresh_interpreter():
    result = _run("import torchvision.transforms.v2")
    assert result.returncode == 0, result.stderr


def test_interpreter_startup_does_not_import_torch():
    result = _run("import sys; print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_no_fix_when_extension_loads(shim):
    torch, calls = _fake_torch(cuda=None, load_error=None)
    assert shim.needs_fix(torch, "/somewhere/torchvision/_C.so") is False
    assert calls == ["/somewhere/torchvision/_C.so"]


def test_no_fix_when_extension_loads_with_real_torch(shim, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "cuda", None)
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    assert shim.needs_fix(torch, "/somewhere/torchvision/_C.so") is False
    assert loaded == ["/somewhere/torchvision/_C.so"]


def test_no_fix_for_cuda_torch_and_extension_not_probed(shim):
    torch, calls = _fake_torch(cuda="12.6", load_error=OSError("libcudart.so: cannot open shared object file"))
    assert shim.needs_fix(torch, "/somewhere/torchvision/_C.so") is False
    assert calls == []


def test_fix_needed_for_cpu_torch_when_extension_fails(shim):
    torch, _ = _fake_torch(cuda=None, load_error=OSError("Could not load this library"))
    assert shim.needs_fix(torch, "/somewhere/torchvision/_C.so") is True


def test_no_fix_when_ops_already_defined(shim):
    torch, _ = _fake_torch(cuda=None, load_error=OSError("Could not load this library"), op_exists=True)
    assert shim.needs_fix(torch, "/somewhere/torchvision/_C.so") is False


def test_no_fix_when_torchvision_extension_not_found(shim, monkeypatch, tmp_path):
    assert shim.find_torchvision_extension([str(tmp_path)]) is None
    torch, calls = _fake_torch(cuda=None, load_error=OSError("unreachable"))
    monkeypatch.setattr(shim, "find_torchvision_extension", lambda path=None: None)
    assert shim.needs_fix(torch) is False
    assert calls == []


def test_find_torchvision_extension_locates_c_module(shim):
    pytest.importorskip("torchvision")
    path = shim.find_torchvision_extension()
    assert path is not None
    assert Path(path).name.startswith("_C")
    assert Path(path).parent.name == "torchvision"


def test_finder_is_one_shot_and_ignores_other_modules(shim, monkeypatch):
    decisions = []
    monkeypatch.setattr(shim, "needs_fix", lambda: decisions.append("asked") or False)
    monkeypatch.delenv("TV_CPU_SHIM_DISABLE", raising=False)
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    # Hide a finder installed at start-up by the venv's _tv_cpu_shim.pth (if torchvision is not imported yet).
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if type(f).__name__ != "TorchvisionCpuShimFinder"])
    finder = shim.install()
    assert finder is not None
    try:
        assert sys.meta_path[0] is finder
        assert shim.install() is None  # idempotent
        assert finder.find_spec("numpy") is None
        assert decisions == []
        assert finder.find_spec("torchvision") is None  # never imports torchvision itself
        assert decisions == ["asked"]
        assert finder not in sys.meta_path
    finally:
        finder.uninstall()
