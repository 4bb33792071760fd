# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Label-free validation: held-out normal images, and a synthetic anomaly of each.

Bayes-PFL keeps its best checkpoint and ends stage 1 by validation APs (image and pixel), which need anomalous
images with masks. Human-free training (``synthetic_anomalies=True`` on normal images only, e.g. anomalib's
``Folder`` with just a ``normal_dir``) has none: its validation split is normal images, and those APs are undefined.

So when anomalies are synthesised and every validation image is normal, validation scores each held-out image
twice: as it is (normal), and with one synthetic anomaly drawn inside its object from a generator seeded by the
image's path (anomalous, with its mask). The anomalies are the same in every epoch and every process, so epochs
compare; selection then measures how well the model finds the kind of anomaly it trains on, on images it does not
train on. The post-processor's thresholds and normalisation come from the same images: label-free thresholds of the
training category. (anomalib's ``val_split_mode="synthetic"`` is the other way: it writes Perlin anomalies of
held-out images to disk, and validation then holds anomalies, so nothing is added here.)

Without any validation split (``val_split_mode="none"``) there is nothing to select by or to end stage 1 with:
training is refused before it starts, with the fix in the message.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import ImageBatch
from anomalib.data.utils import ValSplitMode
from lightning.pytorch import Callback, LightningModule, Trainer

from .backbone import ClipBackbone
from .synthesis import ObjectAttentionAnomalyGenerator


def image_seed(path: str | None, position: int) -> int:
    """Seed of an image's validation anomaly: a hash of its path, or its position in the batch without one.

    Example:
        >>> image_seed("disc/train/good/000.png", 0) == image_seed("disc/train/good/000.png", 5)
        True
    """
    return position if path is None else zlib.crc32(str(path).encode("utf-8", "surrogateescape"))


def _datasets(loaders: Any) -> list[Any]:  # noqa: ANN401 - Lightning gives a loader, a sequence or a mapping
    """The datasets behind Lightning's validation dataloaders (one loader, a list, or a dict of them)."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if not isinstance(loaders, Sequence):
        loaders = [loaders]
    return [getattr(loader, "dataset", None) for loader in loaders]


def lists_normal_images_only(samples: Any) -> bool:  # noqa: ANN401 - a pandas table, or anything else
    """Whether an anomalib dataset's ``samples`` table is there and labels no image anomalous."""
    return samples is not None and "label_index" in samples and not samples.label_index.any()


def holds_normal_images_only(trainer: Trainer) -> bool:
    """Whether the validation data is known to hold no anomalous image (anomalib datasets list their labels)."""
    tables = [getattr(dataset, "samples", None) for dataset in _datasets(trainer.val_dataloaders)]
    return bool(tables) and all(map(lists_normal_images_only, tables))


def with_synthetic_anomalies(
    batch: ImageBatch,
    synthesis: ObjectAttentionAnomalyGenerator,
    backbone: ClipBackbone,
    attention_layer: int,
) -> ImageBatch:
    """Extend the batch in place: its (pre-processed) normal images, then each again with its fixed anomaly.

    In place, because anomalib's evaluator reads the step's input batch and its post-processor the step's output.

    Args:
        batch (ImageBatch): Pre-processed validation batch of normal images.
        synthesis (ObjectAttentionAnomalyGenerator): The model's anomaly generator.
        backbone (ClipBackbone): The model's frozen CLIP (finds the object).
        attention_layer (int): 1-indexed block whose class-token attention finds the object.

    Returns:
        ImageBatch: ``2N`` images: the ``N`` originals (label 0, empty masks), then their anomalous versions.
    """
    paths = list(batch.image_path) if batch.image_path is not None else [None] * len(batch.image)
    seeds = [image_seed(path, position) for position, path in enumerate(paths)]
    images, labels, masks = synthesis.validation_images(batch.image, backbone, attention_layer, seeds)
    return batch.update(
        image=torch.cat([batch.image, images]),
        gt_label=torch.cat([torch.zeros_like(labels), labels]).bool(),
        gt_mask=torch.cat([torch.zeros_like(masks), masks]),
        image_path=None if batch.image_path is None else paths * 2,
        mask_path=None,
    )


def selection_value(values: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Mean of the validation APs that could be computed (a split without masks has no pixel AP); ``None`` if none.

    Example:
        >>> selection_value([torch.tensor(0.5), None, torch.tensor(float("nan"))])
        tensor(0.5000)
    """
    usable = [value.float() for value in values if value is not None and torch.isfinite(value).all()]
    return torch.stack(usable).mean() if usable else None


def check_validation_split(datamodule: object) -> None:
    """Refuse to train when the datamodule makes no validation split (anomalib's ``val_split_mode="none"``).

    Raises:
        ValueError: Naming the validation modes that work, labelled or not.
    """
    if getattr(datamodule, "val_split_mode", None) == ValSplitMode.NONE and not hasattr(datamodule, "val_data"):
        msg = (
            f"{type(datamodule).__name__}(val_split_mode='none') makes no validation split, but Bayes-PFL selects "
            "its checkpoint and ends stage 1 by validation. Use val_split_mode='from_train' (normal images only: "
            "with synthetic_anomalies=True they are validated with a synthetic anomaly each) or 'synthetic' "
            "(anomalib's Perlin anomalies), or a split with labelled anomalies ('from_test', 'from_dir')."
        )
        raise ValueError(msg)


class ValidationSplitCheck(Callback):
    """Runs :func:`check_validation_split` once the datamodule is set up, before training starts."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the datamodule of a ``fit`` that validates."""
        del pl_module
        if stage == "fit" and trainer.limit_val_batches != 0:
            check_validation_split(trainer.datamodule)
