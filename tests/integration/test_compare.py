"""`python benchmarks/compare.py`: BayesPFL, PatchCore and WinCLIP through anomalib's benchmark, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_bayes_pfl import BayesPFL, generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPARE = Path(__file__).parents[2] / "benchmarks" / "compare.py"


def _config(path: Path, model: dict, root: Path, categories: list[str]) -> Path:
    loading = {"num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4}
    data = {"class_path": "MVTecAD", "init_args": {"root": str(root), "category": {"grid": categories}} | loading}
    path.write_text(yaml.safe_dump({"accelerator": ["cpu"], "benchmark": {"seed": 1, "model": model, "data": data}}))
    return path


def _compare(tmp_path: Path, *configs: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(COMPARE), *map(str, configs), "--output", "out",
               "--winclip-pretrained", "none"]  # fmt: skip
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_clip_weights: str) -> dict:
    """Tiny generated data and a BayesPFL head (random, zero-shot) on a saved random tiny CLIP."""
    root = tmp_path_factory.mktemp("bench")
    data = generate_synthetic_dataset(root / "data", ["disc", "grain"], num_train=4, num_test_normal=2,
                                      num_test_anomalous=3)  # fmt: skip
    kwargs = TINY_MODEL_ARGS | {"pretrained": tiny_clip_weights}
    head = save_prompt_weights(BayesPFL(**kwargs).model, root / "head.pt")
    bayes = {
        "class_path": "BayesPFL",
        "init_args": kwargs | {"feature_layers": [1, 2, 3, 4], "prompt_weights": str(head)},
    }
    return {"root": root, "data": data, "bayes": bayes}


def _engine_test(setting: dict, category: str) -> dict[str, float]:
    """The zero-shot BayesPFL of the benchmark config, tested in this process with anomalib's Engine."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(1)
    datamodule = MVTecAD(setting["data"], category=category, num_workers=0, train_batch_size=4, eval_batch_size=4)
    engine = Engine(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=setting["root"] / "t")
    model = BayesPFL(**setting["bayes"]["init_args"])
    return {key: float(value) for key, value in engine.test(model, datamodule=datamodule)[0].items()}


def test_three_models_merged_into_one_table(setting: dict) -> None:
    """All jobs run; one CSV with a row per model and category, and a plot."""
    root, data = setting["root"], setting["data"]
    configs = [
        _config(root / "bayes_pfl.yaml", setting["bayes"], data, ["disc", "grain"]),
        _config(
            root / "patchcore.yaml", {"class_path": "Patchcore", "init_args": {"pre_trained": False}}, data, ["disc"]
        ),
        _config(root / "winclip.yaml", {"class_path": "WinClip"}, data, ["disc"]),
    ]
    completed = _compare(root, *configs)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    results = pd.read_csv(root / "out" / "results.csv")
    assert sorted(results["config"]) == ["bayes_pfl", "bayes_pfl", "patchcore", "winclip"]
    bayes = results[results["config"] == "bayes_pfl"].set_index("data.init_args.category")
    for category in ("disc", "grain"):  # each row is the metric of its own model and category
        expected = _engine_test(setting, category)
        for metric in ("image_AUROC", "pixel_AUROC"):
            assert bayes.loc[category, metric] == pytest.approx(expected[metric], abs=1e-6), (category, metric)
    assert (root / "out" / "results.png").stat().st_size > 0


def test_a_failed_job_fails_the_command(setting: dict) -> None:
    """A job that cannot run (missing prompt weights) makes the command exit 1 and name the config."""
    root = setting["root"]
    broken = setting["bayes"] | {
        "init_args": setting["bayes"]["init_args"] | {"prompt_weights": str(root / "missing.pt")}
    }
    completed = _compare(root, _config(root / "broken.yaml", broken, setting["data"], ["disc"]))
    assert completed.returncode == 1
    assert "broken.yaml: 0 of 1 benchmark jobs produced results" in completed.stdout
