"""NaN and Inf never become a normal verdict: non-finite weights are refused, non-finite images are named or
scored anomalous (see ``anomalib_bayes_pfl/finite.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Trainer

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.checkpoints import head_state_dict, load_prompt_weights, save_prompt_weights
from anomalib_bayes_pfl.finite import check_finite_images, check_finite_loss, check_finite_weights


@pytest.fixture(scope="module")
def module() -> BayesPFL:
    """Tiny zero-shot-shaped model in eval mode (random weights)."""
    from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

    torch.manual_seed(0)
    return BayesPFL(**TINY_MODEL_ARGS).eval()


def _images(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class TestWeights:
    @staticmethod
    def test_the_first_bad_tensors_are_named() -> None:
        state = {"a": torch.ones(2), "b": torch.tensor([float("inf")]), "c": torch.tensor([float("nan")]), "d": 3}
        with pytest.raises(ValueError, match=r"head.pt holds non-finite values \(NaN or Inf\) in 'b', 'c';"):
            check_finite_weights(state, "head.pt")
        check_finite_weights({"a": torch.ones(2), "i": torch.tensor([7])}, "head.pt")

    @staticmethod
    def test_prompt_weights_with_nan_are_refused(module: BayesPFL, tmp_path: Path) -> None:
        """Before: the head loaded and every image scored NaN, which the post-processor labels normal."""
        path = save_prompt_weights(module.model, tmp_path / "head.pt")
        head = torch.load(path, weights_only=True)
        head["prompt_bank.prompt_context"][0, 0, 0] = float("nan")
        torch.save(head, path)
        with pytest.raises(ValueError, match=r"non-finite values .* 'prompt_bank.prompt_context'"):
            load_prompt_weights(module.model, path)
        unchanged = head_state_dict(module.model).values()
        assert all(torch.isfinite(value).all() for value in unchanged if torch.is_tensor(value))

    @staticmethod
    def test_a_checkpoint_with_nan_is_refused(module: BayesPFL, tmp_path: Path) -> None:
        """``--ckpt_path`` and ``load_from_checkpoint`` go through the model's ``on_load_checkpoint``."""
        trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
        trainer.strategy.connect(module)
        path = tmp_path / "model.ckpt"
        trainer.save_checkpoint(path)
        checkpoint = torch.load(path, weights_only=False)
        first_rca = next(key for key in checkpoint["state_dict"] if key.startswith("model.rca."))
        checkpoint["state_dict"][first_rca][0] = float("inf")
        torch.save(checkpoint, path)
        with pytest.raises(ValueError, match=r"non-finite values .* 'model\.rca\."):
            BayesPFL.load_from_checkpoint(path, weights_only=False)


class TestLoss:
    @staticmethod
    def test_the_step_and_terms_are_named() -> None:
        terms = {"cls": torch.tensor(1.0), "seg": torch.tensor(float("nan")), "loss": torch.tensor(float("nan"))}
        with pytest.raises(FloatingPointError, match=r"at step 7 \(in the terms 'seg', 'loss'\)"):
            check_finite_loss(terms, 7)
        with pytest.raises(FloatingPointError, match="on another DDP rank"):
            check_finite_loss({"loss": torch.tensor(1.0)}, 7, any_rank=True)
        check_finite_loss({"loss": torch.tensor(1.0)}, 7, any_rank=False)


class TestImages:
    @staticmethod
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_the_torch_model_scores_a_non_finite_image_anomalous(module: BayesPFL, value: float) -> None:
        """What the exported graph does (it cannot raise): +inf score and map, so the label is anomalous; the other
        images of the batch are unchanged. Before: a NaN map (labelled normal) and score 0.0 (OpenVINO)."""
        images = _images()
        with torch.no_grad():
            clean = module.model(images)
            images[1, 0, 5, 7] = value
            flagged = module.model(images)
        assert torch.isposinf(flagged.pred_score[1]) and torch.isposinf(flagged.anomaly_map[1]).all()
        assert torch.equal(flagged.pred_score[[0, 2]], clean.pred_score[[0, 2]])
        assert torch.equal(flagged.anomaly_map[[0, 2]], clean.anomaly_map[[0, 2]])
        post = PostProcessor()
        post.image_min, post.image_max, post._image_threshold = torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.5)  # noqa: SLF001
        post.pixel_min, post.pixel_max, post._pixel_threshold = torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.5)  # noqa: SLF001
        verdict = post(flagged)
        assert verdict.pred_label[1] and verdict.pred_score[1] == 1.0 and verdict.pred_mask[1].all()

    @staticmethod
    def test_eager_inference_names_the_image(module: BayesPFL) -> None:
        images = _images()
        images[2, 1, 0, 0] = float("nan")
        batch = ImageBatch(image=images, image_path=["a.png", "b.png", "c.png"])
        with pytest.raises(ValueError, match=r"Non-finite pixel values \(NaN or Inf\) in 'c.png'"):
            module.predict_step(batch, 0)
        with pytest.raises(ValueError, match="'image 2 of the batch'"):
            check_finite_images(images, None)
