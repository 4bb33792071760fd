# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Datamodule for Bayes-PFL's cross-dataset training protocol.

Bayes-PFL learns its prompt distributions from *anomalous* images with pixel masks, then detects
anomalies zero-shot in categories it never saw. The paper trains on the test split of every VisA
category and evaluates on MVTec AD (and the reverse). anomalib's stock datamodules cannot express
this: their train split holds normal images only. :class:`AuxiliaryTrain` therefore uses

* **train**: the *test* split (normal and anomalous images, with masks) of the source categories,
  minus a held-out part;
* **val**: that held-out part, drawn per source category and per label with a fixed seed, so model
  selection never looks at the target data;
* **test**: the test split of the target categories, or the held-out source part when no target is
  given.

The splits are built from anomalib's own dataset classes (:class:`~anomalib.data.datasets.MVTecADDataset`,
:class:`~anomalib.data.datasets.VisaDataset`, :class:`~anomalib.data.datasets.FolderDataset`) and their
``samples`` tables, concatenated with ``+``. Nothing is ever downloaded: a missing folder raises
:class:`FileNotFoundError` that says how to create offline demo data.

Example:
    >>> from anomalib_bayes_pfl.data import AuxiliaryTrain, generate_synthetic_dataset
    >>> root = generate_synthetic_dataset("./datasets/synthetic")
    >>> datamodule = AuxiliaryTrain(
    ...     source_root=root,
    ...     source_categories=["disc", "stripes", "checker"],
    ...     target_root=root,
    ...     target_categories=["square", "ring", "grain"],
    ...     num_workers=0,
    ... )
    >>> datamodule.setup()
    >>> batch = next(iter(datamodule.train_dataloader()))
    >>> batch.image.shape, batch.gt_mask.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 64, 64]))
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import numbers
import operator
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from anomalib import TaskType
from anomalib.data import ImageItem
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets import FolderDataset, MVTecADDataset, VisaDataset
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.mvtecad import IMG_EXTENSIONS as MVTEC_EXTENSIONS
from anomalib.data.datasets.image.visa import EXTENSIONS as VISA_EXTENSIONS
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode, read_image
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2.functional import to_image
from torchvision.tv_tensors import Mask

from ..resume import EpochShuffleSampler

__all__ = ["SUPPORTED_FORMATS", "AuxiliaryTrain", "category_from_path"]

logger = logging.getLogger(__name__)

#: Dataset layouts :class:`AuxiliaryTrain` can read.
SUPPORTED_FORMATS: tuple[str, ...] = ("mvtec", "visa", "folder")

#: What :class:`AuxiliaryTrain` trains on: the labelled test split, the normal train split, or both.
TRAIN_SPLITS: tuple[str, ...] = ("test", "train", "both")

#: Largest seed accepted: the range of ``lightning.seed_everything`` (NumPy's legacy seeds). The epoch shuffle
#: seeds ``seed * 1_000_003 + epoch``, which must fit torch's 64-bit generator seed; this range keeps it far inside.
MAX_SEED = 2**32 - 1

_SPLIT_FOLDERS = frozenset({"train", "test", "ground_truth"})
_VISA_SPLIT_FOLDER = "visa_pytorch"  # where anomalib's Visa datamodule writes its converted layout
_DEMO_HINT = (
    "For offline demo data run `python -m anomalib_bayes_pfl.data.synthetic {root}` "
    "and use its categories ({categories})."
)
_LAYOUTS = {
    "mvtec": "<root>/<category>/test/{good,<defect>}/*.png with masks in <root>/<category>/ground_truth/<defect>/",
    "visa": (
        "<root>/visa_pytorch/<category>/test/{good,<defect>}/ (the layout anomalib's "
        "Visa(root=<root>, category=<category>).prepare_data() converts raw VisA into)"
    ),
    "folder": "<root>/<category>/test/{good,<defect>}/<images of any extension> with masks in ground_truth/<defect>/",
}


