"""The authors' released heads: key mapping on synthetic state dicts of the reference layout, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_bayes_pfl.checkpoints import load_prompt_weights
from anomalib_bayes_pfl.torch_model import BayesPFLModel

E, V, H, K, B, P, L = (
    64,
    96,
    48,
    10,
    3,
    5,
    4,
)  # tiny: embed/text width, vision width, hidden, flows, bank, tokens, layers


def _mlp(prefix: str, in_dim: int, out_dim: int) -> dict[str, torch.Tensor]:
    shapes = {"0": (H, in_dim), "2": (H, H), "4": (out_dim, H)}
    return {
        f"{prefix}.module.{index}.{kind}": torch.randn(shape if kind == "weight" else shape[:1])
        for index, shape in shapes.items()
        for kind in ("weight", "bias")
    }


def _encoder(prefix: str) -> dict[str, torch.Tensor]:
    return _mlp(f"{prefix}.weight_mean", E, E) | _mlp(f"{prefix}.weight_log_variance", E, E)


def reference_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with the reference ``Context_Prompting`` key layout and the tiny model's sizes."""
    state = {
        "prompt_context": torch.randn(B, P, E),
        "prompt_state_normal": torch.randn(B, P, E),
        "prompt_state_abnormal": torch.randn(B, P, E),
        "temperature_pixel": torch.tensor(2.0),
        "temperature_image": torch.tensor(3.0),
        "PFL_context.amor_u.weight": torch.randn(K * E, E),
        "PFL_context.amor_u.bias": torch.randn(K * E),
        "PFL_context.amor_w.weight": torch.randn(K * E, E),
        "PFL_context.amor_w.bias": torch.randn(K * E),
        "PFL_context.amor_b.weight": torch.randn(K, E),
        "PFL_context.amor_b.bias": torch.randn(K),
        "PFL_context.p_mu.0.weight": torch.randn(E, E),
        "PFL_context.p_mu.0.bias": torch.randn(E),
        "fuse.fuse_modules.weight": torch.randn(V // 2, V * L),
        "fuse.fuse_modules.bias": torch.randn(V // 2),
        "fuse.compress.weight": torch.randn(1, V // 2),
        "fuse.compress.bias": torch.randn(1),
        "fuse.post_process.weight": torch.randn(E, V // 2),
        "fuse.post_process.bias": torch.randn(E),
        "RCA.q_proj_pre.weight": torch.randn(E, E, 1),
        "RCA.q_proj_pre.bias": torch.randn(E),
        "class_mapping.weight": torch.randn(E, E),
        "class_mapping.bias": torch.randn(E),
        "image_mapping.weight": torch.randn(E, E),
        "image_mapping.bias": torch.randn(E),
    }
    state |= {f"RCA.linear_proj.{layer}.weight": torch.randn(E, V) for layer in range(L)}
    for name in ("normal", "abnormal"):
        state |= {
            f"PFL_{name}.amor_u": torch.randn(1, K, E, 1),
            f"PFL_{name}.amor_w": torch.randn(1, K, 1, E),
            f"PFL_{name}.amor_b": torch.randn(1, K, 1, 1),
            f"PFL_{name}.state": torch.randn(1, E),
        }
        state |= _encoder(f"PFL_{name}.encoder") | _mlp(f"PFL_{name}.decoder.weight_mean", E, E)
    state |= _encoder("context_encoder") | _encoder("state_encoder") | _encoder("PFL_context.encoder")
    state |= _mlp("context_decoder.weight_mean", E, E) | _mlp("state_decoder.weight_mean", E, E)
    return state


@pytest.fixture
def model() -> BayesPFLModel:
    """Tiny model with the reference's four tapped layers."""
    return BayesPFLModel("bayes-pfl-tiny", None, 64, (1, 2, 3, 4), num_samples=2, gaussian_sigma=1.0)


def _save(tmp_path: Path, state: dict, name: str = "train_visa.pth") -> Path:
    path = tmp_path / name
    torch.save({"MyModel": state}, path)
    return path


def test_every_key_lands_in_place(model: BayesPFLModel, tmp_path: Path) -> None:
    """Renamed and reshaped tensors end where the reference uses them."""
    state = reference_state_dict()
    load_prompt_weights(model, _save(tmp_path, state))
    flow = model.prompt_flow
    assert torch.equal(model.prompt_bank.prompt_state_abnormal, state["prompt_state_abnormal"])
    assert torch.equal(model.temperature_pixel, state["temperature_pixel"])
    assert torch.equal(
        flow.image_specific.encoder.log_variance[4].weight, state["context_encoder.weight_log_variance.module.4.weight"]
    )
    assert torch.equal(flow.state_encoder.mean[2].bias, state["state_encoder.weight_mean.module.2.bias"])
    assert torch.equal(flow.image_specific.amortised_b.weight, state["PFL_context.amor_b.weight"])
    assert torch.equal(flow.normal.u, state["PFL_normal.amor_u"][0, :, :, 0])
    assert torch.equal(flow.abnormal.w, state["PFL_abnormal.amor_w"][0, :, 0, :])
    assert torch.equal(flow.abnormal.b, state["PFL_abnormal.amor_b"].flatten())
    assert torch.equal(flow.normal.state, state["PFL_normal.state"][0])
    assert torch.equal(model.rca.query.weight, state["RCA.q_proj_pre.weight"][..., 0])
    assert torch.equal(model.rca.patch_projections[3].weight, state["RCA.linear_proj.3.weight"])
    assert torch.equal(model.image_branch.pooling.score.weight, state["fuse.compress.weight"])
    assert torch.equal(model.image_branch.class_mapping.bias, state["class_mapping.bias"])
    assert model.stage == 2


def test_stage_from_epoch_file_name(model: BayesPFLModel, tmp_path: Path) -> None:
    """Per-epoch files ``epoch_post_{epoch}_{stage}.pth`` give their stage."""
    load_prompt_weights(model, _save(tmp_path, reference_state_dict(), "epoch_post_7_1.pth"))
    assert model.stage == 1


@pytest.mark.parametrize("name", ["train_visa_1.pth", "my_run_3.pth", "my_run_1.pth", "best_epoch_post_7_1.pth"])
def test_stage_is_read_only_from_epoch_file_names(model: BayesPFLModel, tmp_path: Path, name: str) -> None:
    """Any other name is a released (stage 2) head, whatever number it ends with."""
    load_prompt_weights(model, _save(tmp_path, reference_state_dict(), name))
    assert model.stage == 2


def test_unknown_key_is_an_error(model: BayesPFLModel, tmp_path: Path) -> None:
    """A key the mapping does not know is named."""
    state = reference_state_dict() | {"extra_head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="extra_head.weight"):
        load_prompt_weights(model, _save(tmp_path, state))


def test_missing_key_is_an_error(model: BayesPFLModel, tmp_path: Path) -> None:
    """A missing tensor is named with the sizes to check."""
    state = reference_state_dict()
    del state["RCA.linear_proj.2.weight"]
    with pytest.raises(ValueError, match="rca.patch_projections.2.weight"):
        load_prompt_weights(model, _save(tmp_path, state))


def test_wrong_sizes_are_an_error(tmp_path: Path) -> None:
    """Reference weights of other sizes (here two tapped layers instead of four) are refused."""
    model = BayesPFLModel("bayes-pfl-tiny", None, 64, (2, 4), num_samples=2, gaussian_sigma=1.0)
    with pytest.raises(ValueError, match="feature_layers"):
        load_prompt_weights(model, _save(tmp_path, reference_state_dict()))
