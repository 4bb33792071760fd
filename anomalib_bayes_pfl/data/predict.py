# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

r"""Predicting a folder of production images that may hold bad files: report them, skip them, score the rest.

``anomalib predict --data <folder>`` reads the folder with anomalib's ``PredictDataset``, which decodes each image
inside the dataloader: one corrupt, truncated or empty file stops the whole run, and 16-bit images are clipped.
:class:`SafePredictFolder` is a drop-in datamodule for the same job. It decodes every candidate once while it is
set up (decoding is cheap next to a CLIP forward pass), logs a warning naming each file it cannot use and why,
writes them to ``skipped_images.csv`` in the run folder (next to anomalib's ``images/``), and predicts the others.
Images are read by :func:`anomalib_bayes_pfl.images.read_rgb` (any PIL mode to RGB in ``[0, 1]``) and resized one
by one with the model's own ``Resize``, so a batch never mixes sizes and an image scores the same in any batch.

The folder may change while the run goes on (an unattended run reads an incoming folder):

* A file that was usable at set-up but is removed, emptied or damaged before it is loaded is skipped in the same
  way: the dataset returns a :class:`SkippedImage` in place of the image, the collation keeps only the readable
  images, and :class:`SafePredictLoader` reports the skipped ones from the main process (so it works with
  dataloader workers) and drops a batch that is left empty. The model, anomalib's visualiser and the returned
  predictions only ever see whole, non-empty batches.
* Only regular files are read: a named pipe, socket or device named like an image is listed as "not a regular
  file" from its ``stat``, without being opened (opening a pipe would wait for a writer forever).
* The report belongs to one run: it is written afresh at each set-up (rewritten when a late file is skipped), and
  an earlier run's report in the same folder is removed when nothing is skipped.
* File names that are not valid UTF-8 (possible on Linux) are logged and written with each bad byte as ``\xNN``
  (see :func:`anomalib_bayes_pfl.images.display_path`), so the report stays valid UTF-8.

Example:
    ``anomalib predict --model BayesPFL --ckpt_path model.ckpt --data SafePredictFolder --data.path images/``

    >>> from anomalib_bayes_pfl.data import SafePredictFolder  # doctest: +SKIP
    >>> Engine().predict(model, datamodule=SafePredictFolder("images/"), ckpt_path="model.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from anomalib.data import ImageBatch, ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.utils.attrs import get_nested_attr
from lightning.pytorch.utilities.types import EVAL_DATALOADERS
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import Transform

from ..atomic import atomic_write_csv
from ..images import BadImageError, MultiFrameImageWarning, display_path, image_files, read_rgb

logger = logging.getLogger(__name__)

REPORT_NAME = "skipped_images.csv"
"""File, in the run folder, that lists the images a prediction run skipped and why."""


class SkippedImage(NamedTuple):
    """An image left out of a prediction run."""

    path: Path
    reason: str


class ReadBatch(NamedTuple):
    """What :class:`SafePredictDataset` collates a batch into, before :class:`SafePredictLoader` unpacks it."""

    images: ImageBatch | None
    """The images that could be read, as one batch; ``None`` when none could."""
    skipped: tuple[SkippedImage, ...]
    """The files of the batch that could not be read when loaded."""


def collate_readable(items: list[ImageItem | SkippedImage]) -> ReadBatch:
    """Collate the readable items into an ``ImageBatch`` and set the skipped ones apart."""
    readable = [item for item in items if not isinstance(item, SkippedImage)]
    skipped = tuple(item for item in items if isinstance(item, SkippedImage))
    return ReadBatch(ImageBatch.collate(readable) if readable else None, skipped)


def _log_skip(item: SkippedImage) -> None:
    logger.warning("Cannot use image %s: %s; skipping it.", display_path(item.path), item.reason)


def _candidates(path: Path) -> list[Path]:
    """The path itself if it is not a folder, else its :func:`image_files` (none is an error naming the folder)."""
    if not path.is_dir():
        if path.exists():
            return [path]
        msg = f"Nothing to predict: {display_path(path)} is neither an image file nor a folder."
        raise FileNotFoundError(msg)
    files = image_files(path)
    if not files:
        msg = f"Found no image files in {display_path(path)} (extensions, any case: {', '.join(IMG_EXTENSIONS)})."
        raise ValueError(msg)
    return files


def scan_images(path: str | Path) -> tuple[list[Path], list[SkippedImage]]:
    """Decode every image of ``path`` once; return the usable files and the skipped ones with their reasons.

    Args:
        path (str | Path): Image file or folder (searched recursively).

    Returns:
        tuple[list[Path], list[SkippedImage]]: The usable files and the skipped ones, each sorted by path.

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
        reasons = "; ".join(f"{display_path(item.path.name)}: {item.reason}" for item in skipped[:5])
        msg = f"None of the {len(skipped)} image files in {display_path(path)} can be used ({reasons})."
        raise ValueError(msg)
    return usable, skipped


