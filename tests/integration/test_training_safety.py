"""Training safety and schedule under Lightning: the stage-2 early stop, no training on non-finite losses, training
masks binarised at half intensity, seeding without Lightning's seed, the test after a resumed fit, and the exported
verdict on non-finite images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from cli_runs import run_anomalib
from engines import cpu_engine
from lightning.pytorch import Callback, Trainer, seed_everything
from PIL import Image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data.auxiliary import read_training_mask
from anomalib_bayes_pfl.demo import demo_datamodule

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).parents[2] / "configs" / "demo.yaml"


class DecliningImageAP(Callback):
    """Replaces the source image AP by one that falls every epoch (runs before the model's end-of-epoch hook)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        del pl_module
        self.epochs.append(trainer.current_epoch)
        trainer.callback_metrics["val_image_AUPR"] = torch.tensor(1.0 / (trainer.current_epoch + 1))


class DecliningPixelAP(Callback):
    """After each validation, a source pixel AP lower than the last; records the stage at each epoch's end."""

    def __init__(self) -> None:
        self.validated: set[int] = set()
        self.stages: list[int] = []

    def on_validation_end(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        if not trainer.sanity_checking:
            self.validated.add(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        if trainer.current_epoch in self.validated:
            trainer.callback_metrics["val_pixel_AUPR"] = torch.tensor(1.0 / (trainer.current_epoch + 1))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        if trainer.current_epoch:
            self.stages.append(pl_module.model.stage)


def test_epochs_without_validation_do_not_count_for_the_patience(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict
) -> None:
    """Validating every second epoch (1, 3, 5) with falling pixel AP and patience 2: the switch comes after the
    second validation without gain (epoch 5), not at epoch 4, where Lightning still shows epoch 3's value."""
    seed_everything(0)
    model = BayesPFL(**tiny_kwargs, stage_patience=2)
    watch = DecliningPixelAP()
    cpu_engine(tmp_path, watch, max_epochs=7, check_val_every_n_epoch=2).fit(
        model, datamodule=demo_datamodule(synthetic_root)
    )
    assert watch.validated == {1, 3, 5}
    assert watch.stages == [1, 1, 1, 1, 1, 2]  # stage at the start of epochs 1..6; before: [1, 1, 1, 1, 2, 2]


def test_stage_two_stops_training_after_patience_and_still_checkpoints_the_last_epoch(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict
) -> None:
    """Epoch 0 ends stage 1 (cap), epoch 1 sets stage 2's best image AP, epoch 2 falls: with patience 1 the run
    stops there (of 6 epochs), through ``trainer.should_stop``, and last.ckpt holds epoch 2."""
    seed_everything(0)
    model = BayesPFL(**tiny_kwargs, stage1_max_epochs=1, stage_patience=1)
    watch = DecliningImageAP()
    cpu_engine(tmp_path, watch, max_epochs=6).fit(model, datamodule=demo_datamodule(synthetic_root))
    assert watch.epochs == [0, 1, 2]  # before: [0, 1, 2, 3, 4, 5]
    last = next(tmp_path.rglob("weights/lightning/last.ckpt"))
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_a_non_finite_loss_stops_training_before_anything_is_saved(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict
) -> None:
    """``focal_gamma=nan`` makes the first loss NaN: training stops there with an error naming the loss terms and
    the step, before an optimiser step, and no checkpoint is written (before: 57 non-finite tensors saved)."""
    seed_everything(0)
    model = BayesPFL(**tiny_kwargs, focal_gamma=float("nan"))
    before = {name: value.clone() for name, value in model.model.state_dict().items() if torch.is_tensor(value)}
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at step 0 .*seg"):
        cpu_engine(tmp_path, max_epochs=2).fit(model, datamodule=demo_datamodule(synthetic_root))
    assert [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix in {".ckpt", ".pt"}] == []
    after = model.model.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in before.items())


def _target_share(root: Path) -> float:
    """Share of anomalous pixels over the anomalous training images of the source categories."""
    datamodule = demo_datamodule(root)
    datamodule.setup()
    data = datamodule.train_data
    masks = [data[index].gt_mask for index in range(len(data)) if data.samples.label_index[index] == 1]
    return float(torch.stack([mask.float().mean() for mask in masks]).mean())


def test_masks_with_faint_background_are_binarised_at_half_intensity(tmp_path: Path, synthetic_root: Path) -> None:
    """Masks saved with a faint non-zero background (JPEG-like, value 3 of 255) give the targets of the clean
    masks: anomalib's reader keeps every non-zero pixel (before: share 1.000 instead of the clean share)."""
    root = Path(shutil.copytree(synthetic_root, tmp_path / "data"))
    clean = _target_share(root)
    for mask_path in root.glob("*/ground_truth/*/*.png"):
        mask = np.asarray(Image.open(mask_path).convert("L"))
        Image.fromarray(np.maximum(mask, 3)).save(mask_path)
    assert 0.0 < clean < 0.5
    assert _target_share(root) == pytest.approx(clean)


@pytest.mark.parametrize("brightest", [1, 2, 127])
def test_class_id_masks_are_refused_not_read_empty(tmp_path: Path, brightest: int) -> None:
    """A mask marking anomalies below half intensity (class ids, 0/1 masks) would give an anomalous image an empty
    target: it is refused, naming the file and the fix."""
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 2:5] = brightest
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    with pytest.raises(ValueError, match=r"mask\.png.*multiply them by 255"):
        read_training_mask(path)


class Killed(Exception):  # noqa: N818 - stands for a killed process
    """The machine went down."""


class KillAtEpoch(Callback):
    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        del pl_module
        if trainer.current_epoch == 1:
            raise Killed


def _train(root: Path, data: Path, kwargs: dict, *callbacks: Callback, ckpt_path: Path | None = None) -> dict:
    """``Engine.train`` over 3 epochs from seed 0; the test metrics it reports."""
    seed_everything(0)
    model = BayesPFL(**kwargs, stage1_max_epochs=1, lr=1e-3)
    (metrics,) = cpu_engine(root, *callbacks, max_epochs=3).train(
        model, datamodule=demo_datamodule(data), ckpt_path=ckpt_path
    )
    return metrics


def test_engine_train_resumed_tests_what_an_uninterrupted_run_tests(
    tmp_path: Path, synthetic_root: Path, tiny_kwargs: dict
) -> None:
    """``Engine.train(ckpt_path=last.ckpt)`` passes the resume file to its test as well; the test must score the
    weights this fit ended with, as the uninterrupted run's test does, not the old checkpoint's."""
    whole = _train(tmp_path / "whole", synthetic_root, tiny_kwargs)
    with pytest.raises(Killed):
        _train(tmp_path / "cut", synthetic_root, tiny_kwargs, KillAtEpoch())
    # a copy: the resumed run rewrites the last.ckpt it resumed from, which hid the problem for that one file
    backup = Path(shutil.copy(next((tmp_path / "cut").rglob("weights/lightning/last.ckpt")), tmp_path / "kept.ckpt"))
    test_data = demo_datamodule(synthetic_root)
    (old,) = cpu_engine(tmp_path / "old", max_epochs=1).test(
        BayesPFL(**tiny_kwargs), datamodule=test_data, ckpt_path=backup
    )
    resumed = _train(tmp_path / "resumed", synthetic_root, tiny_kwargs, ckpt_path=backup)
    assert whole != pytest.approx(old)
    assert resumed == pytest.approx(whole)  # before: resumed == old (the metrics of the checkpoint resumed from)


def _cli_train(root: Path, data: Path) -> dict[str, torch.Tensor]:
    """One epoch of ``anomalib train -c configs/demo.yaml`` in a fresh process; the trained head of last.ckpt."""
    run_anomalib(
        "train", "-c", str(DEMO_CONFIG), "--data.init_args.source_root", str(data),
        "--data.init_args.target_root", str(data), "--trainer.max_epochs", "1",
        "--model.init_args.stage1_max_epochs", "1", "--default_root_dir", str(root),
    )  # fmt: skip
    state = torch.load(next(root.rglob("weights/lightning/last.ckpt")), weights_only=True)["state_dict"]
    return {key: value for key, value in state.items() if key.startswith("model.") and "backbone" not in key}


def test_identical_cli_runs_train_identical_models(tmp_path: Path, synthetic_root: Path) -> None:
    """anomalib's CLI never calls ``seed_everything`` and torch seeds itself from the OS, so the seed comes from the
    model (``--model.seed``, default: 0). Before: each run initialised and trained another head."""
    first, second = (_cli_train(tmp_path / name, synthetic_root) for name in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(torch.equal(v, second[k]) if torch.is_tensor(v) else v == second[k] for k, v in first.items())


def test_the_head_is_a_function_of_the_seed(monkeypatch: pytest.MonkeyPatch, tiny_kwargs: dict) -> None:
    """Without Lightning's seed the head comes from ``seed`` (default 0) whatever torch's global generator holds,
    and building a model leaves that generator as it was."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    heads = []
    for global_seed, seed in ((1, None), (2, None), (3, 0), (4, 5)):
        torch.manual_seed(global_seed)
        expected_next = torch.rand(1, generator=torch.Generator().manual_seed(global_seed))
        heads.append(BayesPFL(**tiny_kwargs, seed=seed).model.prompt_bank.prompt_context.detach())
        assert torch.equal(torch.rand(1), expected_next)
    assert torch.equal(heads[0], heads[1]) and torch.equal(heads[0], heads[2])
    assert not torch.equal(heads[0], heads[3])


def test_the_exported_model_labels_a_non_finite_image_anomalous(tmp_path: Path, tiny_kwargs: dict) -> None:
    """OpenVINO cannot raise: a NaN or Inf pixel gives score 1 and a full mask after anomalib's post-processing
    (before: score 0.0, labelled normal)."""
    from anomalib.deploy import ExportType, OpenVINOInferencer

    torch.manual_seed(0)
    model = BayesPFL(**tiny_kwargs).eval()
    for name, value in (("image_min", 0.0), ("image_max", 1.0), ("_image_threshold", 0.5)):
        for level in ("image", "pixel"):
            setattr(model.post_processor, name.replace("image", level), torch.tensor(value))
    exported = Engine(logger=False, default_root_dir=tmp_path).export(
        model, ExportType.OPENVINO, export_root=tmp_path, input_size=(64, 64)
    )
    inferencer = OpenVINOInferencer(exported, device="CPU")
    for value in (float("nan"), float("inf")):
        image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
        image[0, 3, 3] = value
        prediction = inferencer.predict(image)
        assert np.asarray(prediction.pred_label).all() and np.asarray(prediction.pred_mask).all()
        assert np.asarray(prediction.pred_score).item() == 1.0