def category_from_path(image_path: str | Path) -> str | None:
    r"""Return the category folder of an image in the MVTec AD / VisA layout.

    A batch drawn from several categories carries no per-image category, yet Bayes-PFL builds its
    text prompts from the object name; the folder layout ``.../<category>/(train|test)/<defect>/<file>``
    (or ``ground_truth`` for masks) is the one place that name is recorded.

    Args:
        image_path: Path of an image or mask, with ``/`` or ``\`` separators.

    Returns:
        The category folder name, or ``None`` if the path does not follow that layout.

    Example:
        >>> category_from_path("datasets/MVTecAD/bottle/test/broken_large/000.png")
        'bottle'
        >>> category_from_path("photo.png") is None
        True
    """
    parts = PurePosixPath(str(image_path).replace("\\", "/")).parts
    if len(parts) < 4 or parts[-3] not in _SPLIT_FOLDERS or parts[-4] in {"", "/"}:
        return None
    return parts[-4]


def _normalise_categories(categories: Sequence[str] | None, argument: str) -> list[str]:
    """Turn a category argument into a list without duplicates (a lone string is one category).

    ``None`` gives an empty list; an empty sequence is rejected because it is always a mistake.
    """
    if categories is None:
        return []
    names = [categories] if isinstance(categories, str) else [str(name) for name in categories]
    if not names or not all(names):
        msg = f"{argument}={categories!r} must name at least one category folder, e.g. ['bottle']."
        raise ValueError(msg)
    return list(dict.fromkeys(names))


def _normalise_format(value: str, argument: str) -> str:
    """Accept a format name in any letter case, rejecting unknown ones early."""
    name = str(value).lower()
    if name not in SUPPORTED_FORMATS:
        msg = f"{argument}={value!r} is not supported; use one of {list(SUPPORTED_FORMATS)}."
        raise ValueError(msg)
    return name


def _dataset_root(root: Path, dataset_format: str) -> Path:
    """Folder that directly contains the category folders.

    For VisA this is ``<root>/visa_pytorch``, as in anomalib's ``Visa`` datamodule; a root that
    already points at ``visa_pytorch`` is accepted too.
    """
    if dataset_format == "visa" and root.name != _VISA_SPLIT_FOLDER:
        return root / _VISA_SPLIT_FOLDER
    return root


def _check_category_folder(root: Path, category: str, dataset_format: str, role: str) -> Path:
    """Fail with an actionable message unless ``category``'s test split is on disk.

    This replaces anomalib's ``prepare_data`` download: training data must already be present.
    """
    if not root.is_dir():
        hint = _demo_hint(_dataset_root(root, dataset_format))
        msg = f"{role}_root '{root}' does not exist. Expected layout: {_LAYOUTS[dataset_format]}. {hint}"
        raise FileNotFoundError(msg)
    folder = _dataset_root(root, dataset_format) / category
    if not (folder / "test").is_dir():
        msg = (
            f"{role} category '{category}' not found: '{folder / 'test'}' is not a folder. "
            f"Expected layout ({role}_format='{dataset_format}'): {_LAYOUTS[dataset_format]}. "
            f"Check {role}_root and {role}_categories. {_category_hint(folder.parent, category)}"
        )
        raise FileNotFoundError(msg)
    return folder


def _demo_hint(root: Path) -> str:
    """How to generate demo data at ``root`` (offered only where no dataset is: it would write into one)."""
    from .synthetic import DEFAULT_CATEGORIES  # noqa: PLC0415 - the demo generator stays off the import path

    return _DEMO_HINT.format(root=root, categories=", ".join(DEFAULT_CATEGORIES))


def _category_hint(root: Path, category: str) -> str:
    """The categories found in an existing dataset folder (with the closest name first), or the demo hint if none."""
    found = [path.name for path in _subfolders(root) if (path / "test").is_dir()]
    if not found:
        return _demo_hint(root)
    close = difflib.get_close_matches(category, found, n=1)
    guess = f"Did you mean '{close[0]}'? " if close else ""
    return f"{guess}Categories found in '{root}': {', '.join(found)}."


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []


