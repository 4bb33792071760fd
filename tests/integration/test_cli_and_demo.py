"""The README's entry points: the offline demo and `anomalib train -c` with the shipped configs."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from cli_runs import run_anomalib

from anomalib_bayes_pfl.demo import TARGET_CATEGORIES, run

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).parents[2] / "configs"


def test_demo_runs_offline(tmp_path: Path) -> None:
    """The demo generates data, trains, tests and writes metrics, weights and visualisations."""
    results = run(tmp_path, epochs=2)
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(results)
    assert (tmp_path / "bayes_pfl_head.pt").is_file()
    pictures = list((tmp_path / "results").rglob("images/*/*/*.png"))  # images/<category>/<defect>/<file>
    assert {picture.parts[-3] for picture in pictures} == set(TARGET_CATEGORIES)


@pytest.mark.parametrize(
    "name",
    [
        "bayes_pfl.yaml",
        "train_visa_test_mvtec.yaml",
        "train_mvtec_test_visa.yaml",
        "human_free_visa_test_mvtec.yaml",
        "demo.yaml",
    ],
)
def test_configs_name_our_classes(name: str) -> None:
    """Every config uses the full class path, which the stock anomalib CLI accepts, and only real arguments."""
    import anomalib_bayes_pfl

    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_bayes_pfl.BayesPFL"
    for section in ("model", "data"):
        if section in config:
            cls = getattr(anomalib_bayes_pfl, config[section]["class_path"].rsplit(".", 1)[1])
            assert set(config[section].get("init_args", {})) <= set(inspect.signature(cls).parameters)


@pytest.mark.parametrize(
    "name", ["train_visa_test_mvtec.yaml", "train_mvtec_test_visa.yaml", "human_free_visa_test_mvtec.yaml"]
)
def test_paper_protocol_configs_train_with_exact_gelu(name: str) -> None:
    """The official code trains with exact GELU on the OpenAI weights; "auto" would follow them to QuickGELU."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["init_args"]["activation"] == "gelu"


def test_anomalib_cli_trains_the_demo_config(tmp_path: Path, synthetic_root: Path) -> None:
    """`anomalib train -c configs/demo.yaml` trains and tests through the stock CLI."""
    completed = run_anomalib(
        "train",
        "-c",
        str(CONFIGS / "demo.yaml"),
        "--data.init_args.source_root",
        str(synthetic_root),
        "--data.init_args.target_root",
        str(synthetic_root),
        "--trainer.max_epochs",
        "1",
        "--model.init_args.stage1_max_epochs",
        "1",
        "--default_root_dir",
        str(tmp_path),
    )
    assert "image_AUROC" in completed.stdout + completed.stderr
    assert list(tmp_path.rglob("*.ckpt"))
