# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Tests for the cross-dataset training datamodule and ``category_from_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets import MVTecADDataset
from PIL import Image
from torchvision.transforms.v2 import Resize

from anomalib_bayes_pfl.data import AuxiliaryTrain, category_from_path, generate_synthetic_dataset

MakeDatamodule = Callable[..., AuxiliaryTrain]


def _paths(dataset) -> set[str]:
    return set(dataset.samples["image_path"])


def _categories(dataset) -> set[str | None]:
    return {category_from_path(path) for path in dataset.samples["image_path"]}


def _test_split(root: Path, categories: tuple[str, ...]) -> set[str]:
    """Image paths of the stock anomalib test split, the reference every split is checked against."""
    return set().union(*(_paths(MVTecADDataset(root=root, category=name, split="test")) for name in categories))


def _ready(make_datamodule: MakeDatamodule, **overrides: object) -> AuxiliaryTrain:
    datamodule = make_datamodule(**overrides)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


# ------------------------------------------------------------------------------------------- splits


def test_train_and_val_partition_the_source_test_split(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule)
    train, val = _paths(datamodule.train_data), _paths(datamodule.val_data)
    assert not train & val
    assert train | val == _test_split(synthetic.root, synthetic.source)
    assert _categories(datamodule.val_data) == set(synthetic.source)


def test_test_split_is_the_whole_target_test_split(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule)
    assert _paths(datamodule.test_data) == _test_split(synthetic.root, synthetic.target)
    assert not _paths(datamodule.test_data) & (_paths(datamodule.train_data) | _paths(datamodule.val_data))
    assert datamodule.category == "+".join(synthetic.target)


def test_val_is_stratified_per_category_and_label(make_datamodule: MakeDatamodule, synthetic) -> None:
    samples = _ready(make_datamodule, val_ratio=0.1).val_data.samples
    groups = {
        (category_from_path(path), label) for path, label in zip(samples.image_path, samples.label_index, strict=True)
    }
    assert groups == {(category, label) for category in synthetic.source for label in (0, 1)}


def test_val_ratio_sets_the_held_out_share(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule, val_ratio=0.5)
    per_category = synthetic.counts["num_test_normal"] + synthetic.counts["num_test_anomalous"]
    assert len(datamodule.val_data) == len(synthetic.source) * per_category // 2


def test_held_out_split_is_seeded(make_datamodule: MakeDatamodule) -> None:
    first = _paths(_ready(make_datamodule, seed=3).val_data)
    assert _paths(_ready(make_datamodule, seed=3).val_data) == first
    others = [_paths(_ready(make_datamodule, seed=seed).val_data) for seed in range(4, 8)]
    assert any(other != first for other in others)


def test_without_target_it_tests_on_held_out_source(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule, target_root=None, target_categories=None)
    assert _paths(datamodule.test_data) == _paths(datamodule.val_data)
    assert datamodule.category == "+".join(synthetic.source)
    assert not datamodule.has_target


def test_target_categories_alone_use_the_source_root(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule, target_root=None, target_categories=["ring"])
    assert _categories(datamodule.test_data) == {"ring"}


def test_splits_survive_the_base_class_split_logic(make_datamodule: MakeDatamodule) -> None:
    """The base class must not move normal test images aside or drop them."""
    datamodule = _ready(make_datamodule)
    for dataset in (datamodule.train_data, datamodule.val_data, datamodule.test_data):
        assert dataset.has_normal and dataset.has_anomalous


def test_anomalous_only_target_is_not_refilled_from_train(make_datamodule: MakeDatamodule, tmp_path: Path) -> None:
    """anomalib would fill a test set without normal images with *train* images; here it must not."""
    root = generate_synthetic_dataset(tmp_path, categories=["ring"], image_size=32, num_train=1, num_test_anomalous=3)
    for path in (root / "ring" / "test" / "good").iterdir():
        path.unlink()
    (root / "ring" / "test" / "good").rmdir()
    datamodule = _ready(make_datamodule, target_root=root, target_categories=["ring"])
    assert len(datamodule.test_data) == 3
    assert not datamodule.test_data.has_normal
    assert _paths(datamodule.train_data) | _paths(datamodule.val_data) == _test_split(
        datamodule.source_root, tuple(datamodule.source_categories)
    )


# ------------------------------------------------------------------------------------------ batches


def test_train_batches_carry_masks_labels_and_paths(make_datamodule: MakeDatamodule) -> None:
    datamodule = _ready(make_datamodule, train_batch_size=64)
    batch = next(iter(datamodule.train_dataloader()))
    assert len(batch.image_path) == len(datamodule.train_data)
    assert batch.image.shape[1:] == (3, 32, 32)
    assert batch.gt_mask.shape == (len(batch.image_path), 32, 32)
    labels = batch.gt_label.bool()
    assert labels.any() and (~labels).any()
    area = batch.gt_mask.flatten(1).sum(dim=1)
    assert (area[labels] > 0).all()
    assert (area[~labels] == 0).all()


def test_val_and_test_batches_have_masks(make_datamodule: MakeDatamodule) -> None:
    datamodule = _ready(make_datamodule, eval_batch_size=64)
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        assert batch.gt_mask is not None
        assert (batch.gt_mask.flatten(1).sum(dim=1)[batch.gt_label.bool()] > 0).all()


