# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Prompt flow: distributions over prompt biases, learned with planar normalizing flows.

Bayes-PFL turns the prompt bank into a distribution. Two kinds of distribution are learned:

* the **image-specific distribution** (ISD) ``q(z | g)`` is conditioned on the global CLIP feature ``g`` of the
  image; its base Gaussian and its flow parameters are both predicted from ``g`` (amortised). One sample is a
  vector added to every *context* token of every bank entry;
* two **image-agnostic distributions** (IAD) ``q(z_n)`` and ``q(z_a)`` start from learnable state vectors that go
  through a shared encoder; their flow parameters are free. Their samples are added to the *state* tokens of the
  normal and abnormal prompts.

Each distribution is a diagonal Gaussian ``q0`` pushed through ``K`` planar flows and regularised towards the prior
``N(0, I)`` by a one-sample Monte Carlo KL estimate.

Paper:
    Qu et al., CVPR 2025, Sec. 3.3-3.4 and Eq. 7. Planar flows: Rezende and Mohamed, "Variational Inference with
    Normalizing Flows", ICML 2015, Eq. 10-12. Reference code: ``models/PFL.py``, ``models/flows.py``,
    ``models/VPB.py`` of https://github.com/xiaozhen228/Bayes-PFL (MIT).

Deliberate differences from the reference:
    * The reference divides the image-agnostic log-determinant by the batch size (its sample is shared by the
      batch but the loss helper averages over images); here every distribution's KL is the plain one-sample
      estimate, independent of the batch size.
    * The unused reconstruction decoders of the reference are not built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import defaults

LOGDET_EPS = 1e-5
"""Added inside the log of the planar log-determinant, as in the reference (``models/flows.py``)."""


def planar_flow(
    z: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one planar flow ``f(z) = z + u * tanh(w^T z + b)`` and return its log-determinant.

    No invertibility constraint is put on ``u`` (the reference uses none either).

    Args:
        z (torch.Tensor): Points ``(..., D)``.
        u (torch.Tensor): Flow direction, broadcastable to ``(..., D)``.
        w (torch.Tensor): Flow normal, broadcastable to ``(..., D)``.
        b (torch.Tensor): Flow offset, broadcastable to ``(...)``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``f(z)`` of shape ``(..., D)`` and ``log|det df/dz| (...)``, computed
        as ``log(|1 + u^T psi| + 1e-5)`` with ``psi = (1 - tanh^2(w^T z + b)) w``.

    Example:
        >>> z = torch.zeros(1, 2)
        >>> out, logdet = planar_flow(z, torch.ones(2), torch.ones(2), torch.zeros(()))
        >>> out.tolist(), round(logdet.item(), 4)
        ([[0.0, 0.0]], 1.0986)
    """
    h = torch.tanh((w * z).sum(-1) + b)
    z_next = z + u * h.unsqueeze(-1)
    psi = w * (1 - h**2).unsqueeze(-1)
    logdet = torch.log(torch.abs(1 + (psi * u).sum(-1)) + LOGDET_EPS)
    return z_next, logdet


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis, without the ``2 pi`` constant.

    The constant cancels between ``log q0`` and ``log p`` in the KL estimate, as in the reference.
    """
    return (-0.5 * (torch.log(var) + (x - mean) ** 2 / var)).sum(-1)


def flow_kl(
    z0: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    zk: torch.Tensor,
    logdet: torch.Tensor,
) -> torch.Tensor:
    """One-sample estimate of ``KL(q_K || N(0, I))`` for a flow-transformed Gaussian.

    ``log q_K(z_K) = log q0(z0) - sum_k log|det J_k|``, so the estimate is
    ``log q0(z0) - sum_k log|det J_k| - log N(z_K; 0, I)``.

    Args:
        z0 (torch.Tensor): Base samples ``(..., D)``.
        mean (torch.Tensor): Base mean, broadcastable to ``z0``.
        var (torch.Tensor): Base variance, broadcastable to ``z0``.
        zk (torch.Tensor): Flowed samples ``(..., D)``.
        logdet (torch.Tensor): Summed log-determinants of the flow ``(...)``.

    Returns:
        torch.Tensor: KL estimates ``(...)``.
    """
    return (
        gaussian_log_density(z0, mean, var)
        - logdet
        - gaussian_log_density(zk, torch.zeros_like(zk), torch.ones_like(zk))
    )


class FlowSample(NamedTuple):
    """Samples of a prompt distribution and their KL estimates."""

    z: torch.Tensor
    """Flowed samples ``z_K``, shape ``(..., D)``."""
    kl: torch.Tensor
    """One-sample KL estimates, shape ``(...)``."""


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Two Softplus hidden layers, the shape of the reference ``InferenceBlock``."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.Softplus(),
        nn.Linear(hidden, hidden),
        nn.Softplus(),
        nn.Linear(hidden, out_features),
    )


