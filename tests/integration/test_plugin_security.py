"""Trust rules and start-up contract of the entry-point plugin hook (``anomalib_bayes_pfl.plugin``).

* Entry points come only from installed distributions: a folder the user merely runs in (the working directory, the
  script's folder) cannot declare plugins, and no plugin replaces a name anomalib already has.
* The start-up hook imports nothing beyond the plugin module and reads no metadata.
* Wheels carry both the ``.pth`` hook (Python < 3.15) and the matching PEP 829 ``.start`` file (Python >= 3.15), and
  running both, or either twice, is harmless.

The end-to-end cases import anomalib in fresh subprocesses (~15 s each); the rest runs in-process without anomalib.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from anomalib_bayes_pfl import plugin

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
PTH = REPO / "anomalib_bayes_pfl" / "anomalib_bayes_pfl_plugins.pth"
START = REPO / "anomalib_bayes_pfl" / "anomalib_bayes_pfl_plugins.start"
PTH_LINE = "import anomalib_bayes_pfl.plugin as _plugin; _plugin.install()"
START_LINE = "anomalib_bayes_pfl.plugin:install"

CHECKS = textwrap.dedent(
    """
    import json, sys
    import anomalib.data, anomalib.models
    print(json.dumps({
        "folder": anomalib.data.Folder.__module__,
        "evil": hasattr(anomalib.models, "Evil") or hasattr(anomalib.data, "Evil"),
        "bayes_pfl": anomalib.models.BayesPFL.__module__,
        "trusted": getattr(getattr(anomalib.models, "TrustedModel", None), "__module__", None),
    }))
    """
)
"""Run after anomalib is imported: what the hook exposed."""


def _dist_info(folder: Path, name: str, entry_points: str) -> None:
    """Write a minimal ``<name>-1.0.dist-info`` (what ``importlib.metadata`` finds on a path entry)."""
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def _marking_module(path: Path, *classes: str) -> None:
    """A module that leaves ``<module>.ran`` next to itself when imported, and defines ``classes``."""
    body = "from pathlib import Path\nPath(__file__).with_suffix('.ran').write_text('ran')\n"
    body += "".join(f"class {name}:\n    pass\n" for name in classes)
    path.write_text(body)


@pytest.fixture
def untrusted(tmp_path: Path) -> Path:
    """A folder as a downloaded data set or repository might hold: a crafted dist-info declaring plugins."""
    folder = tmp_path / "untrusted"
    folder.mkdir()
    _dist_info(
        folder,
        "evil_plugin",
        """
        [anomalib.models]
        Evil = evil_plugin:Evil
        [anomalib.data]
        Folder = evil_plugin:Folder
        """,
    )
    _marking_module(folder / "evil_plugin.py", "Evil", "Folder")
    return folder


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """An install location outside the working directory (reached through PYTHONPATH): its plugins are trusted."""
    folder = tmp_path / "installed"
    folder.mkdir()
    _dist_info(
        folder,
        "trusted_plugin",
        """
        [anomalib.models]
        TrustedModel = trusted_plugin:TrustedModel
        [anomalib.data]
        Folder = trusted_clash:Folder
        """,
    )
    _marking_module(folder / "trusted_plugin.py", "TrustedModel")
    _marking_module(folder / "trusted_clash.py", "Folder")
    return folder


def _python(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONSAFEPATH"}}
    env["PYTHONWARNINGS"] = "default::RuntimeWarning"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    completed = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    return completed


def _report(completed: subprocess.CompletedProcess) -> dict[str, object]:
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- A: where entry points come from


def test_working_directory_declares_no_plugins(untrusted: Path, installed: Path) -> None:
    """`python -c "import anomalib.models"` in a crafted folder runs none of its code; installed plugins register."""
    completed = _python("-c", CHECKS, cwd=untrusted, pythonpath=installed)
    report = _report(completed)
    assert not (untrusted / "evil_plugin.ran").exists(), "a module from the working directory was imported"
    assert report["folder"].startswith("anomalib."), report
    assert report["evil"] is False
    assert report["bayes_pfl"] == "anomalib_bayes_pfl.lightning_model"
    assert report["trusted"] == "trusted_plugin"
    # The installed plugin may not replace anomalib's Folder: refused before its module is imported.
    assert not (installed / "trusted_clash.ran").exists()
    assert "'Folder'" in completed.stderr and "already" in completed.stderr


def test_script_folder_declares_no_plugins(untrusted: Path, tmp_path: Path) -> None:
    """A script run from a crafted folder (its folder is sys.path[0]) does not pick up plugins declared there."""
    (untrusted / "run.py").write_text(CHECKS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = _report(_python(str(untrusted / "run.py"), cwd=elsewhere))
    assert not (untrusted / "evil_plugin.ran").exists(), "a module next to the script was imported"
    assert report["folder"].startswith("anomalib."), report
    assert report["evil"] is False
    assert report["bayes_pfl"] == "anomalib_bayes_pfl.lightning_model"


def test_trusted_paths_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative entries, the working directory and the program's folder are out; site-packages always in."""
    import site

    cwd, program, other = tmp_path / "cwd", tmp_path / "program", tmp_path / "other"
    for folder in (cwd, program, other):
        folder.mkdir()
    site_packages = site.getsitepackages()[0]
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(safe_path=False, isolated=0))

    monkeypatch.setattr(sys, "path", [str(program), "", ".", "subdir", str(cwd), str(cwd) + "/", str(other)])
    assert plugin.trusted_paths() == [str(other)]
    # `python -m` / notebooks: sys.path[0] is the working directory itself.
    monkeypatch.setattr(sys, "path", [str(cwd), str(other), site_packages])
    assert plugin.trusted_paths() == [str(other), site_packages]
    # A program run from site-packages, or in it, still sees what is installed there.
    monkeypatch.setattr(sys, "path", [site_packages, str(other)])
    assert plugin.trusted_paths() == [site_packages, str(other)]
    monkeypatch.chdir(site_packages)
    assert plugin.trusted_paths() == [site_packages, str(other)]
    # -P / PYTHONSAFEPATH / -I: Python put no program folder first, so sys.path[0] is an ordinary entry.
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(safe_path=True, isolated=0))
    monkeypatch.setattr(sys, "path", [str(program), str(cwd), str(other)])
    assert plugin.trusted_paths() == [str(program), str(other)]


