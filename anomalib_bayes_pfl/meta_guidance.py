# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Meta-guided prompt tuning (MPTS, human-free prompting paper).

Prompts trained on synthetic anomalies can learn the synthesis (Perlin blobs, noise textures) instead of what
"damaged" means. A fixed, hand-written *meta prompt* ("a photo of a flawless/damaged <class>.") carries CLIP's
general notion of a defect. At every step, the gradient of the task loss ``G_d`` is compared with the gradient
``G_g`` of a guide loss that pulls the learned prompts' image-level normal/abnormal probabilities towards the meta
prompt's; where they conflict (``<G_d, G_g> < 0``) the conflicting component is removed,
``G = G_d - strength * <G_d, G_g> / |G_g|^2 * G_g``, before the optimiser step, so Adam's moments see the
projected gradient. ``strength = 1`` removes the conflict exactly; ``0`` is plain training.

The paper's body could not be read: this ProGrad-style projection is our reconstruction of "iteratively adjusts
the gradient-based optimization direction of learnable prompts", with the strength lambda = 1 it reports best.
The guide loss is KL(p_meta || p_prompts) on the global image feature, both at CLIP's logit scale of 100.

Paper:
    Chen et al., "Human-Free Automated Prompting for Vision-Language Anomaly Detection: Prompt Optimization with
    Meta-guiding Prompt Scheme", arXiv 2406.18197; Zhu et al., "Prompt-aligned Gradient for Prompt Tuning",
    ICCV 2023 (the projection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .backbone import ClipBackbone

META_TEMPLATES = ("a photo of a flawless {}.", "a photo of a damaged {}.")
"""The fixed normal and abnormal meta prompts."""

META_LOGIT_SCALE = 100.0
"""CLIP's trained logit scale, used for both distributions so the KL compares like with like."""


def project_conflicting(
    task: Sequence[torch.Tensor],
    guide: Sequence[torch.Tensor],
    strength: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Remove ``strength`` times the component of ``task`` that opposes ``guide`` (all tensors taken as one vector).

    Args:
        task (Sequence[torch.Tensor]): Task-loss gradients, one per parameter.
        guide (Sequence[torch.Tensor]): Guide-loss gradients of the same parameters.
        strength (float): Share of the conflicting component removed (lambda). Defaults to ``1``.

    Returns:
        tuple[list[torch.Tensor], torch.Tensor]: The gradients to apply, and the inner product ``<G_d, G_g>``
        before projection (negative when they conflicted).

    Example:
        >>> applied, dot = project_conflicting([torch.tensor([1.0, -1.0])], [torch.tensor([0.0, 1.0])])
        >>> applied[0].tolist(), dot.item()
        ([1.0, 0.0], -1.0)
    """
    dot = sum((t * g).sum() for t, g in zip(task, guide, strict=True))
    norm = sum(g.square().sum() for g in guide)
    if dot >= 0 or norm == 0:
        return list(task), dot
    scale = strength * dot / norm
    return [t - scale * g for t, g in zip(task, guide, strict=True)], dot


class MetaGuidance(nn.Module):
    """Guide loss against the meta prompts, and the projected update of the prompt parameters.

    Args:
        strength (float): lambda, the share of the conflicting gradient component removed. Defaults to ``1``.
    """

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if strength < 0:
            msg = f"meta_strength={strength} must be >= 0 (1 removes conflicting gradient components exactly)."
            raise ValueError(msg)
        self.strength = strength
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    @torch.no_grad()
    def meta_text(self, backbone: ClipBackbone, class_names: Sequence[str]) -> torch.Tensor:
        """Normalised meta-prompt embeddings ``(N, 2, E)`` (normal, abnormal) per image, cached per class name."""
        device = backbone.clip.text_projection.device
        missing = [name for name in dict.fromkeys(class_names) if (name, device) not in self._cache]
        if missing:
            texts = [template.format(name) for name in missing for template in META_TEMPLATES]
            tokens = open_clip.tokenize(texts, context_length=backbone.context_length).to(device)
            features = backbone.encode_text_embeddings(backbone.token_embedding(tokens), tokens.argmax(dim=-1))
            for name, pair in zip(missing, F.normalize(features, dim=-1).view(len(missing), 2, -1), strict=True):
                self._cache[name, device] = pair
        return torch.stack([self._cache[name, device] for name in class_names])

    @staticmethod
    def loss(global_feature: torch.Tensor, text: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """KL(p_meta || p_prompts) of the image-level (normal, abnormal) probabilities, mean over images and pairs.

        Args:
            global_feature (torch.Tensor): Global image features ``(N, E)``.
            text (torch.Tensor): Normalised learned prompt embeddings ``(N, 2, B, E)``.
            meta (torch.Tensor): Normalised meta-prompt embeddings ``(N, 2, E)``.
        """
        image = F.normalize(global_feature, dim=-1)
        learned = META_LOGIT_SCALE * torch.einsum("ne,nkbe->nbk", image, text)  # (N, B, 2)
        target = META_LOGIT_SCALE * torch.einsum("ne,nke->nk", image, meta).unsqueeze(1).expand_as(learned)
        divergence = F.kl_div(learned.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="none")
        return divergence.sum(-1).mean()

    def guide_gradients(self, guide_loss: torch.Tensor, parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        """Gradients of the guide loss (the task graph is kept for the task's backward pass)."""
        gradients = torch.autograd.grad(guide_loss, parameters, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, gradients, strict=True)]

    def backward(
        self,
        task_loss: torch.Tensor,
        outputs: dict[str, torch.Tensor],
        backbone: ClipBackbone,
        class_names: Sequence[str],
        parameters: Sequence[nn.Parameter],
        backward: Callable[[torch.Tensor], None],
        average: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor,
    ) -> dict[str, torch.Tensor]:
        """The guided backward pass of one step: task gradients with their conflicting component removed.

        Args:
            task_loss (torch.Tensor): The step's training loss.
            outputs (dict[str, torch.Tensor]): The torch model's training outputs (``global_feature``,
                ``text_embeddings``).
            backbone (ClipBackbone): The frozen CLIP that encodes the meta prompts.
            class_names (Sequence[str]): One class name per image.
            parameters (Sequence[nn.Parameter]): The prompt parameters whose gradients are guided.
            backward (Callable): Runs the task loss's backward pass (Lightning's ``manual_backward``).
            average (Callable): Averages a tensor over processes. Defaults to identity.

        Returns:
            dict[str, torch.Tensor]: ``meta_loss``, ``meta_conflict`` and ``meta_alignment``, for logging.
        """
        meta = self.meta_text(backbone, class_names)
        guide_loss = self.loss(outputs["global_feature"], outputs["text_embeddings"], meta)
        guide = self.guide_gradients(guide_loss, parameters)
        backward(task_loss)
        return self.project(parameters, guide, average) | {"meta_loss": guide_loss.detach()}

    def project(
        self,
        parameters: Sequence[nn.Parameter],
        guide: Sequence[torch.Tensor],
        average: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor,
    ) -> dict[str, torch.Tensor]:
        """Replace the parameters' ``.grad`` (the task gradient) by the projected gradient, in place.

        Args:
            parameters (Sequence[nn.Parameter]): The prompt parameters, after the task loss's backward pass.
            guide (Sequence[torch.Tensor]): Their guide-loss gradients.
            average (Callable): Averages a tensor over processes (DDP averages the task gradients in backward;
                the guide gradients must agree on every rank too). Defaults to identity.

        Returns:
            dict[str, torch.Tensor]: ``meta_conflict`` (1 when the gradients conflicted) and ``meta_alignment``
            (cosine between the applied gradient and the guide gradient).
        """
        sizes = [g.numel() for g in guide]
        guide = list(average(torch.cat([g.flatten() for g in guide])).split(sizes))
        guide = [g.view_as(p) for g, p in zip(guide, parameters, strict=True)]
        task = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        applied, dot = project_conflicting(task, guide, self.strength)
        for parameter, gradient in zip(parameters, applied, strict=True):
            parameter.grad = gradient
        flat_applied, flat_guide = torch.cat([a.flatten() for a in applied]), torch.cat([g.flatten() for g in guide])
        return {
            "meta_conflict": (dot < 0).float(),
            "meta_alignment": F.cosine_similarity(flat_applied, flat_guide, dim=0, eps=1e-12),
        }