def _folder_test_dataset(folder: Path) -> FolderDataset:
    """Build anomalib's ``FolderDataset`` over one MVTec-style category folder with any image extension.

    ``FolderDataset`` pairs anomalous images with masks by sorted order, so masks are used only when
    every defect folder has a ground-truth folder; otherwise the data is classification-only.
    """
    defects = [path for path in _subfolders(folder / "test") if path.name != "good"]
    normal_test = folder / "test" / "good"
    normal_train = folder / "train" / "good"
    if not normal_test.is_dir() and not normal_train.is_dir():
        msg = f"'{folder}' has neither test/good nor train/good; the 'folder' format needs normal images there."
        raise FileNotFoundError(msg)
    masks = [folder / "ground_truth" / path.name for path in defects]
    has_masks = bool(masks) and all(path.is_dir() for path in masks)
    if not has_masks and any(path.is_dir() for path in masks):
        missing = [str(path) for path in masks if not path.is_dir()]
        logger.warning("Ignoring all masks of '%s': no mask folder %s. Images load without masks.", folder, missing)
    return FolderDataset(
        name=folder.name,
        # FolderDataset requires a train folder; with split="test" its images are dropped again.
        normal_dir=normal_train if normal_train.is_dir() else normal_test,
        normal_test_dir=normal_test if normal_test.is_dir() else None,
        abnormal_dir=defects or None,
        mask_dir=masks if has_masks else None,
        split=Split.TEST,
    )


def _mask_matches(image_stem: str, mask_stem: str) -> bool:
    """Whether a mask names an image: ``000.png`` <- ``000.png`` (VisA) or ``000_mask.png`` (MVTec AD)."""
    return mask_stem == image_stem or mask_stem.startswith(f"{image_stem}_")


def _check_masks(folder: Path, extensions: Sequence[str], role: str) -> None:
    """Every anomalous test image needs its mask in ``ground_truth/<defect>/``, and every mask its image.

    anomalib's MVTec AD and VisA readers pair images and masks by sorted position, so one missing mask otherwise
    ends in pandas' ``Must have equal len keys and value``; here the folder or the image is named instead.

    Raises:
        FileNotFoundError: If the ground-truth folder, a mask or a mask's image is missing.
    """
    test, truth = folder / "test", folder / "ground_truth"
    images = {
        defect.name: sorted(path for path in defect.iterdir() if path.suffix in extensions)
        for defect in _subfolders(test)
        if defect.name != "good"
    }
    if not any(images.values()):
        return
    fix = "Bayes-PFL needs a pixel mask for every anomalous image: add the missing masks or remove those images."
    if not truth.is_dir():
        msg = (
            f"{role} category '{folder.name}' has anomalous images in '{test}' but no ground_truth folder "
            f"'{truth}' (expected masks as ground_truth/<defect>/<image name>_mask.png). {fix}"
        )
        raise FileNotFoundError(msg)
    for defect, defect_images in images.items():
        mask_folder = truth / defect
        masks = (
            sorted(path for path in mask_folder.iterdir() if path.suffix in extensions) if mask_folder.is_dir() else []
        )
        for image in defect_images:
            if not any(_mask_matches(image.stem, mask.stem) for mask in masks):
                msg = (
                    f"{role} category '{folder.name}': the anomalous image '{image}' has no mask in '{mask_folder}' "
                    f"(expected '{image.stem}_mask.png' or '{image.stem}.png'). {fix}"
                )
                raise FileNotFoundError(msg)
        for mask in masks:
            if not any(_mask_matches(image.stem, mask.stem) for image in defect_images):
                msg = (
                    f"{role} category '{folder.name}': the mask '{mask}' has no image in '{test / defect}'. Remove "
                    "the mask or add its image (images and masks are paired by name)."
                )
                raise FileNotFoundError(msg)


def _test_dataset(root: Path, category: str, dataset_format: str, role: str) -> AnomalibDataset:
    """The test split of one category, read with the matching anomalib dataset class (masks checked first)."""
    folder = _check_category_folder(root, category, dataset_format, role)
    if dataset_format == "mvtec":
        _check_masks(folder, MVTEC_EXTENSIONS, role)
        return MVTecADDataset(root=root, category=category, split=Split.TEST)
    if dataset_format == "visa":
        _check_masks(folder, VISA_EXTENSIONS, role)
        return VisaDataset(root=folder.parent, category=category, split=Split.TEST)
    return _folder_test_dataset(folder)


