"""Durable training checkpoints: last.ckpt every epoch, resuming in the same folder, atomic writes, head only."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer, seed_everything

from anomalib_bayes_pfl import BayesPFL, checkpointing
from anomalib_bayes_pfl.checkpointing import BACKBONE_PREFIX, CLIP_KEY, atomic_save
from anomalib_bayes_pfl.demo import demo_datamodule

pytestmark = pytest.mark.integration

EPOCHS = 4


class DecliningValidation(BayesPFL):
    """BayesPFL whose selection metric falls every epoch: only epoch 0 is ever the best."""

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val_selection", 1.0 / (self.current_epoch + 1))


class Killed(Exception):  # noqa: N818 - stands for a killed process
    """The machine went down."""


class KillAtEpochStart(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed


class Epochs(Callback):
    """Records the epochs trained."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        del pl_module
        self.started.append(trainer.current_epoch)


class LastEveryEpoch(Callback):
    """At each epoch's start, reads which epoch last.ckpt holds."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        del pl_module
        if trainer.current_epoch > 0:
            self.epochs.append(torch.load(trainer.checkpoint_callback.last_model_path, weights_only=True)["epoch"])


def _fit(root: Path, kwargs: dict, data: Path, *callbacks: Callback, ckpt_path: Path | None = None) -> BayesPFL:
    seed_everything(0)
    model = DecliningValidation(**kwargs, stage1_max_epochs=2)
    engine = Engine(
        max_epochs=EPOCHS, default_root_dir=root, logger=False, enable_progress_bar=False, callbacks=list(callbacks)
    )
    engine.fit(model, datamodule=demo_datamodule(data), ckpt_path=ckpt_path)
    return model


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_last_is_every_epochs_state_and_resume_continues_the_run(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict, tiny_clip_weights: str
) -> None:
    """last.ckpt is rewritten at every epoch's end although only epoch 0 is the best; a run killed after epoch 1
    resumes at epoch 2 in the same checkpoint folder and ends with the uninterrupted run's best and last files."""
    kwargs = tiny_kwargs | {"pretrained": tiny_clip_weights}
    watch = LastEveryEpoch()
    _fit(tmp_path / "whole", kwargs, synthetic_root, watch)
    assert watch.epochs == [0, 1, 2]  # before: [0, 0, 0] (last.ckpt only followed a new best)
    whole = next((tmp_path / "whole").rglob("weights/lightning"))
    assert torch.load(whole / "last.ckpt", weights_only=True)["epoch"] == EPOCHS - 1
    with pytest.raises(Killed):
        _fit(tmp_path / "cut", kwargs, synthetic_root, KillAtEpochStart(2))
    folder = next((tmp_path / "cut").rglob("weights/lightning"))
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 1
    epochs = Epochs()
    _fit(tmp_path / "cut", kwargs, synthetic_root, epochs, ckpt_path=folder / "last.ckpt")
    assert epochs.started == [2, 3]
    assert sorted(path.name for path in folder.iterdir()) == ["last.ckpt", "model.ckpt"]
    for name in ("model.ckpt", "last.ckpt"):
        expected, actual = _tensors(whole / name), _tensors(folder / name)
        assert expected.keys() == actual.keys()
        same = [torch.equal(a, actual[k]) if torch.is_tensor(a) else a == actual[k] for k, a in expected.items()]
        assert all(same), name
    assert torch.load(folder / "model.ckpt", weights_only=True)["epoch"] == 0


def test_checkpoints_hold_the_head_not_the_frozen_clip(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict, tiny_clip_weights: str
) -> None:
    """With CLIP from a file, checkpoints leave it out and record its identity; loading rebuilds it from the file and
    refuses other CLIP weights. With random CLIP weights (nothing to rebuild from) the CLIP is kept."""
    kwargs = tiny_kwargs | {"pretrained": tiny_clip_weights}
    model = _fit(tmp_path / "run", kwargs, synthetic_root)
    last = next((tmp_path / "run").rglob("last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    assert not [key for key in checkpoint["state_dict"] if key.startswith(BACKBONE_PREFIX)]
    assert checkpoint[CLIP_KEY]["stored"] is False and len(checkpoint[CLIP_KEY]["identity"]) == 64
    reloaded = BayesPFL.load_from_checkpoint(last, weights_only=True).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded.model(images).pred_score, model.eval().model(images).pred_score)
    other = tmp_path / "other_clip.pt"
    state = torch.load(tiny_clip_weights, weights_only=True)
    torch.save({key: value + 0.01 if key == "text_projection" else value for key, value in state.items()}, other)
    with pytest.raises(ValueError, match="trained on other CLIP weights"):
        BayesPFL.load_from_checkpoint(last, weights_only=True, pretrained=str(other))
    seed_everything(0)
    random_clip = BayesPFL(**tiny_kwargs)
    saved: dict = {"state_dict": {f"model.{key}": value for key, value in random_clip.model.state_dict().items()}}
    checkpointing.drop_frozen_clip(saved, random_clip.model.backbone, dict(random_clip.hparams))
    assert saved[CLIP_KEY]["stored"] is True
    assert any(key.startswith(BACKBONE_PREFIX) for key in saved["state_dict"])


WRITER = textwrap.dedent(
    """
    import sys, torch
    from anomalib_bayes_pfl.checkpointing import atomic_save
    target = sys.argv[1]
    step = 0
    while True:
        step += 1
        atomic_save({"step": step, "payload": torch.full((4_000_000,), float(step))}, target)
        print(step, flush=True)
    """
)


@pytest.mark.timeout(120)
def test_a_kill_during_a_write_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """A writer killed (SIGKILL) at random moments never leaves a truncated file; the next save removes orphans."""
    target = tmp_path / "last.ckpt"
    for delay in (0.6, 0.9, 1.3):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "1" or target.exists()  # a first complete write
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoint = torch.load(target, weights_only=True)
        assert torch.all(checkpoint["payload"] == float(checkpoint["step"]))
    atomic_save({"step": 0}, target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_checkpoint_callback_writes_atomically(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict, tiny_clip_weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every checkpoint of a training run goes through atomic_save, next to its destination."""
    written = []
    original = checkpointing.atomic_save

    def recording(checkpoint: dict, path: str) -> None:
        written.append(Path(path).name)
        original(checkpoint, path)

    monkeypatch.setattr(checkpointing, "atomic_save", recording)
    _fit(tmp_path, tiny_kwargs | {"pretrained": tiny_clip_weights}, synthetic_root)
    assert {"model.ckpt", "last.ckpt"} <= set(written)
