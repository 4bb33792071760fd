"""Tests of object-attention anomaly generation: foreground, masks, alignment, sources, training inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision.transforms import v2

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL
from anomalib_bayes_pfl.backbone import ClipBackbone
from anomalib_bayes_pfl.synthesis import ObjectAttentionAnomalyGenerator, attention_foreground


def _blob_attention() -> torch.Tensor:
    """Attention of a 8 x 8 grid, low everywhere but a 2 x 2 object at rows/columns 3-4."""
    attention = torch.full((1, 8, 8), 0.005)
    attention[0, 3:5, 3:5] = 0.2
    return attention


def _check_synthesis(images: torch.Tensor, out: torch.Tensor, masks: torch.Tensor, foreground: torch.Tensor) -> None:
    """Images change only inside the masks, and masks only inside the foreground."""
    changed = (out != images).any(1)
    assert (changed <= masks.bool()).all()
    assert (masks.bool() <= foreground).all()
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


class TestForeground:
    """Object masks from class-token attention."""

    @staticmethod
    def test_object_is_found_and_dilated() -> None:
        """The high-attention patches, grown by one patch, upsampled to the image."""
        mask = attention_foreground(_blob_attention(), (16, 16), dilation=1)[0]
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[2:6, 2:6] = True
        assert torch.equal(mask, expected.repeat_interleave(2, 0).repeat_interleave(2, 1))

    @staticmethod
    def test_flat_attention_means_texture() -> None:
        """A texture (flat attention, even with one outlier token) is foreground everywhere."""
        attention = torch.full((1, 8, 8), 1 / 64) + 1e-4 * torch.randn(1, 8, 8)
        attention[0, 0, 0] = 0.5  # a ViT 'register' outlier token
        assert attention_foreground(attention, (8, 8)).all()

    @staticmethod
    def test_class_attention_is_the_blocks_attention() -> None:
        """The backbone's class-token attention equals nn.MultiheadAttention's weights of that block."""
        torch.manual_seed(0)
        backbone = ClipBackbone("bayes-pfl-tiny", None, 64, (1,))
        images = torch.randn(2, 3, 64, 64)
        attention = backbone.class_attention(images, 2)
        block = backbone.clip.visual.transformer.resblocks[1]
        x = backbone.clip.visual.transformer.resblocks[0](backbone._embed(images))
        tokens = block.ln_1(x)
        weights = block.attn(tokens, tokens, tokens, need_weights=True)[1]
        assert attention.shape == (2, 8, 8)
        assert torch.allclose(attention.flatten(1), weights[:, 0, 1:], atol=1e-6)
        with pytest.raises(ValueError, match="within 1..4"):
            backbone.class_attention(images, 5)


class TestGenerator:
    """The Perlin-based generator restricted to the object."""

    @staticmethod
    def test_anomalies_stay_inside_the_foreground() -> None:
        """Masks lie in the object; pixels outside the masks are untouched; labels follow the masks."""
        torch.manual_seed(0)
        images = torch.rand(8, 3, 32, 32)
        foreground = attention_foreground(_blob_attention().expand(8, -1, -1), (32, 32), dilation=1)
        out, masks, labels = ObjectAttentionAnomalyGenerator(probability=1.0)(
            images, foreground, torch.zeros(8), torch.Generator().manual_seed(0)
        )
        _check_synthesis(images, out, masks, foreground)
        assert torch.equal(labels, masks.flatten(1).any(1).float())
        assert labels.sum() >= 6  # the object covers 25 % of the image: most draws succeed

    @staticmethod
    def test_real_anomalies_and_probability_zero_are_left_alone() -> None:
        """Images labelled anomalous are never touched; probability 0 adds nothing."""
        images, foreground = torch.rand(4, 3, 32, 32), torch.ones(4, 32, 32, dtype=torch.bool)
        out, masks, labels = ObjectAttentionAnomalyGenerator(probability=1.0)(
            images, foreground, torch.ones(4), torch.Generator().manual_seed(0)
        )
        assert torch.equal(out, images) and not masks.any() and labels.all()
        out, masks, labels = ObjectAttentionAnomalyGenerator(probability=0.0)(
            images, foreground, torch.zeros(4), torch.Generator().manual_seed(0)
        )
        assert torch.equal(out, images) and not masks.any() and not labels.any()

    @staticmethod
    def test_tiny_object_leaves_image_normal() -> None:
        """When no draw covers the minimum area of the object, the image stays normal (label 0)."""
        images, foreground = torch.rand(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.bool)
        foreground[:, 0, 0] = True
        out, masks, labels = ObjectAttentionAnomalyGenerator(probability=1.0)(
            images, foreground, torch.zeros(2), torch.Generator().manual_seed(0)
        )
        assert torch.equal(out, images) and not masks.any() and not labels.any()

    @staticmethod
    def test_the_generator_fixes_every_draw() -> None:
        """The given generator fixes every draw (shapes, sources, textures, opacity); the global one is untouched."""
        images, foreground = torch.rand(4, 3, 32, 32), torch.ones(4, 32, 32, dtype=torch.bool)
        generator = ObjectAttentionAnomalyGenerator(probability=1.0)
        torch.manual_seed(3)
        first = generator(images, foreground, torch.zeros(4), torch.Generator().manual_seed(7))
        after_first = torch.rand(1)
        torch.manual_seed(4)
        second = generator(images, foreground, torch.zeros(4), torch.Generator().manual_seed(7))
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
        torch.manual_seed(3)
        assert torch.equal(torch.rand(1), after_first)  # no draw from the global generator
        third = generator(images, foreground, torch.zeros(4), torch.Generator().manual_seed(8))
        assert not torch.equal(first[0], third[0])

    @staticmethod
    def test_texture_folder_source(tmp_path: Path) -> None:
        """A user's texture folder is a third source; a missing or empty folder is a clear error when training starts
        (not at construction: a checkpoint naming a folder must still load for inference elsewhere)."""
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "texture.png")
        generator = ObjectAttentionAnomalyGenerator(probability=1.0, anomaly_source_path=tmp_path)
        assert generator.sources == ("noise", "self", "folder")
        images, foreground = torch.rand(6, 3, 32, 32), torch.ones(6, 32, 32, dtype=torch.bool)
        out, masks, _ = generator(images, foreground, torch.zeros(6), torch.Generator().manual_seed(0))
        _check_synthesis(images, out, masks, foreground)
        generator.check_sources()
        with pytest.raises(FileNotFoundError, match="not a folder"):
            ObjectAttentionAnomalyGenerator(anomaly_source_path=tmp_path / "missing").check_sources()
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match="holds no images"):
            ObjectAttentionAnomalyGenerator(anomaly_source_path=tmp_path / "empty").check_sources()

    @staticmethod
    @pytest.mark.parametrize(
        ("arguments", "match"), [({"probability": 1.5}, "probability"), ({"blend_factor": (0, 1)}, "blend")]
    )
    def test_bad_arguments_are_explained(arguments: dict, match: str) -> None:
        """Out-of-range probability or opacity is rejected at construction."""
        with pytest.raises(ValueError, match=match):
            ObjectAttentionAnomalyGenerator(**arguments)


def test_training_inputs_stay_aligned_through_augmentation(synthetic_root: Path, tiny_kwargs: dict) -> None:
    """After the datamodule's geometric augmentation and the model's resize, synthetic masks match the images.

    The batch mixes real anomalies (kept with their augmented masks) and normal images (half of them made
    anomalous on the object found by CLIP's attention, at the model's input resolution).
    """
    augment = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomRotation(degrees=(90, 90))])
    datamodule = AuxiliaryTrain(
        synthetic_root, ["disc", "ring"], train_split="both", train_augmentations=augment, num_workers=0,
        train_batch_size=16,
    )  # fmt: skip
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    model = BayesPFL(**(tiny_kwargs | {"image_size": 96}), synthetic_anomalies=True, synthesis_probability=1.0)
    batch.image, batch.gt_mask = model.pre_processor.transform(batch.image, batch.gt_mask)  # as on_train_batch_start
    backbone, layer = model.model.backbone, model.attention_layer
    images, labels, masks = model.synthesis.training_batch(
        batch.image, batch.gt_label, batch.gt_mask, backbone, layer, torch.Generator().manual_seed(0)
    )
    real = batch.gt_label.bool()
    assert images.shape == (16, 3, 96, 96) and masks.shape == (16, 96, 96)
    assert torch.equal(masks[real], (batch.gt_mask[real] > 0.5).float())
    assert torch.equal(images[real], batch.image[real])
    synthetic = ~real & labels.bool()
    assert synthetic.any()
    changed = (images != batch.image).any(1)
    assert (changed[~real] <= masks[~real].bool()).all()
    assert torch.equal(labels.bool(), masks.flatten(1).any(1))
    attention = model.model.backbone.class_attention(batch.image, model.attention_layer)
    foreground = attention_foreground(attention, (96, 96))
    assert (masks[~real].bool() <= foreground[~real]).all()
    # Anomalies are drawn on the images in [0, 1] and the changed pixels normalised again, as CLIP expects.
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    chosen = model.synthesis.choose(batch.gt_label, generator)
    drawn, drawn_masks, _ = model.synthesis.add_anomalies(
        batch.image * std + mean, foreground[chosen], chosen, batch.gt_label, generator
    )
    expected = torch.where(drawn_masks.bool().unsqueeze(1), (drawn - mean) / std, batch.image)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"synthetic_anomalies": False}, ValueError, "synthetic_anomalies=None"),
        ({"synthetic_anomalies": True, "anomaly_source_path": "no/such/textures"}, FileNotFoundError, "not a folder"),
    ],
)
def test_training_start_checks(
    options: dict, error: type, match: str, synthetic_root: Path, tiny_kwargs: dict, tmp_path: Path
) -> None:
    """A normal-only split without synthesis, or a missing texture folder, stops training at once with the fix."""
    from anomalib.engine import Engine

    datamodule = AuxiliaryTrain(synthetic_root, ["disc"], train_split="train", num_workers=0)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(error, match=match):
        engine.fit(BayesPFL(**tiny_kwargs, **options), datamodule=datamodule)