def _normal_train_dataset(root: Path, category: str, dataset_format: str) -> AnomalibDataset:
    """The normal-only train split of one source category (for synthetic anomalies)."""
    folder = _dataset_root(root, dataset_format) / category
    if not (folder / "train").is_dir():
        msg = f"train_split='train'/'both' needs the train split of source category '{category}': '{folder / 'train'}'."
        raise FileNotFoundError(msg)
    if dataset_format == "mvtec":
        return MVTecADDataset(root=root, category=category, split=Split.TRAIN)
    if dataset_format == "visa":
        return VisaDataset(root=folder.parent, category=category, split=Split.TRAIN)
    return FolderDataset(name=category, normal_dir=folder / "train" / "good", split=Split.TRAIN)


def _concatenate(datasets: Sequence[AnomalibDataset]) -> AnomalibDataset:
    """Join datasets with anomalib's ``+`` and keep the task a model will see.

    pandas keeps ``DataFrame.attrs`` through ``concat`` only when all inputs agree, so the task
    (segmentation as soon as any part has masks) is set again on the result.
    """
    tasks = {dataset.samples.attrs.get("task", "classification") for dataset in datasets}
    combined = functools.reduce(operator.add, datasets)
    combined.samples.attrs["task"] = "segmentation" if "segmentation" in tasks else "classification"
    return combined


MASK_THRESHOLD = 128
"""Grey level (of 255) from which a training-mask pixel is anomalous: half intensity, the reference's 0.5."""


def read_training_mask(path: str | Path) -> Mask:
    """A mask binarised at half intensity, so faint non-zero background (JPEG artefacts, anti-aliasing) stays normal.

    anomalib's ``read_mask`` keeps every non-zero pixel, which turns such a mask's whole image into anomaly
    target. Masks of anomalib's layouts (0 and 255) read the same either way.

    Raises:
        ValueError: If the mask is non-zero but nowhere reaches half intensity: class-id masks (1, 2, ...) or
            masks scaled to [0, 1] would otherwise become empty targets of an anomalous image, silently.
    """
    grey = to_image(Image.open(path).convert("L")).squeeze(0)
    brightest = int(grey.max())
    if 0 < brightest < MASK_THRESHOLD:
        msg = (
            f"Mask {path} is non-zero but its brightest pixel is {brightest} of 255: anomalies are read where a mask "
            f"is at least {MASK_THRESHOLD}. Save masks with 255 for anomalous pixels (class-id or 0/1 masks: "
            "multiply them by 255)."
        )
        raise ValueError(msg)
    return Mask(grey >= MASK_THRESHOLD, dtype=torch.uint8)


class HalfIntensityMasks(AnomalibDataset):
    """The training split: anomalib's items, with anomalous masks read by :func:`read_training_mask`.

    Args:
        dataset (AnomalibDataset): The split to read (its samples and augmentations are taken over).
    """

    def __init__(self, dataset: AnomalibDataset) -> None:
        super().__init__(augmentations=dataset.augmentations)
        self.samples = dataset.samples

    def __getitem__(self, index: int) -> ImageItem:
        """The image, its label and its half-intensity mask (augmented together), as anomalib's item."""
        sample = self.samples.iloc[index]
        if self.task != TaskType.SEGMENTATION or sample.label_index == LabelName.UNKNOWN:
            return super().__getitem__(index)
        image = read_image(sample.image_path, as_tensor=True)
        mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        if sample.label_index == LabelName.ABNORMAL:
            mask = read_training_mask(sample.mask_path)
        if self.augmentations:
            image, mask = self.augmentations(image, mask)
        return ImageItem(
            image=image,
            gt_mask=mask,
            gt_label=torch.tensor(sample.label_index),
            image_path=sample.image_path,
            mask_path=sample.mask_path,
        )