class SafePredictDataset(Dataset):
    """Unlabelled images of a folder (or one image file), checked when the dataset is built.

    Args:
        path (str | Path): Image file or folder (searched recursively).
        augmentations (Transform | None): Applied to each image after reading (the datamodule sets the model's
            ``Resize`` here). Defaults to ``None``.

    Attributes:
        image_paths (list[Path]): The images usable at set-up, sorted.
        skipped (list[SkippedImage]): The files left out at set-up, with the reason.
    """

    def __init__(self, path: str | Path, augmentations: Transform | None = None) -> None:
        super().__init__()
        self.image_paths, self.skipped = scan_images(path)
        self.augmentations = augmentations

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> ImageItem | SkippedImage:
        """The image, or a :class:`SkippedImage` if it can no longer be read (removed or damaged since set-up)."""
        path = self.image_paths[index]
        try:
            with warnings.catch_warnings():  # already warned about at set-up
                warnings.simplefilter("ignore", MultiFrameImageWarning)
                image = read_rgb(path)
        except BadImageError as error:
            return SkippedImage(path, error.reason)
        if self.augmentations is not None:
            image = self.augmentations(image)
        return ImageItem(image=image, image_path=str(path))

    @property
    def collate_fn(self) -> Callable[[list[ImageItem | SkippedImage]], ReadBatch]:
        """Collation into a :class:`ReadBatch`, which :class:`SafePredictLoader` turns into ``ImageBatch`` objects."""
        return collate_readable


class SafePredictLoader(DataLoader):
    """A ``DataLoader`` of a :class:`SafePredictDataset` that yields only non-empty ``ImageBatch`` objects.

    Each batch the workers collate (a :class:`ReadBatch`) is unpacked here, in the main process: the files that
    could not be read are passed to ``on_skip`` (or logged), and a batch left without images is dropped, so the
    model and anomalib's callbacks never see an empty one. There may then be fewer batches than ``len()`` says;
    Lightning stops at the end of the data. Lightning's ``batch_indices`` (used only by prediction writers) count
    the batches of the sampler, dropped ones included.

    Args:
        dataset (Dataset): The dataset; its items are collated by ``collate_fn`` into :class:`ReadBatch` objects.
        on_skip (Callable[[SkippedImage], None] | None): Called with each file that failed to load. Defaults to
            ``None``: log a warning.
        **kwargs (Any): Arguments of ``torch.utils.data.DataLoader``.
    """

    def __init__(self, dataset: Dataset, on_skip: Callable[[SkippedImage], None] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.on_skip = on_skip

    def __iter__(self) -> Iterator[Any]:
        report = self.on_skip or _log_skip
        for batch in super().__iter__():
            if not isinstance(batch, ReadBatch):
                yield batch
                continue
            for item in batch.skipped:
                report(item)
            if batch.images is not None:
                yield batch.images


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
        self._skipped_at_load: list[SkippedImage] = []

    def setup(self, stage: str | None = None) -> None:
        """Scan the images once (reporting the bad ones), then resize them with the model's ``Resize``.

        Each call (each run of a trainer) starts a new report: files that failed to load in an earlier run are
        forgotten, and the run folder's ``skipped_images.csv`` is written afresh, or removed if nothing is skipped.
        Replaces the base class's set-up: there are no train, validation or test splits to make.
        """
        if self.predict_data is None:
            self.predict_data = SafePredictDataset(self.path)
        self._skipped_at_load = []
        self.write_report()
        model_transform = get_nested_attr(self, "trainer.model.pre_processor.transform", None)
        if model_transform is not None:
            self._update_subset_augmentations(self.predict_data, None, model_transform)

    def _setup(self, _stage: str | None = None) -> None:
        self.predict_data = SafePredictDataset(self.path)

    @property
    def skipped(self) -> list[SkippedImage]:
        """The files left out of the run: those found bad at set-up, then those that failed to load since."""
        scanned = [] if self.predict_data is None else list(self.predict_data.skipped)
        return scanned + self._skipped_at_load

    def write_report(self) -> Path | None:
        r"""Write the skipped files to ``skipped_images.csv`` in the trainer's run folder; return its path.

        The report is the current run's alone: it is rewritten whole, and an existing one (an earlier run's) is
        removed when nothing is skipped. Without a trainer only the log warnings report the files. In a
        multi-process (DDP) run only the first process writes it; the others log the files that fail on them.

        The file is always valid UTF-8, so that any CSV reader opens it: a file name that is not valid UTF-8
        (possible on Linux) is written with each bad byte as ``\xNN`` (e.g. ``bad\xff.png``; see
        :func:`~anomalib_bayes_pfl.images.display_path`) rather than as the raw byte, which would make the whole
        report unreadable to strict UTF-8 readers. The ``path`` column is then for people, not for opening the
        file; the raw names are in :attr:`skipped`.

        Returns:
            Path | None: The report, or ``None`` when none was written.
        """
        trainer = get_nested_attr(self, "trainer", None)
        root = getattr(trainer, "default_root_dir", None)
        if root is None or not getattr(trainer, "is_global_zero", True):
            return None
        report = Path(root) / REPORT_NAME
        skipped = self.skipped
        if not skipped:
            report.unlink(missing_ok=True)
            return None
        rows = ((display_path(item.path), item.reason) for item in skipped)
        atomic_write_csv(report, ["path", "reason"], rows)  # a reader never sees a half-written report
        logger.warning("Skipped %d of %d image files; see %s", len(skipped), self._total(), display_path(report))
        return report

    def _skip_at_load(self, item: SkippedImage) -> None:
        """Report a file that was usable at set-up but failed when loaded: log it and rewrite the report."""
        _log_skip(item)
        self._skipped_at_load.append(item)
        self.write_report()

    def _total(self) -> int:
        if self.predict_data is None:
            return len(self._skipped_at_load)
        return len(self.predict_data.skipped) + len(self.predict_data)

    def predict_dataloader(self) -> EVAL_DATALOADERS:
        """The usable images in a fixed order, as non-empty batches (files that fail to load are reported)."""
        return SafePredictLoader(
            dataset=self.predict_data,
            on_skip=self._skip_at_load,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.predict_data.collate_fn,
        )

    def val_dataloader(self) -> EVAL_DATALOADERS:
        """No labelled images: validation (which anomalib runs for zero-shot models without a checkpoint) is empty."""
        return []
