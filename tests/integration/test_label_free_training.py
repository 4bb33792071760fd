"""Human-free training on normal images only, with anomalib's stock ``Folder`` datamodule.

The validation split then holds normal images only. Bayes-PFL validates on those images and on one synthetic
anomaly of each (seeded by the image's path), so the checkpoint selection, the stage switch and the thresholds
have anomalies to work with. Without any validation split, training refuses to start and names the fix.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from anomalib.data import Folder, ImageBatch
from cli_runs import run_anomalib
from engines import cpu_engine

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.lightning_model import SELECTION_METRIC, STAGE_METRIC
from anomalib_bayes_pfl.validation import with_synthetic_anomalies

pytestmark = pytest.mark.integration


def _normal_only(root: Path, **overrides: object) -> Folder:
    """The normal training images of one generated category, with no anomalous image anywhere."""
    arguments = {
        "name": "disc",
        "root": root / "disc",
        "normal_dir": "train/good",
        "train_batch_size": 4,
        "eval_batch_size": 4,
        "num_workers": 0,
        "val_split_mode": "from_train",
        "val_split_ratio": 0.25,
    }
    return Folder(**(arguments | overrides))


def test_normal_only_folder_trains_end_to_end(synthetic_root: Path, tiny_kwargs: dict, tmp_path: Path) -> None:
    """Validation has anomalies (pixel AP): selection, stage switch, best checkpoint and thresholds all work."""
    model = BayesPFL(**tiny_kwargs, synthetic_anomalies=True, stage1_max_epochs=1)
    engine = cpu_engine(tmp_path, max_epochs=2)
    engine.fit(model, datamodule=_normal_only(synthetic_root))
    metrics = engine.trainer.callback_metrics
    assert math.isfinite(float(metrics[SELECTION_METRIC]))
    assert math.isfinite(float(metrics[STAGE_METRIC]))  # pixel AP: validation had anomalies with masks
    assert model.model.stage == 2
    assert Path(engine.trainer.checkpoint_callback.best_model_path).name == "model.ckpt"
    assert torch.isfinite(model.post_processor.normalized_image_threshold)


def test_synthetic_validation_is_fixed_per_image(synthetic_root: Path, tiny_kwargs: dict) -> None:
    """Each normal image is kept and paired with one anomaly, the same at every call (every epoch)."""
    model = BayesPFL(**tiny_kwargs, synthetic_anomalies=True)
    datamodule = _normal_only(synthetic_root)
    datamodule.setup()
    batch = next(iter(datamodule.val_dataloader()))
    batch.image = model.pre_processor.transform(batch.image)
    first, second = (
        with_synthetic_anomalies(copy.deepcopy(batch), model.synthesis, model.model.backbone, 2) for _ in range(2)
    )
    count = len(batch.image)
    assert isinstance(first, ImageBatch)
    assert torch.equal(first.image, second.image)
    assert torch.equal(first.image[:count], batch.image)
    assert first.gt_label.tolist() == [False] * count + [True] * count
    assert not first.gt_mask[:count].any()
    assert all(mask.any() for mask in first.gt_mask[count:])
    assert first.image_path == batch.image_path * 2


def test_no_validation_split_is_refused_with_the_fix(synthetic_root: Path, tiny_kwargs: dict, tmp_path: Path) -> None:
    """``val_split_mode='none'`` stops before training with a message naming the way out (not an AttributeError)."""
    model = BayesPFL(**tiny_kwargs, synthetic_anomalies=True)
    with pytest.raises(ValueError, match="val_split_mode"):
        cpu_engine(tmp_path, max_epochs=1).fit(model, datamodule=_normal_only(synthetic_root, val_split_mode="none"))


def test_anomalib_cli_trains_on_a_normal_only_folder(synthetic_root: Path, tmp_path: Path) -> None:
    """The issue's command: `anomalib train --model BayesPFL --model.synthetic_anomalies true --data Folder ...`."""
    run_anomalib(
        "train",
        "--model",
        "BayesPFL",
        "--model.backbone",
        "bayes-pfl-tiny",
        "--model.pretrained",
        "null",
        "--model.image_size",
        "64",
        "--model.feature_layers",
        "[1, 2, 3, 4]",
        "--model.num_samples",
        "2",
        "--model.synthetic_anomalies",
        "true",
        "--model.stage1_max_epochs",
        "1",
        "--data",
        "Folder",
        "--data.name",
        "disc",
        "--data.root",
        str(synthetic_root / "disc"),
        "--data.normal_dir",
        "train/good",
        "--data.num_workers",
        "0",
        "--data.val_split_mode",
        "from_train",
        "--data.val_split_ratio",
        "0.25",
        "--trainer.max_epochs",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--default_root_dir",
        str(tmp_path),
    )
    assert list(tmp_path.rglob("model.ckpt"))
