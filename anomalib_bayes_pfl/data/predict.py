# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Predicting a folder of production images that may hold bad files: report them, skip them, score the rest.

``anomalib predict --data <folder>`` reads the folder with anomalib's ``PredictDataset``, which decodes each image
inside the dataloader: one corrupt, truncated or empty file stops the whole run, and 16-bit images are clipped.
:class:`SafePredictFolder` is a drop-in datamodule for the same job. It decodes every candidate once while it is
set up (decoding is cheap next to a CLIP forward pass), logs a warning naming each file it cannot use and why,
writes them to ``skipped_images.csv`` in the run folder (next to anomalib's ``images/``), and predicts the others.
Images are read by :func:`anomalib_bayes_pfl.images.read_rgb` (any PIL mode to RGB in ``[0, 1]``) and resized one
by one with the model's own ``Resize``, so a batch never mixes sizes and an image scores the same in any batch.

Example:
    ``anomalib predict --model BayesPFL --ckpt_path model.ckpt --data SafePredictFolder --data.path images/``

    >>> from anomalib_bayes_pfl.data import SafePredictFolder  # doctest: +SKIP
    >>> Engine().predict(model, datamodule=SafePredictFolder("images/"), ckpt_path="model.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from anomalib.data import ImageBatch, ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.utils.attrs import get_nested_attr
from lightning.pytorch.utilities.types import EVAL_DATALOADERS
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import Transform

from ..images import BadImageError, read_rgb

logger = logging.getLogger(__name__)

REPORT_NAME = "skipped_images.csv"
"""File, in the run folder, that lists the images a prediction run skipped and why."""


class SkippedImage(NamedTuple):
    """An image left out of a prediction run."""

    path: Path
    reason: str


def _candidates(path: Path) -> list[Path]:
    """The file itself, or every file with an image extension (any case) under the folder, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        msg = f"Nothing to predict: {path} is neither an image file nor a folder."
        raise FileNotFoundError(msg)
    files = sorted(file for file in path.rglob("*") if file.suffix.lower() in IMG_EXTENSIONS and not file.is_dir())
    if not files:
        msg = f"Found no image files in {path} (extensions, any case: {', '.join(IMG_EXTENSIONS)})."
        raise ValueError(msg)
    return files


def scan_images(path: str | Path) -> tuple[list[Path], list[SkippedImage]]:
    """Decode every image of ``path`` once; return the usable files and the skipped ones with their reasons.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it holds no image files, or none of them can be used.
    """
    usable, skipped = [], []
    for file in _candidates(Path(path)):
        try:
            read_rgb(file)
        except BadImageError as error:
            logger.warning("%s; skipping it.", error)
            skipped.append(SkippedImage(file, error.reason))
        else:
            usable.append(file)
    if not usable:
        reasons = "; ".join(f"{item.path.name}: {item.reason}" for item in skipped[:5])
        msg = f"None of the {len(skipped)} image files in {path} can be used ({reasons})."
        raise ValueError(msg)
    return usable, skipped


class SafePredictDataset(Dataset):
    """Unlabelled images of a folder (or one image file), checked when the dataset is built.

    Args:
        path (str | Path): Image file or folder (searched recursively).
        augmentations (Transform | None): Applied to each image after reading (the datamodule sets the model's
            ``Resize`` here). Defaults to ``None``.

    Attributes:
        image_paths (list[Path]): The usable images, sorted.
        skipped (list[SkippedImage]): The files left out, with the reason.
    """

    def __init__(self, path: str | Path, augmentations: Transform | None = None) -> None:
        super().__init__()
        self.image_paths, self.skipped = scan_images(path)
        self.augmentations = augmentations

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> ImageItem:
        path = self.image_paths[index]
        image = read_rgb(path)
        if self.augmentations is not None:
            image = self.augmentations(image)
        return ImageItem(image=image, image_path=str(path))

    @property
    def collate_fn(self) -> Callable[[list[ImageItem]], ImageBatch]:
        """Collation into an ``ImageBatch``, as anomalib's own datasets do."""
        return ImageBatch.collate


class SafePredictFolder(AnomalibDataModule):
    """Prediction datamodule that skips and reports bad image files instead of failing the run.

    Args:
        path (str | Path): Image file or folder of images (searched recursively; extensions of
            ``torchvision.datasets.folder.IMG_EXTENSIONS`` in any case).
        category (str): What the images show. Zero-shot models (``BayesPFL(prompt_weights=...)``) write it into
            their prompts; empty keeps the model's own class name. Defaults to ``""``.
        eval_batch_size (int): Images per batch. Defaults to ``8``.
        num_workers (int): Dataloader workers. Defaults to ``0``.
    """

    def __init__(
        self,
        path: str | Path,
        category: str = "",
        eval_batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__(train_batch_size=eval_batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        self.path = Path(path)
        self.category = category
        self.predict_data: SafePredictDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Scan the images once (reporting the bad ones), then resize them with the model's ``Resize``.

        Replaces the base class's set-up: there are no train, validation or test splits to make.
        """
        if self.predict_data is None:
            self._setup(stage)
        model_transform = get_nested_attr(self, "trainer.model.pre_processor.transform", None)
        if model_transform is not None:
            self._update_subset_augmentations(self.predict_data, None, model_transform)

    def _setup(self, _stage: str | None = None) -> None:
        self.predict_data = SafePredictDataset(self.path)
        self.write_report()

    @property
    def skipped(self) -> list[SkippedImage]:
        """The files left out of the run (empty before :meth:`setup`)."""
        return [] if self.predict_data is None else list(self.predict_data.skipped)

    def write_report(self) -> Path | None:
        """Write the skipped files to ``skipped_images.csv`` in the trainer's run folder; return its path.

        Without a trainer (or with nothing skipped) only the log warnings report them, and nothing is written.
        """
        root = get_nested_attr(self, "trainer.default_root_dir", None)
        if not self.skipped or root is None:
            return None
        report = Path(root) / REPORT_NAME
        report.parent.mkdir(parents=True, exist_ok=True)
        with report.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows((str(item.path), item.reason) for item in self.skipped)
        logger.warning("Skipped %d of %d image files; see %s", len(self.skipped), self._total(), report)
        return report

    def _total(self) -> int:
        return len(self.skipped) + (0 if self.predict_data is None else len(self.predict_data))

    def predict_dataloader(self) -> EVAL_DATALOADERS:
        """The usable images in a fixed order."""
        return DataLoader(
            self.predict_data,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.predict_data.collate_fn,
        )

    def val_dataloader(self) -> EVAL_DATALOADERS:
        """No labelled images: validation (which anomalib runs for zero-shot models without a checkpoint) is empty."""
        return []
