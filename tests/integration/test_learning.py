"""Learning test: training on generated data lowers the loss and separates held-out images of the training categories.

It trains as a user does, through ``Engine.fit``: the model's own training step, pair choice, warm-up + cosine
schedule and stage switch (at an epoch cap). Setting: the tiny random-weight CLIP at 128 px (a 16 x 16 patch grid;
the 64 px images are upsampled by the pre-processor), 40 stage-1 epochs then 7 stage-2 epochs of 15 batches of 8,
learning rates twice the paper's for encoders, RCA and mappings (2e-3), the prompt bank and the flows (4e-3 each)
and the temperatures (2e-2): the cosine decay to zero over 705 steps would otherwise leave this short run
under-trained. Measured on 2 cores (about 100 s): held-out image AUROC 0.48 -> 0.71 and pixel AUROC 0.45 -> 0.76
with seed 0; seeds 1 and 2 gave 0.69 / 0.69 and 0.73 / 0.68 (before training: 0.48-0.59 / 0.41-0.48). Random CLIP
weights carry no semantics, so the bars check that the method learns from masks, not how well it transfers to unseen
categories.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer, seed_everything
from torchmetrics.classification import BinaryAUROC

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL, generate_synthetic_dataset
from anomalib_bayes_pfl.data import category_from_path

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


STAGE1_EPOCHS, STAGE2_EPOCHS = 40, 7
"""15 steps of batch 8 per epoch: 600 stage-1 steps, then 105 stage-2 steps."""
VALIDATE_EVERY = 10
"""Source validation (checkpoint selection) every 10 epochs; the stage switch here is the epoch cap."""
IMAGE_SIZE = 128
IMAGE_AUROC_BAR = 0.64
"""Held-out image AUROC after training; measured 0.69-0.73 over seeds 0-2 (chance: 0.5)."""
PIXEL_AUROC_BAR = 0.64
"""Held-out pixel AUROC after training; measured 0.68-0.76 over seeds 0-2."""
RATES = {"lr": 2e-3, "lr_prompt": 4e-3, "lr_flow": 4e-3, "lr_temperature": 2e-2}
CATEGORIES = ["disc", "square", "stripes", "checker"]


def _forward(model: BayesPFL, batch: object) -> object:
    """Run the torch model on a raw batch, with each image's category as its class name."""
    names = [category_from_path(path) for path in batch.image_path]
    return model.model(model.pre_processor.transform(batch.image), names)


def _held_out_auroc(model: BayesPFL, batches: list) -> tuple[float, float]:
    """Image and pixel AUROC on held-out images of the training categories (maps at the mask size)."""
    model.model.eval()
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for batch in batches:
            output = _forward(model, batch)
            anomaly_map = F.interpolate(output.anomaly_map.unsqueeze(1), size=batch.gt_mask.shape[-2:], mode="bilinear")
            scores.append(output.pred_score)
            labels.append(batch.gt_label)
            maps.append(anomaly_map.flatten())
            masks.append(batch.gt_mask.flatten())
    model.model.train()
    image = BinaryAUROC()(torch.cat(scores), torch.cat(labels).int()).item()
    pixel = BinaryAUROC()(torch.cat(maps), torch.cat(masks).int()).item()
    return image, pixel


class LossRecorder(Callback):
    """Records the loss of every training step, as the model logged it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: BayesPFL, outputs: object, *args: object) -> None:
        del pl_module, args
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def test_training_lowers_loss_and_separates_held_out_images(tmp_path: Path, tiny_kwargs: dict) -> None:
    """Loss falls; held-out image and pixel AUROC rise well above chance (the real training step and schedule)."""
    seed_everything(0)
    root = generate_synthetic_dataset(tmp_path, CATEGORIES, num_train=1, num_test_normal=16, num_test_anomalous=24)
    datamodule = AuxiliaryTrain(
        root, CATEGORIES, train_batch_size=8, eval_batch_size=32, num_workers=0, val_ratio=0.25, seed=0
    )
    datamodule.setup()
    model = BayesPFL(**(tiny_kwargs | {"image_size": IMAGE_SIZE}), **RATES, stage1_max_epochs=STAGE1_EPOCHS)
    held_out = list(datamodule.val_dataloader())
    before = _held_out_auroc(model, held_out)
    recorder = LossRecorder()
    engine = Engine(
        max_epochs=STAGE1_EPOCHS + STAGE2_EPOCHS, default_root_dir=tmp_path / "run", logger=False,
        enable_progress_bar=False, callbacks=[recorder], check_val_every_n_epoch=VALIDATE_EVERY,
    )  # fmt: skip
    engine.fit(model, datamodule=datamodule)
    assert model.model.stage == 2
    after = _held_out_auroc(model, held_out)
    losses, per_epoch = recorder.losses, len(datamodule.train_dataloader())
    stage1_end = STAGE1_EPOCHS * per_epoch
    print(f"held-out (image, pixel) AUROC before {before}, after {after}; {len(losses)} steps")
    assert sum(losses[stage1_end - 50 : stage1_end]) < sum(losses[:50])
    assert after[0] >= IMAGE_AUROC_BAR
    assert after[1] >= PIXEL_AUROC_BAR
