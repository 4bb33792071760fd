"""Bad configuration fails at construction, before CLIP is built, with an error naming the value."""

from __future__ import annotations

import open_clip
import pytest
import torch

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.torch_model import BayesPFLModel


class CLIPBuilt(Exception):  # noqa: N818 - it marks an event, not an error of the code under test
    """Raised by the patched factory: the check came too late."""


@pytest.fixture
def no_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building any CLIP raises, so a test passes only if the error comes first."""

    def fail(*args: object, **kwargs: object) -> None:
        raise CLIPBuilt

    monkeypatch.setattr(open_clip, "create_model", fail)


@pytest.mark.usefixtures("no_clip")
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"backbone": "ViT-Huge-404"}, "Unknown backbone 'ViT-Huge-404'"),
        ({"backbone": "RN50"}, "not a ViT CLIP"),
        ({"feature_layers": (1, 9)}, r"feature_layers=\(1, 9\) must be 1-indexed blocks within 1..4"),
        ({"feature_layers": ()}, "feature_layers"),
        ({"image_size": 65}, "image_size=65 must be a positive multiple of .* patch size 8"),
        ({"image_size": 0}, "image_size=0"),
        ({"num_samples": 0}, "num_samples=0 must be at least 1"),
        ({"num_prompts": -2}, "num_prompts=-2 must be at least 1"),
        ({"num_flows": 0}, "num_flows=0"),
        ({"context_length": 0}, "context_length=0"),
        ({"state_length": -1}, "state_length=-1"),
        ({"stage_patience": 0}, "stage_patience=0"),
        ({"stage1_max_epochs": 0}, "stage1_max_epochs=0"),
        ({"warmup_ratio": 1.0}, "warmup_ratio=1.0"),
        ({"attention_layer": 5}, "attention_layer=5"),
        ({"activation": "relu"}, "Unknown activation 'relu'"),
        ({"pretrained": "no-such-tag"}, "Unknown pretrained tag 'no-such-tag'"),
    ],
)
def test_error_before_clip_is_built(tiny_kwargs: dict, override: dict, match: str) -> None:
    """Each bad value is refused by name before the backbone is built."""
    with pytest.raises(ValueError, match=match):
        BayesPFL(**(tiny_kwargs | override))


class TestClassName:
    """A class name is needed in every prompt; an empty one is refused rather than silently prompting with nothing."""

    @staticmethod
    @pytest.mark.parametrize("name", ["", "   ", "_"])
    def test_empty_class_name(name: str) -> None:
        """An empty (or blank after cleaning) class name is a clear error."""
        with pytest.raises(ValueError, match="Empty class name"):
            BayesPFLModel("bayes-pfl-tiny", None, 64, (1,), num_samples=1, gaussian_sigma=1.0, class_name=name)

    @staticmethod
    def test_per_image_names() -> None:
        """Per-image names: one per image, none empty."""
        model = BayesPFLModel("bayes-pfl-tiny", None, 64, (1,), num_samples=1, gaussian_sigma=1.0).eval()
        images = torch.zeros(2, 3, 64, 64)
        with pytest.raises(ValueError, match="Got 1 class names for 2 images"):
            model(images, ["bottle"])
        with pytest.raises(ValueError, match="Empty class name"):
            model(images, ["bottle", ""])
