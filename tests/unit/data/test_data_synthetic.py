# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Tests for the offline synthetic dataset generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_bayes_pfl.data import AVAILABLE_CATEGORIES, DEFAULT_CATEGORIES, defect_types, generate_synthetic_dataset
from anomalib_bayes_pfl.data import synthetic as synth

OBJECTS = ("disc", "square", "ring", "cross")


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, to compare whole datasets byte for byte."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ------------------------------------------------------------------------------------------- layout


def test_default_categories_mix_objects_and_textures() -> None:
    assert len(DEFAULT_CATEGORIES) == 6
    assert set(DEFAULT_CATEGORIES) <= set(AVAILABLE_CATEGORIES)
    kinds = {synth._SPECS[name].kind for name in DEFAULT_CATEGORIES}
    assert kinds == {"object", "texture"}


def test_every_category_has_own_defect_folders() -> None:
    for category in AVAILABLE_CATEGORIES:
        assert len(defect_types(category)) >= 2
        assert "good" not in defect_types(category)
    assert len({defect_types(category) for category in AVAILABLE_CATEGORIES}) > 1


def test_layout_matches_mvtec(synthetic) -> None:
    counts = synthetic.counts
    for category in synthetic.categories:
        folder = synthetic.root / category
        assert len(list((folder / "train" / "good").glob("*.png"))) == counts["num_train"]
        assert len(list((folder / "test" / "good").glob("*.png"))) == counts["num_test_normal"]
        anomalous = [path for path in (folder / "test").glob("*/*.png") if path.parent.name != "good"]
        assert len(anomalous) == counts["num_test_anomalous"]
        assert {path.parent.name for path in anomalous} == set(defect_types(category))
        for image_path in anomalous:
            mask_path = folder / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
            assert mask_path.is_file(), mask_path
        assert sorted(path.name for path in folder.iterdir()) == ["ground_truth", "test", "train"]


def test_images_are_rgb_and_masks_binary_single_channel(synthetic) -> None:
    size = synthetic.counts["image_size"]
    folder = synthetic.root / "disc"
    for image_path in folder.glob("t*/*/*.png"):
        assert _load(image_path).shape == (size, size, 3)
    for mask_path in (folder / "ground_truth").glob("*/*.png"):
        mask = _load(mask_path)
        assert mask.shape == (size, size)
        assert set(np.unique(mask).tolist()) == {0, 255}


# ----------------------------------------------------------------------------- determinism, idempotence


def test_same_seed_gives_same_bytes(tmp_path: Path) -> None:
    arguments = {"categories": ["square", "grain"], "image_size": 32, "num_train": 2, "num_test_anomalous": 3}
    first = _files(generate_synthetic_dataset(tmp_path / "a", **arguments))
    second = _files(generate_synthetic_dataset(tmp_path / "b", **arguments))
    other_seed = _files(generate_synthetic_dataset(tmp_path / "c", seed=1, **arguments))
    assert first == second
    assert first.keys() == other_seed.keys()
    assert first != other_seed


def test_images_do_not_depend_on_other_counts(tmp_path: Path) -> None:
    small = _files(generate_synthetic_dataset(tmp_path / "a", categories=["checker"], image_size=32, num_train=1))
    large = _files(generate_synthetic_dataset(tmp_path / "b", categories=["checker"], image_size=32, num_train=3))
    assert all(large[name] == content for name, content in small.items())


def test_generation_leaves_global_random_state_alone(tmp_path: Path) -> None:
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    generate_synthetic_dataset(tmp_path, categories=["grain"], image_size=32, num_train=1, num_test_anomalous=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))


def test_rerun_keeps_files_and_user_files(tmp_path: Path) -> None:
    arguments = {"categories": ["disc"], "image_size": 32, "num_train": 2, "num_test_anomalous": 3}
    root = generate_synthetic_dataset(tmp_path, **arguments)
    user_file = root / "disc" / "train" / "good" / "my_photo.png"
    user_file.write_bytes(b"not generated")
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*.png")}

    generate_synthetic_dataset(tmp_path, **arguments)

    assert {path: path.stat().st_mtime_ns for path in root.rglob("*.png")} == before
    assert user_file.read_bytes() == b"not generated"


def test_rerun_completes_an_interrupted_category(tmp_path: Path) -> None:
    arguments = {"categories": ["ring"], "image_size": 32, "num_train": 2, "num_test_anomalous": 3}
    root = generate_synthetic_dataset(tmp_path, **arguments)
    expected = _files(root)
    (root / "ring" / "test" / "cut" / "000.png").unlink()
    (root / "ring" / "ground_truth" / "scratch" / "000_mask.png").unlink()

    generate_synthetic_dataset(tmp_path, **arguments)

    assert _files(root) == expected