def test_augmentations_reach_images_and_masks(make_datamodule: MakeDatamodule) -> None:
    datamodule = _ready(make_datamodule, augmentations=Resize((16, 16)), train_batch_size=4)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape[-2:] == (16, 16)
    assert batch.gt_mask.shape[-2:] == (16, 16)


def test_batch_paths_name_their_category(make_datamodule: MakeDatamodule, synthetic) -> None:
    datamodule = _ready(make_datamodule, train_batch_size=64)
    batch = next(iter(datamodule.train_dataloader()))
    assert {category_from_path(path) for path in batch.image_path} == set(synthetic.source)


# ---------------------------------------------------------------------------------------- formats


def test_visa_format_reads_the_converted_layout(make_datamodule: MakeDatamodule, visa_root: Path, synthetic) -> None:
    for root in (visa_root, visa_root / "visa_pytorch"):
        datamodule = _ready(make_datamodule, source_root=root, source_format="VisA")
        assert type(datamodule.val_data).__name__ == "VisaDataset"  # train_data: the same samples, masks at 0.5
        assert _categories(datamodule.train_data) == set(synthetic.source)
        assert _categories(datamodule.test_data) == set(synthetic.target)


def test_folder_format_accepts_other_extensions(make_datamodule: MakeDatamodule, tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, categories=["disc"], image_size=32, num_train=1, num_test_anomalous=3)
    for png in (root / "disc").glob("t*/*/*.png"):  # train/ and test/ images to JPEG; masks stay PNG
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    datamodule = _ready(make_datamodule, source_root=root, source_categories=["disc"], source_format="folder")
    assert all(path.endswith(".jpg") for path in datamodule.train_data.samples.image_path)
    batch = next(iter(datamodule.train_dataloader()))
    assert (batch.gt_mask.flatten(1).sum(dim=1)[batch.gt_label.bool()] > 0).all()


def test_from_config_builds_it_like_the_cli(tmp_path: Path, synthetic) -> None:
    """The CLI stores plain-typed init args; jsonargparse must be able to rebuild the datamodule."""
    config = tmp_path / "data.yaml"
    config.write_text(
        "class_path: anomalib_bayes_pfl.data.AuxiliaryTrain\n"
        "init_args:\n"
        f"  source_root: {synthetic.root}\n"
        f"  source_categories: [{', '.join(synthetic.source)}]\n"
        f"  target_root: {synthetic.root}\n"
        "  target_categories: [ring]\n"
        "  num_workers: 0\n",
    )
    datamodule = AnomalibDataModule.from_config(config)
    assert isinstance(datamodule, AuxiliaryTrain)
    assert datamodule.category == "ring"


# ------------------------------------------------------------------------------------------- errors


def test_missing_root_says_how_to_make_demo_data(make_datamodule: MakeDatamodule, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    datamodule = make_datamodule(source_root=missing)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        datamodule.prepare_data()
    assert str(missing) in str(error.value)
    assert "python -m anomalib_bayes_pfl.data.synthetic" in str(error.value)
    with pytest.raises(FileNotFoundError):
        datamodule.setup()


@pytest.mark.parametrize("role", ["source", "target"])
def test_missing_category_names_folder_and_layout(make_datamodule: MakeDatamodule, role: str) -> None:
    datamodule = make_datamodule(**{f"{role}_categories": ["capsules"]})
    with pytest.raises(FileNotFoundError, match=f"{role} category 'capsules' not found") as error:
        datamodule.setup()
    assert "ground_truth" in str(error.value)


def test_missing_visa_layout_points_at_visa_pytorch(make_datamodule: MakeDatamodule, synthetic) -> None:
    with pytest.raises(FileNotFoundError, match="visa_pytorch"):
        make_datamodule(source_format="visa").prepare_data()


@pytest.mark.parametrize("val_ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_ratio(make_datamodule: MakeDatamodule, val_ratio: float) -> None:
    with pytest.raises(ValueError, match=f"val_ratio={val_ratio}"):
        make_datamodule(val_ratio=val_ratio)


@pytest.mark.parametrize("argument", ["source_format", "target_format"])
def test_bad_format(make_datamodule: MakeDatamodule, argument: str) -> None:
    with pytest.raises(ValueError, match=f"{argument}='coco'.*mvtec"):
        make_datamodule(**{argument: "coco"})


def test_empty_source_categories(make_datamodule: MakeDatamodule) -> None:
    with pytest.raises(ValueError, match="source_categories"):
        make_datamodule(source_categories=[])


def test_target_root_needs_categories(make_datamodule: MakeDatamodule) -> None:
    with pytest.raises(ValueError, match="target_categories"):
        make_datamodule(target_categories=None)


# ------------------------------------------------------------------------------- category_from_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/data/MVTecAD/bottle/test/broken_large/000.png", "bottle"),
        ("/data/MVTecAD/bottle/train/good/000.png", "bottle"),
        ("/data/MVTecAD/bottle/ground_truth/broken_large/000_mask.png", "bottle"),
        ("visa/visa_pytorch/pcb1/test/bad/0001.JPG", "pcb1"),
        ("C:\\data\\MVTecAD\\metal_nut\\test\\color\\003.png", "metal_nut"),
        (Path("bottle/test/good/000.png"), "bottle"),
        ("test/good/000.png", None),
        ("/test/good/000.png", None),
        ("/data/images/000.png", None),
        ("/data/bottle/val/good/000.png", None),
        ("", None),
    ],
)
def test_category_from_path(path: str | Path, expected: str | None) -> None:
    assert category_from_path(path) == expected