def _holdout_size(count: int, ratio: float) -> int:
    """Images of one (category, label) group to hold out: ``round(count * ratio)``.

    At least one is held out when the group has two or more images, so validation sees every
    category and both labels; at least one always stays in training.
    """
    if count < 2:
        return 0
    return int(min(count - 1, max(1, round(count * ratio))))


def _stratified_holdout(
    dataset: AnomalibDataset,
    ratio: float,
    rng: np.random.Generator,
) -> tuple[AnomalibDataset, AnomalibDataset]:
    """Split one category's dataset into (train, held-out) with the same label mix in both."""
    labels = dataset.samples["label_index"].to_numpy()
    held_out: list[int] = []
    for label in sorted(set(labels.tolist())):
        indices = np.flatnonzero(labels == label)
        held_out += rng.choice(indices, size=_holdout_size(len(indices), ratio), replace=False).tolist()
    kept = sorted(set(range(len(labels))) - set(held_out))
    return dataset.subsample(kept), dataset.subsample(sorted(held_out))


def _check_seed(seed: object) -> int | None:
    """``None`` or an integer in ``[0, MAX_SEED]`` (not a bool), checked when the datamodule is built.

    Raises:
        ValueError: Otherwise; a seed such as ``2**50`` would fail only at the first batch (torch's 64-bit seed).
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        msg = (
            f"seed={seed!r} must be None or an integer in [0, {MAX_SEED}] (the range lightning.seed_everything "
            "accepts); it seeds the held-out split and the per-epoch shuffle."
        )
        raise ValueError(msg)
    return int(seed)


def _category_rng(seed: int | None, category: str) -> np.random.Generator:
    """One generator per category, so adding a category does not change the others' held-out images."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed % 2**64, zlib.crc32(category.encode("utf-8"))])