def test_rerun_with_other_image_size_is_refused(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, categories=["disc"], image_size=32, num_train=1, num_test_anomalous=2)
    with pytest.raises(ValueError, match="image_size=48"):
        generate_synthetic_dataset(tmp_path, categories=["disc"], image_size=48, num_train=2, num_test_anomalous=2)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"categories": ["bottle"]}, "Unknown synthetic category 'bottle'"),
        ({"categories": []}, "categories is empty"),
        ({"image_size": 8}, "image_size=8"),
        ({"num_train": 0}, "num_train=0"),
        ({"num_test_anomalous": 0}, "num_test_anomalous=0"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_synthetic_dataset(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_single_category_string_is_one_category(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, categories="disc", image_size=32, num_train=1, num_test_anomalous=2)
    assert [path.name for path in tmp_path.iterdir()] == ["disc"]


# ------------------------------------------------------------------------------------------ defects


@pytest.mark.parametrize("category", AVAILABLE_CATEGORIES)
def test_defects_are_visible_and_masked_exactly(category: str) -> None:
    """The mask marks a clear change, and nothing outside the mask changes."""
    for index, defect in enumerate(defect_types(category) * 2):
        sample = synth.render_sample(category, np.random.default_rng(index), image_size=32, defect=defect)
        assert sample.mask is not None and sample.mask.any(), defect
        change = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1)
        assert not change[~sample.mask].any(), f"{category}/{defect} changed pixels outside its mask"
        assert change[sample.mask].mean() > 40, f"{category}/{defect} is hard to see"


@pytest.mark.parametrize("category", OBJECTS)
def test_object_defects_lie_on_the_object(category: str) -> None:
    for index, defect in enumerate(defect_types(category) * 3):
        sample = synth.render_sample(category, np.random.default_rng(index), image_size=48, defect=defect)
        assert sample.mask is not None
        assert not (sample.mask & ~sample.region).any(), f"{category}/{defect} leaves the object"
        assert sample.region.mean() < 0.6, "the object should not fill the image"


def test_normal_sample_has_no_mask() -> None:
    sample = synth.render_sample("stripes", np.random.default_rng(0), image_size=32)
    assert sample.mask is None
    assert np.array_equal(sample.image, sample.clean)


def test_written_files_are_the_rendered_samples(synthetic) -> None:
    """Files on disk are exactly what ``render_sample`` checks above, masks included."""
    size = synthetic.counts["image_size"]
    for category in synthetic.categories:
        folder = synthetic.root / category
        for image_path in (folder / "test").glob("*/*.png"):
            defect = image_path.parent.name
            rng = synth._image_rng(0, category, "test", defect, int(image_path.stem))
            sample = synth.render_sample(category, rng, image_size=size, defect=None if defect == "good" else defect)
            assert np.array_equal(_load(image_path), sample.image), image_path
            if sample.mask is not None:
                mask = _load(folder / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                assert np.array_equal(mask > 0, sample.mask), image_path


def test_unknown_defect_is_rejected() -> None:
    with pytest.raises(ValueError, match="Choose from"):
        synth.render_sample("disc", np.random.default_rng(0), defect="crack")


# ----------------------------------------------------------------------------------- CLI and anomalib


def test_cli_writes_requested_categories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = synth.main([str(tmp_path), "--categories", "disc", "checker", "--image-size", "32", "--num-train", "1"])
    assert status == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checker", "disc"]
    assert "defects:" in capsys.readouterr().out


def test_cli_rejects_unknown_category(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as error:
        synth.main([str(tmp_path), "--categories", "bottle"])
    assert error.value.code == 2


def test_stock_mvtec_datamodule_reads_it_without_download(synthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib.data import MVTecAD
    from anomalib.data.datamodules.image import mvtecad

    def _no_download(*_args: object, **_kwargs: object) -> None:
        pytest.fail("MVTecAD tried to download the synthetic dataset")

    monkeypatch.setattr(mvtecad, "download_and_extract", _no_download)
    datamodule = MVTecAD(root=synthetic.root, category="disc", eval_batch_size=64, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup()

    batch = next(iter(datamodule.test_dataloader()))
    assert datamodule.task == "segmentation"
    assert len(datamodule.train_data) == synthetic.counts["num_train"]
    labels = batch.gt_label.bool()
    assert labels.sum() == synthetic.counts["num_test_anomalous"]
    mask_area = batch.gt_mask.flatten(1).sum(dim=1)
    assert (mask_area[labels] > 0).all()
    assert (mask_area[~labels] == 0).all()
