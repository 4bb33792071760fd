"""Learning test: a few dozen optimisation steps on generated data lower the loss and separate held-out images.

Measured on 2 cores with the tiny random-weight CLIP (seed 0, 60 steps of batch 8, lr 1e-3 for the encoders, RCA
and mapping, the reference's other groups and betas): see the bars below. Random CLIP weights carry no semantics,
so the bar checks that the method learns from masks, not how well it transfers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL, generate_synthetic_dataset
from anomalib_bayes_pfl.data import category_from_path
from anomalib_bayes_pfl.lightning_model import build_optimizers

pytestmark = pytest.mark.integration

STEPS = 80
PIXEL_AUROC_BAR = 0.65
"""Measured 0.70 after 80 steps (0.63 before). Held-out *image* AUROC stayed at chance (0.50) with the random
tiny CLIP; it is reported, not asserted: see the closing note of the issue."""


def _batches(datamodule: AuxiliaryTrain, split: str) -> list:
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    return list(loader)


def _held_out_auroc(model: BayesPFL, batches: list) -> tuple[float, float]:
    """Image and pixel AUROC on held-out images of the training categories."""
    model.model.eval()
    scores, labels, maps, masks = [], [], [], []
    with torch.no_grad():
        for batch in batches:
            images = model.pre_processor.transform(batch.image)
            names = [category_from_path(path) for path in batch.image_path]
            output = model.model(images, names)
            scores.append(output.pred_score)
            labels.append(batch.gt_label)
            maps.append(output.anomaly_map.flatten())
            masks.append(batch.gt_mask.flatten())
    model.model.train()
    image = BinaryAUROC()(torch.cat(scores), torch.cat(labels).int()).item()
    pixel = BinaryAUROC()(torch.cat(maps), torch.cat(masks).int()).item()
    return image, pixel


def test_training_lowers_loss_and_separates_held_out_images(tmp_path: Path, tiny_kwargs: dict) -> None:
    """Loss falls; held-out pixel AUROC rises above its starting value and the measured bar."""
    torch.manual_seed(0)
    categories = ["disc", "square", "stripes", "checker"]
    root = generate_synthetic_dataset(tmp_path, categories, num_train=1, num_test_normal=16, num_test_anomalous=24)
    datamodule = AuxiliaryTrain(
        root, categories, train_batch_size=8, eval_batch_size=32, num_workers=0, val_ratio=0.25, seed=0
    )
    datamodule.setup()
    model = BayesPFL(**(tiny_kwargs | {"score_alpha": 0.0}), lr=3e-3)
    hparams = model.hparams
    optimizer, _ = build_optimizers(
        model.model, hparams.lr, hparams.lr_prompt, hparams.lr_flow, hparams.lr_temperature, hparams.betas
    )
    train, held_out = _batches(datamodule, "train"), _batches(datamodule, "val")
    before = _held_out_auroc(model, held_out)
    model.model.train()
    losses = []
    for step in range(STEPS):
        batch = train[step % len(train)]
        images = model.pre_processor.transform(batch.image)
        names = [category_from_path(path) for path in batch.image_path]
        outputs = model.model(images, names)
        loss = model.loss(outputs, batch.gt_label, batch.gt_mask, step % 3, 1, model.model.backbone.grid_size)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = _held_out_auroc(model, held_out)
    print(f"held-out (image, pixel) AUROC before {before}, after {after}; loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    assert sum(losses[-10:]) < sum(losses[:10])
    assert after[1] >= PIXEL_AUROC_BAR
    assert after[1] > before[1]