def test_entry_points_come_from_trusted_paths_only(
    untrusted: Path, installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`entry_points` lists what distributions on trusted paths declare, and nothing from the working directory."""
    monkeypatch.chdir(untrusted)
    monkeypatch.setattr(sys, "path", ["", str(untrusted), str(installed)])
    names = {entry_point.name for entry_point in plugin.entry_points(group="anomalib.models")}
    assert names == {"TrustedModel"}
    assert {entry_point.value for entry_point in plugin.entry_points(group="anomalib.data")} == {"trusted_clash:Folder"}


@pytest.fixture
def fake_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for ``anomalib.models`` (one group, one existing class), with a clean registration record."""
    module = types.ModuleType("fake_anomalib_models")
    module.Folder = type("Folder", (), {})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(plugin, "GROUPS", {"fake.group": module.__name__})
    monkeypatch.setattr(plugin, "_REGISTERED", {})
    monkeypatch.setattr(plugin, "_REFUSED", set())
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("clash_plugin", "fine_plugin", "odd_plugin"):
        _marking_module(tmp_path / f"{name}.py", "Folder", "Model")
        monkeypatch.delitem(sys.modules, name, raising=False)
    return module


def test_existing_names_are_never_replaced(
    fake_target: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin naming an existing attribute (or a private/odd name) is skipped with a warning, without importing it."""
    original = fake_target.Folder
    declared = [
        EntryPoint(name="Folder", value="clash_plugin:Folder", group="fake.group"),
        EntryPoint(name="__getattr__", value="odd_plugin:Model", group="fake.group"),
        EntryPoint(name="Model", value="fine_plugin:Model", group="fake.group"),
        EntryPoint(name="Model", value="clash_plugin:Model", group="fake.group"),
    ]
    monkeypatch.setattr(plugin, "entry_points", lambda group: declared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plugin.register_entry_points() == {"fake.group": ["Model"]}
    assert fake_target.Folder is original
    assert fake_target.Model.__module__ == "fine_plugin"
    assert not (tmp_path / "clash_plugin.ran").exists() and not (tmp_path / "odd_plugin.ran").exists()
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 3, messages
    assert any("'Folder'" in message for message in messages)
    assert any("'__getattr__'" in message for message in messages)
    assert any("'Model'" in message and "clash_plugin" in message for message in messages)
    # Registering again (the CLI wrapper after the hook) neither repeats the warnings nor changes anything.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugin.register_entry_points() == {"fake.group": ["Model"]}
    assert fake_target.Folder is original and fake_target.Model.__module__ == "fine_plugin"


def test_registering_twice_is_harmless(fake_target: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second registration (the CLI wrapper after the hook, both start-up files) keeps the classes, warns nothing."""
    declared = [EntryPoint(name="Model", value="fine_plugin:Model", group="fake.group")]
    monkeypatch.setattr(plugin, "entry_points", lambda group: declared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugin.register_entry_points() == {"fake.group": ["Model"]}
        first = fake_target.Model
        assert plugin.register_entry_points() == {"fake.group": ["Model"]}
    assert fake_target.Model is first


def test_install_twice_puts_one_finder(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() waits with a single finder however often it runs."""
    monkeypatch.setattr(plugin, "TRIGGER", "not_imported_trigger_module_xyz")
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, plugin._TriggerFinder)])
    plugin.install()
    plugin.install()
    assert sum(isinstance(finder, plugin._TriggerFinder) for finder in sys.meta_path) == 1


# --------------------------------------------------------------------------- B: start-up stays cheap


def test_start_up_hook_imports_only_itself(tmp_path: Path) -> None:
    """What the .pth / .start entry point runs at start-up imports the plugin module and nothing else."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import anomalib_bayes_pfl
        before = set(sys.modules)
        import anomalib_bayes_pfl.plugin as plugin
        plugin.install()
        print(sorted(set(sys.modules) - before))
        """
    )
    # -S: no site, so no installed hook ran before the measurement; -I: nothing from the environment.
    completed = _python("-I", "-S", "-c", code, cwd=tmp_path)
    assert completed.stdout.strip() == "['anomalib_bayes_pfl.plugin']"


# --------------------------------------------------------------------------- C: PEP 829 .start files


def test_wheels_ship_pth_and_matching_start_file(tmp_path: Path) -> None:
    """Regular and editable wheels put both files, with the same stem, at the root of site-packages."""
    assert PTH.read_text().strip() == PTH_LINE
    assert [line for line in START.read_text().splitlines() if line.strip()] == [START_LINE]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))) as wheel:
        assert wheel.read("anomalib_bayes_pfl_plugins.pth").decode() == PTH.read_text()
        assert wheel.read("anomalib_bayes_pfl_plugins.start").decode() == START.read_text()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "-e"]
        + [str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    site_packages = next(venv.glob("lib/python*/site-packages"))
    assert (site_packages / "anomalib_bayes_pfl_plugins.pth").read_text() == PTH.read_text()
    assert (site_packages / "anomalib_bayes_pfl_plugins.start").read_text() == START.read_text()


def test_start_entry_point_registers_and_both_hooks_together_are_harmless(tmp_path: Path) -> None:
    """Python >= 3.15 calls the .start entry point instead of the .pth line: it alone registers the plugins.

    Emulated on this Python: drop the finder the .pth installed, resolve the entry point the shipped .start file names
    as site.py does (``pkgutil.resolve_name``), call it twice, run the .pth line as well: one finder, and the plugins
    register without warnings, also when the entry point runs again after anomalib is imported.
    """
    code = textwrap.dedent(
        f"""
        import pkgutil, sys, warnings
        warnings.simplefilter("error", RuntimeWarning)
        from anomalib_bayes_pfl import plugin
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, plugin._TriggerFinder)]
        lines = open({str(START)!r}).read().splitlines()
        [spec] = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        entry_point = pkgutil.resolve_name(spec)
        assert callable(entry_point)
        entry_point()
        entry_point()
        exec({PTH_LINE!r})
        print(sum(isinstance(finder, plugin._TriggerFinder) for finder in sys.meta_path))
        import anomalib.data, anomalib.models
        print(anomalib.models.BayesPFL.__name__, anomalib.data.AuxiliaryTrain.__name__)
        first = anomalib.models.BayesPFL
        entry_point()
        print(anomalib.models.BayesPFL is first)
        """
    )
    assert _python("-c", code, cwd=tmp_path).stdout.split() == ["1", "BayesPFL", "AuxiliaryTrain", "True"]
