"""Heads and checkpoints carry the settings that shape their outputs; loading never silently replaces a setting."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from anomalib.models.components import GaussianBlur2d

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.checkpoints import load_prompt_weights
from anomalib_bayes_pfl.torch_model import BayesPFLModel

TINY = {"backbone": "bayes-pfl-tiny", "pretrained": None, "image_size": 64, "feature_layers": (1, 2)}
"""The smallest model: tiny CLIP, random weights, two tapped blocks."""
SCORING = {"num_samples": 2, "gaussian_sigma": 1.0, "top_k": 20}


def _model(**overrides: object) -> BayesPFLModel:
    torch.manual_seed(0)
    return BayesPFLModel(**(TINY | SCORING | overrides))


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A head of the tiny model, stored with the class name ``cable``."""
    model = _model()
    model.set_class_name("cable")
    return save_prompt_weights(model, tmp_path_factory.mktemp("head") / "head.pt")


class TestClassName:
    """An explicit class name always wins; the stored one is only the fallback."""

    @staticmethod
    def test_explicit_name_survives_loading(head: Path) -> None:
        model = _model(class_name="bottle")
        load_prompt_weights(model, head)
        assert model.class_name == "bottle"

    @staticmethod
    def test_stored_name_is_the_fallback(head: Path) -> None:
        model = _model()
        load_prompt_weights(model, head)
        assert model.class_name == "cable"

    @staticmethod
    def test_lightning_model_keeps_the_users_name(head: Path) -> None:
        model = BayesPFL(**TINY, **SCORING, class_name="bottle", prompt_weights=str(head))
        assert model.model.class_name == "bottle"

    @staticmethod
    def test_checkpoint_state_keeps_the_users_name() -> None:
        """A checkpoint's state dict (``--ckpt_path``) does not replace a name given to the model."""
        stored = _model()
        stored.set_class_name("cable")
        model = _model(class_name="bottle")
        model.load_state_dict(stored.state_dict())
        assert model.class_name == "bottle"


class TestSettings:
    """A head loads only into a model configured as the one that trained it."""

    @staticmethod
    @pytest.mark.parametrize(
        ("setting", "value", "expected"),
        [
            ("feature_layers", (3, 4), "feature_layers: head has [1, 2], this model has [3, 4]"),
            ("locality_window", 3, "locality_window: head has None, this model has 3"),
            ("activation", "quick_gelu", "activation: head has 'gelu', this model has 'quick_gelu'"),
            ("eval_seed", 5, "eval_seed: head has 0, this model has 5"),
        ],
    )
    def test_other_configuration_is_refused(head: Path, setting: str, value: object, expected: str) -> None:
        model = _model(**{setting: value})
        with pytest.raises(ValueError, match="other settings") as info:
            load_prompt_weights(model, head)
        assert expected in str(info.value)
        assert f"--model.{setting} " in str(info.value)

    @staticmethod
    def test_checkpoint_state_of_other_configuration_is_refused() -> None:
        """``--ckpt_path`` into a model tapping other blocks names the setting instead of loading silently."""
        stored = _model(locality_window=3)
        with pytest.raises(ValueError, match="locality_window: head has 3, this model has None"):
            _model().load_state_dict(stored.state_dict())

    @staticmethod
    def test_scoring_settings_may_change(head: Path) -> None:
        """Smoothing, score weight and top-k are the user's to choose at test time."""
        model = _model(gaussian_sigma=2.0, score_alpha=0.3, top_k=5)
        load_prompt_weights(model, head)

    @staticmethod
    def test_every_mismatch_is_named_before_the_model_is_built(head: Path) -> None:
        """Case 9: the paper defaults with a tiny head name each setting to pass, not a backbone error."""
        with pytest.raises(ValueError, match="other settings") as info:
            BayesPFL(backbone="bayes-pfl-tiny", pretrained=None, prompt_weights=str(head))
        message = str(info.value)
        for fix in ("--model.image_size 64", '--model.feature_layers "[1, 2]"', "--model.num_samples 2"):
            assert fix in message
        assert "image_size: head has 64, this model has 518" in message

    @staticmethod
    def test_head_without_settings_loads_with_a_warning(
        head: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Heads of earlier versions (no recorded settings) load as before, with a warning."""
        content = torch.load(head, weights_only=True)
        content["_extra_state"] = {"stage": 1, "class_name": "cable"}
        old = tmp_path / "old.pt"
        torch.save(content, old)
        model = _model()
        with caplog.at_level(logging.WARNING):
            load_prompt_weights(model, old)
        assert model.class_name == "cable"
        assert "could not be checked" in caplog.text


class TestSmoothingKernel:
    """The Gaussian kernel is derived from ``gaussian_sigma``, never read from a file."""

    @staticmethod
    def _kernel(model: BayesPFLModel) -> torch.Tensor:
        blur = model.anomaly_map.blur
        assert isinstance(blur, GaussianBlur2d)
        return blur.kernel

    def test_checkpoint_does_not_replace_sigma(self) -> None:
        """Sigma 1.0 and 1.05 have kernels of the same size: a stored kernel would load silently."""
        stored, model = _model(gaussian_sigma=1.0), _model(gaussian_sigma=1.05)
        expected = self._kernel(model).clone()
        model.load_state_dict(stored.state_dict())
        assert torch.equal(self._kernel(model), expected)

    def test_files_holding_a_kernel_still_load(self) -> None:
        """Checkpoints written before hold the kernel: it is ignored, not an unexpected key."""
        stored, model = _model(), _model(gaussian_sigma=1.05)
        state = stored.state_dict() | {"anomaly_map.blur.kernel": torch.ones(1, 1, 9, 9)}
        model.load_state_dict(state)
        assert not torch.equal(self._kernel(model), torch.ones(1, 1, 9, 9))
