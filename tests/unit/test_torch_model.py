"""Tests of the assembled torch model."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_bayes_pfl.torch_model import BayesPFLModel


@pytest.fixture(scope="module")
def model() -> BayesPFLModel:
    """Tiny random-weight model in eval mode."""
    torch.manual_seed(0)
    return BayesPFLModel("bayes-pfl-tiny", None, 64, (1, 2, 3, 4), num_samples=3, gaussian_sigma=1.0, top_k=20).eval()


class TestInference:
    """Eval forward."""

    @staticmethod
    def test_returns_inference_batch(model: BayesPFLModel) -> None:
        """Scores in [0, 1] and maps at the input size."""
        output = model(torch.randn(2, 3, 64, 64))
        assert isinstance(output, InferenceBatch)
        assert output.pred_score.shape == (2,)
        assert output.anomaly_map.shape == (2, 64, 64)
        assert ((output.pred_score >= 0) & (output.pred_score <= 1)).all()

    @staticmethod
    def test_deterministic_and_batch_independent(model: BayesPFLModel) -> None:
        """Same weights, same scores; an image scores the same alone or in a batch."""
        images = torch.randn(3, 3, 64, 64)
        first, second = model(images), model(images)
        assert torch.equal(first.pred_score, second.pred_score)
        alone = model(images[1:2])
        assert torch.allclose(alone.pred_score, first.pred_score[1:2], atol=1e-5)
        assert torch.allclose(alone.anomaly_map, first.anomaly_map[1:2], atol=1e-5)

    @staticmethod
    def test_class_name_matters(model: BayesPFLModel) -> None:
        """The class name is part of the prompt."""
        images = torch.randn(1, 3, 64, 64)
        default = model(images).pred_score
        named = model(images, ["screw"]).pred_score
        assert not torch.equal(default, named)

    @staticmethod
    def test_wrong_shape_is_explained(model: BayesPFLModel) -> None:
        """Images of the wrong size name the expected shape."""
        with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
            model(torch.randn(1, 3, 32, 32))


class TestState:
    """State dict round trip, stage and class name as extra state."""

    @staticmethod
    def test_round_trip(model: BayesPFLModel) -> None:
        """A fresh model loaded from the state dict scores identically, class name and stage included."""
        model.set_class_name("bottle")
        model.stage = 2
        fresh = BayesPFLModel("bayes-pfl-tiny", None, 64, (1, 2, 3, 4), num_samples=3, gaussian_sigma=1.0, top_k=20)
        fresh.load_state_dict(model.state_dict())
        fresh.eval()
        images = torch.randn(2, 3, 64, 64)
        assert fresh.class_name == "bottle"
        assert fresh.stage == 2
        assert torch.equal(fresh(images).pred_score, model(images).pred_score)
        model.set_class_name("object")
        model.stage = 1

    @staticmethod
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"num_samples": 0}, "num_samples"), ({"num_prompts": -1}, "num_prompts"), ({"num_flows": 0}, "num_flows")],
    )
    def test_bad_sizes(kwargs: dict, match: str) -> None:
        """Zero or negative sizes fail before CLIP is built."""
        with pytest.raises(ValueError, match=match):
            BayesPFLModel("bayes-pfl-tiny", None, 64, (1,), gaussian_sigma=1.0, **kwargs)


class TestTraining:
    """Training forward, gradients and parameter groups."""

    @staticmethod
    def test_gradients_reach_head_not_backbone() -> None:
        """Stage 1: prompts, flows, RCA and class mapping get gradients; CLIP gets none."""
        from anomalib_bayes_pfl.loss import BayesPFLLoss

        model = BayesPFLModel("bayes-pfl-tiny", None, 64, (2, 4), num_samples=2, gaussian_sigma=1.0).train()
        outputs = model(torch.randn(2, 3, 64, 64), ["disc", "metal_nut"])
        masks = torch.zeros(2, 64, 64)
        masks[1, 10:20, 10:20] = 1
        BayesPFLLoss()(outputs, torch.tensor([0, 1]), masks, 0, 1, model.backbone.grid_size)["loss"].backward()
        groups = model.parameter_groups()
        for name in ("prompt", "temperature", "flow", "other"):
            assert all(p.grad is not None for p in groups[name]), name
        assert all(p.grad is None for p in model.backbone.parameters())

    @staticmethod
    def test_parameter_groups_partition_the_head() -> None:
        """Stage-1 groups cover every head parameter once; stage 2 is the image branch."""
        model = BayesPFLModel("bayes-pfl-tiny", None, 64, (2, 4), num_samples=2, gaussian_sigma=1.0)
        groups = model.parameter_groups()
        stage1 = [id(p) for name in ("prompt", "temperature", "flow", "other") for p in groups[name]]
        assert len(stage1) == len(set(stage1))
        head = {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}
        stage2_only = {id(p) for p in groups["image_branch"]} - set(stage1)
        assert set(stage1) | stage2_only == head
        assert {id(p) for p in model.image_branch.class_mapping.parameters()} <= set(stage1)
