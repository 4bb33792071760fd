"""BayesPFL as one of anomalib's own models: short names through entry points, CLI train/export/predict, parity.

Everything runs in fresh subprocesses through the stock ``anomalib`` command, as a user would type it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_bayes_pfl import plugin

pytestmark = pytest.mark.integration

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
REPO = Path(__file__).parents[2]
TINY_CLI = [
    "--model", "BayesPFL", "--model.backbone", "bayes-pfl-tiny", "--model.image_size", "64",
    "--model.feature_layers", "[1, 2]", "--model.gaussian_sigma", "1.0", "--model.top_k", "20",
    "--model.num_samples", "2",
]  # fmt: skip
HUMAN_FREE_CLI = [
    "--model.synthetic_anomalies", "true", "--model.meta_guidance", "true", "--model.locality_window", "3",
    "--model.locality_layers", "[2]",
]  # fmt: skip
"""All three options of the second paper; the window sits in block 2, which is tapped, so it changes the maps."""
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO runs bf16 by default on CPUs that support it; compare in f32."""


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, env=os.environ | {"PYTHONWARNINGS": "ignore"}
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    return completed


def test_start_up_imports_nothing_heavy() -> None:
    """The installed hook costs programs that never import anomalib nothing: no torch, no anomalib."""
    code = "import sys; print('torch' in sys.modules, 'anomalib' in sys.modules)"
    assert _run(sys.executable, "-c", code).stdout.split() == ["False", "False"]


def test_short_names_after_importing_anomalib() -> None:
    """get_model by name and by class_path, list_models and anomalib.data see the plugin classes."""
    code = (
        "import anomalib.data, anomalib.models as m\n"
        "kwargs = dict(backbone='bayes-pfl-tiny', pretrained=None, image_size=64, feature_layers=[1],"
        " gaussian_sigma=1.0)\n"
        "print(type(m.get_model('BayesPFL', **kwargs)).__name__)\n"
        "print(type(m.get_model({'class_path': 'BayesPFL', 'init_args': kwargs})).__name__)\n"
        "print('bayes_p_f_l' in m.list_models(), anomalib.data.AuxiliaryTrain.__name__)\n"
    )
    assert _run(sys.executable, "-c", code).stdout.split() == ["BayesPFL", "BayesPFL", "True", "AuxiliaryTrain"]


def test_plugin_imported_before_anomalib() -> None:
    """Importing the plugin first (it imports anomalib itself) still registers it, without warnings."""
    code = (
        "import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
        "from anomalib_bayes_pfl import BayesPFL\n"
        "import anomalib.data, anomalib.models\n"
        "print(anomalib.models.BayesPFL is BayesPFL, anomalib.data.AuxiliaryTrain.__name__)\n"
    )
    assert _run(sys.executable, "-c", code).stdout.split() == ["True", "AuxiliaryTrain"]


def test_broken_plugin_warns_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin whose import fails is skipped with a warning; the others still register."""
    broken = EntryPoint(name="Broken", value="no_such_module_xyz:Model", group="anomalib.models")
    fine = EntryPoint(name="BayesPFL", value="anomalib_bayes_pfl:BayesPFL", group="anomalib.models")
    monkeypatch.setattr(plugin, "entry_points", lambda group: [broken, fine] if group == "anomalib.models" else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registered = plugin.register_entry_points()
    assert registered == {"anomalib.models": ["BayesPFL"]}
    assert any("'Broken'" in str(warning.message) for warning in caught)


def test_wheel_ships_the_hook_and_configs(tmp_path: Path) -> None:
    """A regular wheel carries the start-up hook at its root and the packaged model config."""
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO))
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "anomalib_bayes_pfl_plugins.pth" in names
    assert "anomalib_bayes_pfl/model_configs/bayes-pfl-tiny.json" in names


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """`anomalib train --model BayesPFL --data AuxiliaryTrain` on tiny generated data."""
    root_dir = tmp_path_factory.mktemp("cli")
    _run(
        ANOMALIB, "train", *TINY_CLI, "--model.pretrained", "null", "--model.stage1_max_epochs", "1",
        "--data", "AuxiliaryTrain", "--data.source_root", str(synthetic_root),
        "--data.source_categories", "[disc, square]", "--data.target_categories", "[ring]",
        "--data.num_workers", "0", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--default_root_dir", str(root_dir),
    )  # fmt: skip
    return next(root_dir.rglob("weights/lightning/model.ckpt"))


@pytest.fixture(scope="module")
def human_free_checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """`anomalib train --model BayesPFL --data MVTecAD`: normal-only train split, synthetic anomalies, all options."""
    root_dir = tmp_path_factory.mktemp("cli-human-free")
    _run(
        ANOMALIB, "train", *TINY_CLI, *HUMAN_FREE_CLI, "--model.pretrained", "null",
        "--model.stage1_max_epochs", "1", "--data", "MVTecAD", "--data.root", str(synthetic_root),
        "--data.category", "disc", "--data.num_workers", "0", "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false", "--default_root_dir", str(root_dir),
    )  # fmt: skip
    return next(root_dir.rglob("weights/lightning/model.ckpt"))


def _export(checkpoint: Path, export_type: str, root: Path, *model_args: str) -> Path:
    _run(
        ANOMALIB, "export", *TINY_CLI, *model_args, "--model.pretrained", "null", "--export_type", export_type,
        "--ckpt_path", str(checkpoint), "--input_size", "[64, 64]", "--export_root", str(root),
    )  # fmt: skip
    return next((root / "weights" / export_type).glob("model.*"))


def _eager(checkpoint: Path, image: Path) -> tuple[float, np.ndarray]:
    from anomalib.data.utils import read_image

    from anomalib_bayes_pfl import BayesPFL

    model = BayesPFL.load_from_checkpoint(checkpoint, weights_only=True).eval()
    with torch.no_grad():
        output = model(read_image(image, as_tensor=True).unsqueeze(0))
    return float(output.pred_score.flatten()[0]), output.anomaly_map.squeeze().numpy()


@pytest.mark.parametrize(("trained", "model_args"), [("checkpoint", []), ("human_free_checkpoint", HUMAN_FREE_CLI)])
def test_openvino_export_matches_eager(
    trained: str,
    model_args: list[str],
    request: pytest.FixtureRequest,
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenVINO (f32) predictions on image files match the eager model after post-processing within 1e-3.

    Also for a model trained human-free with locality-aware attention (its mask is part of the exported graph).
    """
    from anomalib.deploy import OpenVINOInferencer

    checkpoint = request.getfixturevalue(trained)
    monkeypatch.chdir(tmp_path)  # the inferencer writes ./openvino_cache
    exported = _export(checkpoint, "openvino", tmp_path, *model_args)
    inferencer = OpenVINOInferencer(exported, device="CPU", config=F32)
    for image in sorted((synthetic_root / "grain" / "test").rglob("00[0-1].png")):
        prediction = inferencer.predict(image)
        score, anomaly_map = _eager(checkpoint, image)
        assert abs(float(np.asarray(prediction.pred_score).flatten()[0]) - score) <= 1e-3
        assert np.abs(np.asarray(prediction.anomaly_map).squeeze() - anomaly_map).max() <= 1e-3