class GaussianEncoder(nn.Module):
    """Predicts the base Gaussian ``q0 = N(mean, diag var)`` of a prompt distribution.

    The variance is ``exp(0.5 h)`` for the second MLP's output ``h`` (the reference's parameterisation, kept so
    that its released weights mean the same thing here).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.mean = _mlp(in_features, hidden, out_features)
        self.log_variance = _mlp(in_features, hidden, out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, var)`` for inputs ``(..., in_features)``."""
        return self.mean(x), torch.exp(0.5 * self.log_variance(x))


def _run_flows(
    z0: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``K`` planar flows; ``u, w`` are ``(..., K, D)``, ``b`` is ``(..., K)``."""
    z, logdet = z0, torch.zeros_like(z0[..., 0])
    for k in range(u.shape[-2]):
        z, step_logdet = planar_flow(z, u[..., k, :], w[..., k, :], b[..., k])
        logdet = logdet + step_logdet
    return z, logdet


class ImageSpecificFlow(nn.Module):
    """Image-specific distribution ``q(z | g)``: base Gaussian and flow parameters amortised from ``g``.

    Args:
        feature_dim (int): Width of the global image feature ``g``.
        latent_dim (int): Width of the samples (the text token width, where they are added).
        hidden_dim (int): Hidden width of the encoder MLPs.
        num_flows (int): Number of planar flows ``K``.
    """

    def __init__(self, feature_dim: int, latent_dim: int, hidden_dim: int, num_flows: int) -> None:
        super().__init__()
        self.num_flows, self.latent_dim = num_flows, latent_dim
        self.encoder = GaussianEncoder(feature_dim, hidden_dim, latent_dim)
        self.amortised_u = nn.Linear(feature_dim, num_flows * latent_dim)
        self.amortised_w = nn.Linear(feature_dim, num_flows * latent_dim)
        self.amortised_b = nn.Linear(feature_dim, num_flows)

    def forward(self, features: torch.Tensor, noise: torch.Tensor) -> FlowSample:
        """Draw ``S`` samples per image.

        Args:
            features (torch.Tensor): Global image features ``(N, feature_dim)``.
            noise (torch.Tensor): Standard-normal noise ``(N, S, latent_dim)`` or ``(S, latent_dim)`` (the same
                noise for every image, used at evaluation for deterministic scores).

        Returns:
            FlowSample: ``z`` of shape ``(N, S, latent_dim)`` and ``kl`` of shape ``(N, S)``.
        """
        batch = features.shape[0]
        mean, var = (t.unsqueeze(1) for t in self.encoder(features))
        u = self.amortised_u(features).view(batch, 1, self.num_flows, self.latent_dim)
        w = self.amortised_w(features).view(batch, 1, self.num_flows, self.latent_dim)
        b = self.amortised_b(features).view(batch, 1, self.num_flows)
        z0 = mean + var.sqrt() * noise
        zk, logdet = _run_flows(z0, u, w, b)
        return FlowSample(zk, flow_kl(z0, mean, var, zk, logdet))


class ImageAgnosticFlow(nn.Module):
    """Image-agnostic distribution: a learnable state vector, a (shared) encoder and free flow parameters.

    Args:
        encoder (GaussianEncoder): Encoder shared by the normal and abnormal distributions.
        state_dim (int): Width of the learnable state vector (the encoder's input width).
        latent_dim (int): Width of the samples.
        num_flows (int): Number of planar flows ``K``.
    """

    def __init__(self, encoder: GaussianEncoder, state_dim: int, latent_dim: int, num_flows: int) -> None:
        super().__init__()
        self._encoder = [encoder]  # held by the parent: a list keeps it out of this module's state dict
        self.state = nn.Parameter(torch.randn(state_dim))
        self.u = nn.Parameter(torch.randn(num_flows, latent_dim))
        self.w = nn.Parameter(torch.randn(num_flows, latent_dim))
        self.b = nn.Parameter(torch.randn(num_flows))

    def forward(self, noise: torch.Tensor) -> FlowSample:
        """Draw samples from standard-normal ``noise (S, latent_dim)``; returns ``z (S, D)`` and ``kl (S,)``."""
        mean, var = self._encoder[0](self.state)
        z0 = mean + var.sqrt() * noise
        zk, logdet = _run_flows(z0, self.u, self.w, self.b)
        return FlowSample(zk, flow_kl(z0, mean, var, zk, logdet))


class PromptFlow(nn.Module):
    """The three prompt distributions of Bayes-PFL and their fixed evaluation noise.

    Evaluation draws ``num_samples`` samples from noise fixed at construction (seeded by ``eval_seed``), the
    same for every image, so the same weights give the same scores whatever the batch, and the exported graph
    samples nothing at run time.

    Args:
        feature_dim (int): Width of the global image feature (the CLIP embedding width).
        latent_dim (int): Width of the text token embeddings, where samples are added.
        hidden_dim (int): Hidden width of the encoders (the reference uses half the vision width).
        num_flows (int): Planar flows per distribution ``K``. Defaults to ``10``.
        num_samples (int): Samples per image at evaluation ``R``. Defaults to ``10``.
        eval_seed (int): Seed of the evaluation noise. Defaults to ``0``.
    """

    def __init__(
        self,
        feature_dim: int,
        latent_dim: int,
        hidden_dim: int,
        num_flows: int = defaults.NUM_FLOWS,
        num_samples: int = defaults.NUM_SAMPLES,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_specific = ImageSpecificFlow(feature_dim, latent_dim, hidden_dim, num_flows)
        self.state_encoder = GaussianEncoder(feature_dim, hidden_dim, latent_dim)
        self.normal = ImageAgnosticFlow(self.state_encoder, feature_dim, latent_dim, num_flows)
        self.abnormal = ImageAgnosticFlow(self.state_encoder, feature_dim, latent_dim, num_flows)
        generator = torch.Generator().manual_seed(eval_seed)
        self.register_buffer("eval_noise", torch.randn(3, num_samples, latent_dim, generator=generator))

    @property
    def num_samples(self) -> int:
        """Samples per image at evaluation."""
        return self.eval_noise.shape[1]

    def forward(
        self,
        features: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[FlowSample, FlowSample, FlowSample]:
        """Sample context and state biases.

        In training mode one fresh sample is drawn per image for the context and one per step for each state
        (shared by the batch), as in the reference; in eval mode the fixed evaluation noise is used.

        Args:
            features (torch.Tensor): Global image features ``(N, feature_dim)``.
            generator (torch.Generator | None): Source of the training noise. Defaults to the global RNG.

        Returns:
            tuple[FlowSample, FlowSample, FlowSample]: Context samples ``(N, S, D)``, normal and abnormal state
            samples ``(S, D)``, with ``S = 1`` in training and ``num_samples`` in evaluation.
        """
        if self.training:
            shape = (features.shape[0], 1, self.latent_dim)
            context_noise = torch.randn(shape, generator=generator, device=features.device)
            normal_noise, abnormal_noise = torch.randn(
                2, 1, self.latent_dim, generator=generator, device=features.device
            )
        else:
            context_noise, normal_noise, abnormal_noise = self.eval_noise
        return self.image_specific(features, context_noise), self.normal(normal_noise), self.abnormal(abnormal_noise)
