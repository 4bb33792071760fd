"""Tests of the loss terms on known inputs."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_bayes_pfl.loss import BayesPFLLoss, balanced_focal_loss, dice_loss, orthogonality_loss


class TestFocal:
    """Class-balanced focal loss."""

    @staticmethod
    def test_known_value() -> None:
        """Foreground and background means are added."""
        probability = torch.tensor([[[0.9, 0.2, 0.4]]])
        target = torch.tensor([[[1.0, 0.0, 0.0]]])
        fg = -(0.1**2) * math.log(0.9)
        bg = (-(0.2**2) * math.log(0.8) - (0.4**2) * math.log(0.6)) / 2
        assert balanced_focal_loss(probability, target).item() == pytest.approx(fg + bg, rel=1e-5)

    @staticmethod
    def test_balance_ignores_class_sizes() -> None:
        """Doubling the background with identical pixels leaves the loss unchanged."""
        probability, target = torch.tensor([[[0.7, 0.3]]]), torch.tensor([[[1.0, 0.0]]])
        doubled = balanced_focal_loss(torch.tensor([[[0.7, 0.3, 0.3]]]), torch.tensor([[[1.0, 0.0, 0.0]]]))
        assert balanced_focal_loss(probability, target).item() == pytest.approx(doubled.item())


class TestDice:
    """Dice loss of the anomalous channel."""

    @staticmethod
    def test_known_value() -> None:
        """1 - 2*0.5/(1.5 + 1) with the 1e-5 smoothing."""
        probability, target = torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 0.0]])
        assert dice_loss(probability, target).item() == pytest.approx(1 - (1.0 + 1e-5) / (2.5 + 1e-5))

    @staticmethod
    def test_empty_target_and_prediction_is_zero() -> None:
        """Nothing predicted on a normal image costs nothing."""
        assert dice_loss(torch.zeros(1, 4), torch.zeros(1, 4)).item() == pytest.approx(0.0)


class TestOrthogonality:
    """Mean squared off-diagonal cosine similarity."""

    @staticmethod
    def test_parallel_embeddings() -> None:
        """Three identical embeddings: 6 of the 9 entries are 1."""
        assert orthogonality_loss(torch.ones(1, 3, 4)).item() == pytest.approx(6 / 9)


class TestBayesPFLLoss:
    """How the terms combine in the two stages."""

    @staticmethod
    def _outputs() -> dict:
        return {
            "image_logits": torch.tensor([[2.0, 0.0, 0.0, 1.0]]),
            "pixel_logits": [torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)],
            "text_embeddings": torch.eye(2).repeat(1, 2, 1, 1),
            "kl": torch.tensor([1.0, 2.0, 3.0]),
        }

    def test_stage1_terms(self) -> None:
        """Classification uses the chosen pair; KL is weighted; segmentation sums over layers."""
        terms = BayesPFLLoss(kl_weight=0.01)(self._outputs(), torch.tensor([1]), torch.ones(1, 4, 4), 1, 1, (2, 2))
        assert terms["cls"].item() == pytest.approx(-math.log(math.exp(1) / (1 + math.exp(1))))
        assert terms["kl"].item() == pytest.approx(0.06)
        single = balanced_focal_loss(torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4)) + dice_loss(
            torch.full((1, 4, 4), 0.5),
            torch.ones(1, 4, 4),
        )
        assert terms["seg"].item() == pytest.approx(2 * single.item(), rel=1e-5)
        assert terms["loss"].item() == pytest.approx(sum(terms[k].item() for k in ("cls", "seg", "kl", "orth")))

    def test_stage2_is_classification_only(self) -> None:
        """Stage 2 needs no masks and returns CE alone."""
        terms = BayesPFLLoss()(self._outputs(), torch.tensor([0]), None, 0, 2, (2, 2))
        assert set(terms) == {"cls", "loss"}

    def test_stage1_without_masks_is_a_clear_error(self) -> None:
        """Missing masks name the fix."""
        with pytest.raises(ValueError, match="AuxiliaryTrain"):
            BayesPFLLoss()(self._outputs(), torch.tensor([0]), None, 0, 1, (2, 2))
