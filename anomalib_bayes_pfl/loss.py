# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Training losses of Bayes-PFL and how they combine.

Stage 1: ``L = L_cls + sum_layers (Focal + Dice) + kl_weight * (KL_ISD + KL_IAD,n + KL_IAD,a) + L_orth``, where the
classification and segmentation terms use one prompt pair of the bank per step (the same for the whole batch)
and the orthogonality term spreads the normal (and the abnormal) embeddings of the bank apart.
Stage 2 trains the image branch alone with ``L_cls``.

Paper:
    Qu et al., CVPR 2025, Eq. 7 and Sec. 3.6. Reference code: ``loss.py`` and ``train.py`` of
    https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from . import defaults

FOCAL_EPS = 1e-8
"""Guards the log and the pixel counts of the focal loss (reference ``FocalLoss``)."""

DICE_EPS = 1e-5
"""Smoothing of the dice ratio (reference ``DiceLoss``)."""


def balanced_focal_loss(
    probability: torch.Tensor, target: torch.Tensor, gamma: float = defaults.FOCAL_GAMMA
) -> torch.Tensor:
    """Focal loss averaged separately over anomalous and normal pixels, then summed.

    Averaging each class on its own keeps small defects from being drowned by the background.

    Args:
        probability (torch.Tensor): Anomalous probability per pixel ``(N, H, W)``.
        target (torch.Tensor): Binary ground truth ``(N, H, W)``.
        gamma (float): Focusing exponent. Defaults to ``2``.

    Returns:
        torch.Tensor: Scalar loss.

    Example:
        >>> p = torch.tensor([[[0.9, 0.2]]])
        >>> round(balanced_focal_loss(p, torch.tensor([[[1.0, 0.0]]])).item(), 5)
        0.00998
    """
    foreground = target > 0.5
    p_true = torch.where(foreground, probability, 1 - probability)
    focal = -((1 - p_true) ** gamma) * torch.log(p_true + FOCAL_EPS)
    fg_weight = foreground.float()
    fg_loss = (focal * fg_weight).sum() / (fg_weight.sum() + FOCAL_EPS)
    bg_loss = (focal * (1 - fg_weight)).sum() / ((1 - fg_weight).sum() + FOCAL_EPS)
    return fg_loss + bg_loss


def dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss of the anomalous channel over the whole batch at once.

    Example:
        >>> round(dice_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])).item(), 6)
        0.0
    """
    intersection = (probability * target).sum()
    return 1 - (2 * intersection + DICE_EPS) / (probability.sum() + target.sum() + DICE_EPS)


def orthogonality_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between different embeddings of each set.

    The diagonal is zeroed but still counted in the mean, as in the reference.

    Args:
        embeddings (torch.Tensor): ``(..., B, E)`` sets of ``B`` embeddings.

    Returns:
        torch.Tensor: Scalar loss.

    Example:
        >>> orthogonality_loss(torch.eye(3).unsqueeze(0)).item()
        0.0
    """
    normalised = F.normalize(embeddings, dim=-1)
    similarity = normalised @ normalised.transpose(-1, -2)
    off_diagonal = 1 - torch.eye(similarity.shape[-1], device=similarity.device)
    return (similarity**2 * off_diagonal).mean()


class BayesPFLLoss(nn.Module):
    """Combines the Bayes-PFL training terms.

    Args:
        focal_gamma (float): Focusing exponent of the focal loss. Defaults to ``2``.
        kl_weight (float): Weight of each KL term. Defaults to ``0.01``.
        orthogonal_weight (float): Weight of the orthogonality term. Defaults to ``1``.
    """

    def __init__(
        self,
        focal_gamma: float = defaults.FOCAL_GAMMA,
        kl_weight: float = defaults.KL_WEIGHT,
        orthogonal_weight: float = defaults.ORTHOGONAL_WEIGHT,
    ) -> None:
        super().__init__()
        self.focal_gamma, self.kl_weight, self.orthogonal_weight = focal_gamma, kl_weight, orthogonal_weight

    def segmentation(
        self, pixel_logits: list[torch.Tensor], grid: tuple[int, int], masks: torch.Tensor, pair: int
    ) -> torch.Tensor:
        """Focal + dice of one pair, summed over layers, at the mask resolution.

        Args:
            pixel_logits (list[torch.Tensor]): Per layer, patch logits ``(N, P, 2B)``.
            grid (tuple[int, int]): Patch grid.
            masks (torch.Tensor): Binary masks ``(N, H, W)``.
            pair (int): Index of the bank pair used this step.
        """
        half = pixel_logits[0].shape[-1] // 2
        total = masks.new_zeros(())
        for logits in pixel_logits:
            difference = (logits[..., half + pair] - logits[..., pair]).unflatten(1, grid).unsqueeze(1)
            upsampled = F.interpolate(difference, size=masks.shape[-2:], mode="bilinear", align_corners=True)
            probability = torch.sigmoid(upsampled.squeeze(1))
            total = total + balanced_focal_loss(probability, masks, self.focal_gamma) + dice_loss(probability, masks)
        return total

    @staticmethod
    def classification(image_logits: torch.Tensor, labels: torch.Tensor, pair: int) -> torch.Tensor:
        """Cross-entropy of the (normal, abnormal) image logits of one pair against the labels."""
        half = image_logits.shape[-1] // 2
        return F.cross_entropy(image_logits[:, [pair, half + pair]], labels.long())

    def forward(
        self,
        outputs: dict[str, torch.Tensor | list[torch.Tensor]],
        labels: torch.Tensor,
        masks: torch.Tensor | None,
        pair: int,
        stage: int,
        grid: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Compute every term and their total.

        Args:
            outputs (dict): The torch model's training outputs: ``image_logits (N, 2B)``, ``pixel_logits``
                (list of ``(N, P, 2B)``), ``text_embeddings (N, 2, B, E)`` and ``kl`` (three scalars).
            labels (torch.Tensor): Image labels ``(N,)``.
            masks (torch.Tensor | None): Ground-truth masks ``(N, H, W)``; required in stage 1.
            pair (int): Bank pair used for the classification and segmentation terms.
            stage (int): Training stage, 1 or 2.
            grid (tuple[int, int]): Patch grid of the pixel logits.

        Returns:
            dict[str, torch.Tensor]: ``loss`` and each term (``cls``, ``seg``, ``kl``, ``orth``).
        """
        terms = {"cls": self.classification(outputs["image_logits"], labels, pair)}
        if stage == 1:
            if masks is None:
                msg = "Stage-1 training needs ground-truth masks: use a datamodule with pixel masks (AuxiliaryTrain)."
                raise ValueError(msg)
            terms["seg"] = self.segmentation(outputs["pixel_logits"], grid, (masks > 0.5).float(), pair)
            terms["kl"] = self.kl_weight * outputs["kl"].sum()
            normal, abnormal = outputs["text_embeddings"].unbind(1)
            terms["orth"] = self.orthogonal_weight * (orthogonality_loss(normal) + orthogonality_loss(abnormal))
        terms["loss"] = sum(terms.values())
        return terms
