"""Tests of the planar flows, the KL estimate and the prompt distributions."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_bayes_pfl.prompt_flow import PromptFlow, flow_kl, gaussian_log_density, planar_flow


class TestPlanarFlow:
    """``planar_flow`` against autograd."""

    @staticmethod
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_logdet_matches_jacobian(seed: int) -> None:
        """The returned log-determinant equals log|det J| of autograd's Jacobian (up to the 1e-5 guard)."""
        generator = torch.Generator().manual_seed(seed)
        z, u, w = (torch.randn(5, generator=generator, dtype=torch.float64) for _ in range(3))
        b = torch.randn((), generator=generator, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(lambda x: planar_flow(x, u, w, b)[0], z)
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert torch.allclose(planar_flow(z, u, w, b)[1], expected, atol=1e-4)

    @staticmethod
    def test_batched_shapes() -> None:
        """Leading axes broadcast: parameters per batch element, samples per element."""
        z = torch.randn(4, 3, 8)
        u, w, b = torch.randn(4, 1, 8), torch.randn(4, 1, 8), torch.randn(4, 1)
        out, logdet = planar_flow(z, u, w, b)
        assert out.shape == (4, 3, 8)
        assert logdet.shape == (4, 3)

    @staticmethod
    def test_gradcheck() -> None:
        """Gradients of the flow are correct in float64."""
        inputs = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        b = torch.randn((), dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda z, u, w, b: planar_flow(z, u, w, b), (*inputs, b))


class TestKL:
    """The one-sample KL estimate against a hand-computed value."""

    @staticmethod
    def test_hand_computed() -> None:
        """Worked example in one dimension."""
        z0, mean, var = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([4.0])
        zk, logdet = torch.tensor([2.0]), torch.tensor(0.3)
        log_q0 = -0.5 * (math.log(4.0) + 0.25 / 4.0)
        log_p = -0.5 * 4.0
        assert flow_kl(z0, mean, var, zk, logdet).item() == pytest.approx(log_q0 - 0.3 - log_p)

    @staticmethod
    def test_identity_flow_gives_gaussian_kl_in_expectation() -> None:
        """With no flow, the estimate averages to the closed-form KL of two Gaussians."""
        generator = torch.Generator().manual_seed(0)
        mean, var = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 2.0])
        z0 = mean + var.sqrt() * torch.randn(200_000, 2, generator=generator)
        estimate = flow_kl(z0, mean, var, z0, torch.zeros(200_000)).mean()
        closed_form = 0.5 * (var + mean**2 - 1 - var.log()).sum()
        assert estimate.item() == pytest.approx(closed_form.item(), abs=0.02)

    @staticmethod
    def test_log_density_drops_constant() -> None:
        """Standard normal at 0 has log-density 0 without the 2*pi constant."""
        assert gaussian_log_density(torch.zeros(3), torch.zeros(3), torch.ones(3)).item() == 0.0


class TestPromptFlow:
    """Sampling modes of the three distributions."""

    @staticmethod
    def test_training_draws_one_sample_per_image_and_one_state_sample() -> None:
        """Training: context ``(N, 1, D)``, states ``(1, D)``, finite KL."""
        flow = PromptFlow(feature_dim=6, latent_dim=4, hidden_dim=5, num_flows=2, num_samples=3).train()
        context, normal, abnormal = flow(torch.randn(2, 6))
        assert context.z.shape == (2, 1, 4)
        assert normal.z.shape == abnormal.z.shape == (1, 4)
        assert torch.isfinite(torch.stack([context.kl.mean(), normal.kl.mean(), abnormal.kl.mean()])).all()

    @staticmethod
    def test_evaluation_is_fixed_and_per_image() -> None:
        """Eval: R samples, the same on repeated calls and independent of the rest of the batch."""
        flow = PromptFlow(feature_dim=6, latent_dim=4, hidden_dim=5, num_flows=2, num_samples=3).eval()
        features = torch.randn(3, 6)
        context, normal, _ = flow(features)
        again, normal_again, _ = flow(features[1:2])
        assert context.z.shape == (3, 3, 4)
        assert torch.allclose(context.z[1:2], again.z, atol=1e-6)
        assert torch.equal(normal.z, normal_again.z)

    @staticmethod
    def test_eval_seed_changes_samples() -> None:
        """Different evaluation seeds give different fixed noise."""
        first = PromptFlow(6, 4, 5, num_samples=2, eval_seed=0)
        second = PromptFlow(6, 4, 5, num_samples=2, eval_seed=1)
        assert not torch.equal(first.eval_noise, second.eval_noise)

    @staticmethod
    def test_state_encoder_is_shared() -> None:
        """Both image-agnostic distributions use one encoder, stored once in the state dict."""
        flow = PromptFlow(6, 4, 5)
        assert flow.normal._encoder[0] is flow.abnormal._encoder[0] is flow.state_encoder
        assert not any(key.startswith(("normal._encoder", "abnormal._encoder")) for key in flow.state_dict())