class AuxiliaryTrain(AnomalibDataModule):
    """Train on anomalous auxiliary data, validate on held-out source data, test on a target dataset.

    Args:
        source_root: Root of the auxiliary (training) dataset, e.g. VisA when testing on MVTec AD.
        source_categories: Source categories whose *test* split is used for training.
        target_root: Root of the evaluation dataset. ``None`` tests on ``source_root`` when
            ``target_categories`` is given, otherwise on the held-out validation set.
        target_categories: Categories to test on (their test split).
        source_format: Layout of ``source_root``: ``"mvtec"``, ``"visa"`` or ``"folder"``.
        target_format: Layout of ``target_root``.
        val_ratio: Fraction of every (source category, label) group held out for validation; it is
            rounded, and at least one image per group of two or more is held out.
        train_batch_size: Batch size of the train dataloader.
        eval_batch_size: Batch size of the validation and test dataloaders.
        num_workers: Dataloader worker processes.
        train_augmentations: Augmentations for training images (and masks).
        val_augmentations: Augmentations for validation images.
        test_augmentations: Augmentations for test images.
        augmentations: Fallback for any split without its own augmentations.
        seed: Seed of the held-out split and of the per-epoch shuffle, an integer in ``[0, 2**32 - 1]`` (the
            range of ``lightning.seed_everything``); ``None`` draws a new split every run.
        train_split: Source images trained on: ``"test"`` (the labelled test split minus the held-out part, as
            in the paper), ``"train"`` (the normal-only train split: human-free training, needs
            ``BayesPFL(synthetic_anomalies=True)``) or ``"both"`` (real and synthetic anomalies mixed).
            Validation always uses the held-out part of the test split.

    Raises:
        ValueError: If ``val_ratio`` is outside ``(0, 1)``, a format is unknown, a category list is
            empty, ``target_root`` is given without ``target_categories``, or ``seed`` is out of range.
        FileNotFoundError: At setup, if a folder is missing, or (MVTec AD / VisA layouts) an anomalous image has
            no mask or a mask no image.

    Example:
        >>> datamodule = AuxiliaryTrain(
        ...     source_root="./datasets/visa",
        ...     source_categories=["candle", "capsules"],
        ...     source_format="visa",
        ...     target_root="./datasets/MVTecAD",
        ...     target_categories=["bottle"],
        ... )
        >>> datamodule.category
        'bottle'
    """

    def __init__(
        self,
        source_root: str | Path,
        source_categories: Sequence[str],
        target_root: str | Path | None = None,
        target_categories: Sequence[str] | None = None,
        source_format: str = "mvtec",
        target_format: str = "mvtec",
        val_ratio: float = 0.1,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 4,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int | None = 0,
        train_split: str = "test",
    ) -> None:
        if not 0.0 < float(val_ratio) < 1.0:
            msg = f"val_ratio={val_ratio} must lie strictly between 0 and 1 (e.g. 0.1 holds out 10% per group)."
            raise ValueError(msg)
        seed = _check_seed(seed)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            # All three splits are built in ``_setup``; FROM_DIR tells the base class not to re-split.
            val_split_mode=ValSplitMode.FROM_DIR,
            val_split_ratio=val_ratio,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        self.source_root = Path(source_root)
        self.source_categories = _normalise_categories(source_categories, "source_categories")
        self.source_format = _normalise_format(source_format, "source_format")
        self.target_format = _normalise_format(target_format, "target_format")
        self.target_categories = _normalise_categories(target_categories, "target_categories")
        if target_root is not None and not self.target_categories:
            msg = f"target_root='{target_root}' was given without target_categories; list the categories to test on."
            raise ValueError(msg)
        if target_root is None and self.target_categories:
            target_root = source_root
        self.target_root = Path(target_root) if target_root is not None else None
        self.val_ratio = float(val_ratio)
        if train_split not in TRAIN_SPLITS:
            msg = f"train_split={train_split!r} must be one of {list(TRAIN_SPLITS)}."
            raise ValueError(msg)
        self.train_split = train_split

    @property
    def category(self) -> str:
        """Readable name of what is tested, used by anomalib for result folders.

        The target categories joined with ``+``, or the source categories when testing on the
        held-out source data.
        """
        return "+".join(self.target_categories or self.source_categories)

    @property
    def has_target(self) -> bool:
        """Whether the test split comes from a separate target dataset."""
        return self.target_root is not None

    def prepare_data(self) -> None:
        """Check that every folder exists; unlike anomalib's datamodules this never downloads.

        Raises:
            FileNotFoundError: If a root or category folder is missing.
        """
        for category in self.source_categories:
            _check_category_folder(self.source_root, category, self.source_format, "source")
        if self.target_root is not None:
            for category in self.target_categories:
                _check_category_folder(self.target_root, category, self.target_format, "target")

    def _setup(self, _stage: str | None = None) -> None:
        """Build train/val from the source test splits and test from the target test splits."""
        train_parts: list[AnomalibDataset] = []
        val_parts: list[AnomalibDataset] = []
        for category in self.source_categories:
            dataset = _test_dataset(self.source_root, category, self.source_format, "source")
            train_part, val_part = _stratified_holdout(dataset, self.val_ratio, _category_rng(self.seed, category))
            val_parts.append(val_part)
            if self.train_split in {"test", "both"}:
                train_parts.append(train_part)
            if self.train_split in {"train", "both"}:
                train_parts.append(_normal_train_dataset(self.source_root, category, self.source_format))
        self.train_data = HalfIntensityMasks(_concatenate(train_parts))
        self.val_data = _concatenate(val_parts)
        if self.target_root is None:
            self.test_data = copy.deepcopy(self.val_data)
            return
        root, dataset_format = self.target_root, self.target_format
        targets = [_test_dataset(root, name, dataset_format, "target") for name in self.target_categories]
        self.test_data = _concatenate(targets)

    def train_dataloader(self) -> DataLoader:
        """Shuffle from ``seed`` and the epoch alone, so a resumed run sees the batches an uninterrupted one would."""
        return DataLoader(
            self.train_data,
            sampler=EpochShuffleSampler(len(self.train_data), self.seed),
            batch_size=self.train_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )

    def _create_test_split(self) -> None:
        """Keep the test split from ``_setup`` as it is.

        The base class would move the normal test images aside and, depending on the mode, drop them
        or refill them from the *train* split, which here holds anomalous source images.
        """
