"""Tests of the map and score fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bayes_pfl.anomaly_map import (
    AnomalyMapGenerator,
    image_anomaly_probability,
    pixel_anomaly_probability,
    top_k_mean,
)


def _reference_map(layer_logits: list[torch.Tensor], grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The reference order: upsample all logits, softmax each pair, average all maps."""
    maps = []
    for logits in layer_logits:
        upsampled = F.interpolate(
            logits.transpose(1, 2).unflatten(2, grid), size=size, mode="bilinear", align_corners=True
        )
        half = upsampled.shape[1] // 2
        for pair in range(half):
            maps.append(torch.softmax(upsampled[:, [pair, half + pair]], dim=1)[:, 1])
    return torch.stack(maps).mean(0)


class TestPixelProbability:
    """Sigmoid of upsampled differences equals the reference's softmax of upsampled logits."""

    @staticmethod
    def test_equals_reference_order() -> None:
        """Same map within float tolerance."""
        generator = torch.Generator().manual_seed(0)
        logits = [torch.randn(2, 16, 6, generator=generator) * 5 for _ in range(3)]
        ours = pixel_anomaly_probability(logits, (4, 4), (13, 13))
        assert torch.allclose(ours, _reference_map(logits, (4, 4), (13, 13)), atol=1e-6)


class TestScores:
    """Image probability, top-k and fusion."""

    @staticmethod
    def test_image_probability() -> None:
        """Mean over pairs of the pairwise softmax."""
        logits = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
        expected = (0.5 + torch.sigmoid(torch.tensor(2.0)).item()) / 2
        assert image_anomaly_probability(logits).item() == pytest.approx(expected)

    @staticmethod
    def test_top_k_clamps_to_map_size() -> None:
        """k larger than the map averages everything."""
        anomaly_map = torch.arange(4.0).view(1, 2, 2)
        assert top_k_mean(anomaly_map, 2).item() == pytest.approx(2.5)
        assert top_k_mean(anomaly_map, 100).item() == pytest.approx(1.5)

    @staticmethod
    @pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
    def test_alpha_weights_the_branches(alpha: float) -> None:
        """score = alpha * mean pair probability + (1 - alpha) * mean of the k largest values of the raw map."""
        generator = AnomalyMapGenerator(image_size=8, sigma=0.0, alpha=alpha, top_k=4)
        image_logits = torch.tensor([[0.0, 1.0, 3.0, -1.0]])  # pairs (0, 3) and (1, -1)
        pixel_logits = [torch.tensor([[[0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 4.0]]])]  # 2 x 2 grid, 1 pair
        score, anomaly_map = generator(image_logits, pixel_logits, (2, 2), (8, 8))
        image = (torch.sigmoid(torch.tensor(3.0)) + torch.sigmoid(torch.tensor(-2.0))) / 2
        top4 = anomaly_map.flatten().topk(4).values.mean()
        assert anomaly_map[0, 0, 0] == pytest.approx(0.5) and anomaly_map[0, -1, -1] == pytest.approx(
            torch.sigmoid(torch.tensor(4.0))
        )
        assert score.item() == pytest.approx((alpha * image + (1 - alpha) * top4).item(), abs=1e-6)

    @staticmethod
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [({"alpha": 1.5}, "score_alpha"), ({"top_k": 0}, "top_k"), ({"sigma": 40.0}, "gaussian_sigma")],
    )
    def test_bad_settings(kwargs: dict, match: str) -> None:
        """Impossible settings fail at construction with the argument's name."""
        with pytest.raises(ValueError, match=match):
            AnomalyMapGenerator(image_size=32, **kwargs)