def test_onnx_and_torch_exports(
    checkpoint: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX and torch exports are written; the torch export predicts like the eager model."""
    from anomalib.deploy import TorchInferencer

    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # anomalib's opt-in for pickled torch exports; the file is ours
    assert _export(checkpoint, "onnx", tmp_path).suffix == ".onnx"
    inferencer = TorchInferencer(_export(checkpoint, "torch", tmp_path), device="cpu")
    image = next((synthetic_root / "ring" / "test" / "good").glob("*.png"))
    prediction = inferencer.predict(image)
    assert float(prediction.pred_score.flatten()[0]) == pytest.approx(_eager(checkpoint, image)[0], abs=1e-5)


def test_predict_on_unlabelled_folder_and_single_image(checkpoint: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """`anomalib predict` works on a folder of images without labels and on one image, writing visualisations."""
    folder = synthetic_root / "ring" / "test" / "good"
    for target, name in ((folder, "folder"), (next(folder.glob("*.png")), "single")):
        out = tmp_path / name
        _run(
            ANOMALIB, "predict", *TINY_CLI, "--model.pretrained", "null", "--ckpt_path", str(checkpoint),
            "--data", str(target), "--default_root_dir", str(out),
        )  # fmt: skip
        assert list(out.rglob("*.png"))


def test_predict_safe_folder_reports_bad_files(checkpoint: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """`anomalib predict --data SafePredictFolder`: a truncated file is reported and skipped, the others predicted."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = sorted((synthetic_root / "ring" / "test" / "good").glob("*.png"))[:2]
    for image in good:
        shutil.copy(image, folder / image.name)
    (folder / "cut.png").write_bytes(good[0].read_bytes()[:100])
    out = tmp_path / "out"
    _run(
        ANOMALIB, "predict", *TINY_CLI, "--model.pretrained", "null", "--ckpt_path", str(checkpoint),
        "--data", "SafePredictFolder", "--data.path", str(folder), "--default_root_dir", str(out),
    )  # fmt: skip
    report = next(out.rglob("skipped_images.csv")).read_text()
    assert "cut.png" in report and good[0].name not in report
    assert sorted(path.name for path in out.rglob("images/**/*.png")) == sorted(image.name for image in good)


def test_wrapper_command_registers_plugins() -> None:
    """`anomalib-bayes-pfl` is anomalib's CLI with the plugins registered first."""
    wrapper = str(Path(sys.executable).with_name("anomalib-bayes-pfl"))
    assert "--model" in _run(wrapper, "train", "--help").stdout


@pytest.mark.parametrize(
    ("content", "expected"), [(b"", "is empty (0 bytes)"), (b"hello", "is not a PyTorch checkpoint")]
)
def test_wrong_ckpt_path_is_named(content: bytes, expected: str, tmp_path: Path) -> None:
    """`anomalib predict --ckpt_path` with an empty or text file: one message naming the file and what to pass."""
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(content)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "part.png")
    completed = subprocess.run(
        [ANOMALIB, "predict", *TINY_CLI, "--model.pretrained", "null", "--ckpt_path", str(bad), "--data",
         "SafePredictFolder", "--data.path", str(tmp_path / "images"), "--default_root_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert completed.returncode != 0
    message = " ".join(completed.stderr.split())  # the console wraps long lines
    assert f"model.ckpt {expected}" in message and "as --ckpt_path" in message
