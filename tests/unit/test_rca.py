"""Tests of the residual cross-modal attention."""

from __future__ import annotations

import pytest
import torch

from anomalib_bayes_pfl.rca import ResidualCrossModalAttention


class TestRCA:
    """Shapes, normalisation and query independence."""

    @staticmethod
    def test_outputs_are_normalised() -> None:
        """Refined text and projected patches are unit vectors."""
        rca = ResidualCrossModalAttention(vision_width=12, embed_dim=8, num_layers=2)
        text, patches = rca(torch.randn(2, 5, 8), torch.randn(2, 9, 12), layer=1)
        assert torch.allclose(text.norm(dim=-1), torch.ones(2, 5))
        assert torch.allclose(patches.norm(dim=-1), torch.ones(2, 9))

    @staticmethod
    def test_queries_attend_independently() -> None:
        """A subset of prompts is refined exactly as within the full set."""
        rca = ResidualCrossModalAttention(vision_width=12, embed_dim=8, num_layers=1)
        text, patches = torch.randn(1, 6, 8), torch.randn(1, 9, 12)
        full, _ = rca(text, patches, 0)
        part, _ = rca(text[:, 2:4], patches, 0)
        assert torch.allclose(full[:, 2:4], part, atol=1e-6)

    @staticmethod
    def test_heads_must_divide_width() -> None:
        """A bad head count is refused."""
        with pytest.raises(ValueError, match="num_heads"):
            ResidualCrossModalAttention(vision_width=12, embed_dim=10, num_layers=1)
