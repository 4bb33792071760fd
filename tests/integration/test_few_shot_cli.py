"""The few-shot user's path through the stock CLI: train (references, thresholds at a false-alarm rate), then predict.

`anomalib train --model BayesPFL --model.prompt_weights HEAD --model.k_shot 2 --model.false_alarm_rate 0.25 --data
MVTecAD ...` must write a checkpoint holding the memory and the calibrated thresholds, and `anomalib predict
--ckpt_path` must give labels for unlabelled images and pictures with the uncertainty panel.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from cli_runs import model_arguments, run_anomalib
from PIL import Image

from anomalib_bayes_pfl import generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS
from anomalib_bayes_pfl.torch_model import BayesPFLModel

pytestmark = pytest.mark.integration


def _model_arguments(head: Path) -> list[str]:
    few_shot = {"prompt_weights": str(head), "k_shot": 2, "false_alarm_rate": 0.25, "seed": 0}
    return model_arguments(TINY_MODEL_ARGS | few_shot)


def test_train_then_predict_with_labels_and_uncertainty(tmp_path: Path) -> None:
    """Labels at the user's rate from normal validation images only; memory and thresholds survive the checkpoint."""
    sizes = {"num_train": 12, "num_test_normal": 3, "num_test_anomalous": 2}
    data = generate_synthetic_dataset(tmp_path / "data", ["ring"], **sizes)
    torch.manual_seed(0)
    head = save_prompt_weights(BayesPFLModel(**TINY_MODEL_ARGS), tmp_path / "head.pt")
    loading = ["--data.num_workers", "0", "--trainer.accelerator", "cpu"]
    run_anomalib(
        "train", *_model_arguments(head), "--data", "MVTecAD", "--data.root", str(data), "--data.category", "ring",
        "--data.val_split_mode", "from_train", "--data.val_split_ratio", "0.5", "--data.seed", "0", *loading,
        "--default_root_dir", str(tmp_path / "train"),
    )  # fmt: skip
    (checkpoint,) = (tmp_path / "train").rglob("model.ckpt")
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert stored["model.few_shot.memory"].shape[1] == 2 * 8 * 8  # k = 2 references of 8 x 8 patches per block
    assert torch.isfinite(stored["post_processor._image_threshold"])

    unlabelled = data / "ring" / "test" / "good"
    run_anomalib(
        "predict", *_model_arguments(head), "--ckpt_path", str(checkpoint), "--data", str(unlabelled),
        "--trainer.accelerator", "cpu", "--default_root_dir", str(tmp_path / "predict"),
    )  # fmt: skip
    (table,) = (tmp_path / "predict").rglob("predictions.csv")
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == len(list(unlabelled.iterdir()))
    assert {row["label"] for row in rows} <= {"normal", "anomalous"}
    pictures = sorted((tmp_path / "predict").rglob("*.png"))
    assert len(pictures) == len(rows)
    # anomalib's predict panels (image, anomaly map overlay, predicted mask overlay; 256 px each), then ours
    assert Image.open(pictures[0]).width == (3 + 1) * 256
