# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Image branch: image-level logits of every prompt, in the two forms of the two training stages.

Stage 1 compares mapped text embeddings with CLIP's global feature. Stage 2, trained last and alone, adds a
pooled summary of the tapped layers' patch tokens to the global feature before comparing; the reference found
that this late, classification-only stage improves zero-shot image scores.

Paper:
    Qu et al., CVPR 2025, Sec. 3.5-3.6. Reference code: ``Context_Prompting.forward`` and ``Global_Feature`` in
    ``models/VPB.py`` of https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class PatchAttentionPooling(nn.Module):
    """Pools the concatenated patch tokens of the tapped layers with learned attention weights.

    Args:
        vision_width (int): Width of the raw patch tokens of one layer.
        num_layers (int): Number of tapped layers (their tokens are concatenated).
        hidden_dim (int): Width of the pooled features.
        out_dim (int): Width of the output (the joint embedding width).
    """

    def __init__(self, vision_width: int, num_layers: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fuse = nn.Linear(vision_width * num_layers, hidden_dim)
        self.score = nn.Linear(hidden_dim, 1)
        self.project = nn.Linear(hidden_dim, out_dim)

    def forward(self, patches: list[torch.Tensor]) -> torch.Tensor:
        """Pool ``(N, P, W)`` tokens of each layer into ``(N, out_dim)``."""
        x = self.fuse(torch.cat(patches, dim=-1))  # (N, P, hidden)
        weights = torch.softmax(self.score(x), dim=1)
        return self.project((weights * x).sum(dim=1))


class ImageBranch(nn.Module):
    """Image logits for every text embedding; the modules here are the only ones trained in stage 2.

    Args:
        embed_dim (int): Joint embedding width.
        vision_width (int): Width of the raw patch tokens.
        num_layers (int): Number of tapped layers.
    """

    def __init__(self, embed_dim: int, vision_width: int, num_layers: int) -> None:
        super().__init__()
        self.class_mapping = nn.Linear(embed_dim, embed_dim)
        self.image_mapping = nn.Linear(embed_dim, embed_dim)
        self.pooling = PatchAttentionPooling(vision_width, num_layers, vision_width // 2, embed_dim)

    def forward(
        self,
        text: torch.Tensor,
        global_feature: torch.Tensor,
        patches: list[torch.Tensor],
        scale: torch.Tensor,
        stage: int,
    ) -> torch.Tensor:
        """Scaled cosine logits ``(N, T)`` between each image and its ``T`` text embeddings ``(N, T, E)``."""
        text = F.normalize(self.class_mapping(text), dim=-1)
        image = global_feature if stage == 1 else self.image_mapping(global_feature + self.pooling(patches))
        image = F.normalize(image, dim=-1)
        return scale * (text @ image.unsqueeze(-1)).squeeze(-1)
