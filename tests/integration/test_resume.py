"""An interrupted training run resumes from last.ckpt and ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl import BayesPFL, generate_synthetic_dataset
from anomalib_bayes_pfl.checkpoints import head_state_dict
from anomalib_bayes_pfl.data import AuxiliaryTrain

pytestmark = pytest.mark.integration

EPOCHS = 3
STAGE1_EPOCHS = 2
"""Stage 1 for epochs 0-1, stage 2 in epoch 2."""


class Interrupted(Exception):  # noqa: N818 - stands for a killed process, not an error
    """The machine went down."""


class InterruptAt(Callback):
    """Stops the run in the middle of ``epoch`` (after its first step), as a crash would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise Interrupted


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    counts = {"num_train": 1, "num_test_normal": 3, "num_test_anomalous": 5}
    return generate_synthetic_dataset(tmp_path_factory.mktemp("resume"), ("disc", "stripes", "ring"), 64, **counts)


def _model(kwargs: dict) -> BayesPFL:
    seed_everything(0)
    return BayesPFL(**kwargs, stage1_max_epochs=STAGE1_EPOCHS, lr=1e-3)


def _fit(model: BayesPFL, root: Path, data_root: Path, *callbacks: Callback, ckpt_path: Path | None = None) -> None:
    """Tiny training run of EPOCHS epochs; the model adds its own step seeding (nothing extra is passed here)."""
    warnings.filterwarnings("ignore")
    datamodule = AuxiliaryTrain(
        data_root, ["disc", "stripes"], target_root=data_root, target_categories=["ring"], train_batch_size=4,
        eval_batch_size=8, num_workers=0, val_ratio=0.25, seed=0,
    )  # fmt: skip
    engine = Engine(
        max_epochs=EPOCHS, default_root_dir=root, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, callbacks=list(callbacks),
    )  # fmt: skip
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, data_root: Path, tiny_kwargs: dict) -> BayesPFL:
    model = _model(tiny_kwargs)
    _fit(model, tmp_path_factory.mktemp("full"), data_root)
    return model


@pytest.mark.parametrize(("epoch", "stage"), [(1, 1), (2, 2)], ids=["in-stage-1", "in-stage-2"])
def test_resume_matches_uninterrupted(
    uninterrupted: BayesPFL, data_root: Path, tiny_kwargs: dict, tmp_path: Path, epoch: int, stage: int
) -> None:
    """Killed mid-epoch, resumed from last.ckpt: same final head, bitwise; the stage switch happens after resuming."""
    cut = _model(tiny_kwargs)
    with pytest.raises(Interrupted):
        _fit(cut, tmp_path / "cut", data_root, InterruptAt(epoch))
    assert cut.model.stage == stage
    resumed = _model(tiny_kwargs)
    _fit(resumed, tmp_path / "resumed", data_root, ckpt_path=next((tmp_path / "cut").rglob("last.ckpt")))
    assert resumed.model.stage == uninterrupted.model.stage == 2
    expected, actual = head_state_dict(uninterrupted.model), head_state_dict(resumed.model)
    differing = [
        key for key, value in expected.items() if torch.is_tensor(value) and not torch.equal(value, actual[key])
    ]
    assert not differing
