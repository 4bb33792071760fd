# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Residual cross-modal attention (RCA): aligns sampled text embeddings with the patches of one ViT layer.

Each text embedding is a query over the patches of a tapped layer. Keys and values are the same tensor: the
layer's raw patch tokens projected (one bias-free linear per layer) into the joint space and L2-normalised. The
attended patch context is added back to the text embedding (residual weight 1) and the sum is re-normalised.
Queries attend independently of each other, so any subset of prompts can be refined on its own.

Paper:
    Qu et al., CVPR 2025, Sec. 3.5. Reference code: ``Zero_Parameter`` in ``models/VPB.py`` of
    https://github.com/xiaozhen228/Bayes-PFL (MIT). The reference's 1x1 ``Conv1d`` query projection is the
    ``nn.Linear`` here (same weights, squeezed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

NUM_HEADS = 4
"""Attention heads of the reference RCA."""


class ResidualCrossModalAttention(nn.Module):
    """RCA over ``num_layers`` tapped layers with a query projection shared by all layers.

    Args:
        vision_width (int): Width of the raw patch tokens.
        embed_dim (int): Width of the text embeddings (joint space).
        num_layers (int): Number of tapped layers, one patch projection each.
        num_heads (int): Attention heads; must divide ``embed_dim``. Defaults to ``4``.

    Example:
        >>> rca = ResidualCrossModalAttention(vision_width=8, embed_dim=4, num_layers=1)
        >>> text, patches = rca(torch.randn(2, 6, 4), torch.randn(2, 9, 8), layer=0)
        >>> text.shape, patches.shape
        (torch.Size([2, 6, 4]), torch.Size([2, 9, 4]))
    """

    def __init__(self, vision_width: int, embed_dim: int, num_layers: int, num_heads: int = NUM_HEADS) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"num_heads={num_heads} must divide the embedding width {embed_dim}."
            raise ValueError(msg)
        self.num_heads = num_heads
        # the reference scales by the full width, not the head width
        self.scale = embed_dim**-0.5
        self.query = nn.Linear(embed_dim, embed_dim)
        self.patch_projections = nn.ModuleList(
            nn.Linear(vision_width, embed_dim, bias=False) for _ in range(num_layers)
        )

    def project_patches(self, patches: torch.Tensor, layer: int) -> torch.Tensor:
        """Project raw patch tokens ``(N, P, W)`` of ``layer`` into the joint space and normalise them."""
        return F.normalize(self.patch_projections[layer](patches), dim=-1)

    def forward(self, text: torch.Tensor, patches: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine text embeddings with one layer's patches.

        Args:
            text (torch.Tensor): Normalised text embeddings ``(N, T, E)``, per image.
            patches (torch.Tensor): Raw patch tokens ``(N, P, W)`` of the layer.
            layer (int): Index of the layer among the tapped ones.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: Refined, normalised text embeddings ``(N, T, E)`` and the projected,
            normalised patch features ``(N, P, E)``.
        """
        features = self.project_patches(patches, layer)
        batch, num_text, width = text.shape
        heads = self.num_heads
        query = self.query(text).view(batch, num_text, heads, -1).transpose(1, 2)  # (N, h, T, E/h)
        keys = features.view(batch, features.shape[1], heads, -1).transpose(1, 2)  # (N, h, P, E/h)
        attention = torch.softmax(query @ keys.transpose(-1, -2) * self.scale, dim=-1)  # (N, h, T, P)
        context = (attention @ keys).transpose(1, 2).reshape(batch, num_text, width)
        return F.normalize(context + text, dim=-1), features
