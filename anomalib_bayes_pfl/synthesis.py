# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Object-attention anomaly generation (OAGM, human-free prompting paper).

Turns normal images into training anomalies with pixel masks, so Bayes-PFL can learn from data nobody labelled.
Shapes and textures come from anomalib's :class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`
(thresholded, rotated Perlin noise; its augmentation chain for the texture). What OAGM adds is *where*: the
anomaly is cut to the object, found by the frozen CLIP's own class-token attention in a middle block, so the
prompts do not learn that background changes are defects. When that attention is flat (textures: carpet, wood,
...), the whole image is the object.

Texture sources that work offline: Perlin noise (anomalib's default), the image itself (a shifted, flipped and
re-coloured copy: self cut-and-paste) and, when given, a folder of texture images (e.g. a local copy of DTD).

The paper's body could not be read; the attention layer, threshold, dilation and sources are our reconstruction
of "object-attention anomaly generation" on the DRAEM recipe it names.

Paper:
    Chen et al., "Human-Free Automated Prompting for Vision-Language Anomaly Detection: Prompt Optimization with
    Meta-guiding Prompt Scheme", arXiv 2406.18197.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data.utils import read_image
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn
from torchvision.transforms.v2.functional import resize

from .backbone import ClipBackbone, vision_depth

SOURCES = ("noise", "self", "folder")
"""Texture sources: Perlin noise, the image itself, images of ``anomaly_source_path``."""


def attention_foreground(
    attention: torch.Tensor,
    size: tuple[int, int],
    threshold_std: float = 0.5,
    dilation: int = 1,
    flat_ratio: float = 0.25,
) -> torch.Tensor:
    """Binary object masks from class-token attention maps.

    A patch is foreground when its attention is at least ``mean + threshold_std * std`` of its image; the mask
    is dilated by ``dilation`` patches (the attention peaks inside objects, their rims matter too) and upsampled
    to ``size``. An image whose attention is flat (``std / mean < flat_ratio``: a texture, or no object the
    model singles out) is foreground everywhere. The few outlier tokens ViTs are known for are clipped at the
    98th percentile first, so they neither fake an object nor hide one.

    Args:
        attention (torch.Tensor): Attention on the patch grid ``(N, rows, columns)``.
        size (tuple[int, int]): Output ``(height, width)``.
        threshold_std (float): Standard deviations above the mean that count as object. Defaults to ``0.5``.
        dilation (int): Dilation in patches. Defaults to ``1``.
        flat_ratio (float): Relative spread below which the whole image is foreground. Defaults to ``0.25``.

    Returns:
        torch.Tensor: Boolean masks ``(N, height, width)``.

    Example:
        >>> attention = torch.full((1, 4, 4), 0.01)
        >>> attention[0, 1, 1] = 0.5
        >>> attention_foreground(attention, (4, 4), dilation=0)[0].sum().item()
        1
        >>> attention_foreground(torch.full((1, 4, 4), 0.06), (8, 8)).all().item()  # flat: all foreground
        True
    """
    if len(attention) == 0:  # no image chosen in this batch
        return torch.zeros(0, *size, dtype=torch.bool, device=attention.device)
    flat = attention.flatten(1).float()
    flat = torch.minimum(flat, torch.quantile(flat, 0.98, dim=1, keepdim=True))
    mean, std = flat.mean(dim=1, keepdim=True), flat.std(dim=1, keepdim=True).nan_to_num(0.0)
    foreground = (flat >= mean + threshold_std * std) | (std < flat_ratio * mean.abs())
    foreground = foreground.view(attention.shape).unsqueeze(1).float()
    if dilation > 0:
        foreground = F.max_pool2d(foreground, 2 * dilation + 1, stride=1, padding=dilation)
    return F.interpolate(foreground, size=size, mode="nearest").squeeze(1) > 0.5


def attention_block(layer: int | None, backbone: str) -> int:
    """The block whose class-token attention finds the object: as given, or the middle one.

    Example:
        >>> attention_block(None, "bayes-pfl-tiny"), attention_block(3, "bayes-pfl-tiny")
        (2, 3)
    """
    depth = vision_depth(backbone)
    chosen = max(depth // 2, 1) if layer is None else layer
    if not 1 <= chosen <= depth:
        msg = f"attention_layer={layer} must be a 1-indexed block within 1..{depth} of {backbone!r}."
        raise ValueError(msg)
    return chosen


@contextlib.contextmanager
def _global_rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run anomalib's Perlin and augmentation draws (which read torch's global generator) from ``generator``.

    The global generator is forked, seeded from ``generator`` and restored afterwards, so these draws neither
    depend on nor disturb anything else in the process.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class ObjectAttentionAnomalyGenerator(nn.Module):
    """Perlin anomalies restricted to the object, with noise, self and folder textures.

    Args:
        probability (float): Chance that a normal image becomes anomalous. Defaults to ``0.5``.
        blend_factor (tuple[float, float]): Range of the texture's opacity. Defaults to ``(0.2, 1.0)``.
        anomaly_source_path (str | Path | None): Folder of texture images (searched recursively); adds the
            ``"folder"`` source. Defaults to ``None``.
        min_area (float): Smallest anomaly, as a fraction of the image; smaller draws are retried.
            Defaults to ``0.005``.
        max_tries (int): Draws per image before it is left normal (e.g. when its object is tiny).
            Defaults to ``10``.

    Example:
        >>> generator = ObjectAttentionAnomalyGenerator(probability=1.0)
        >>> images, foreground = torch.rand(2, 3, 32, 32), torch.ones(2, 32, 32, dtype=torch.bool)
        >>> new_images, masks, labels = generator(images, foreground, torch.zeros(2), torch.Generator())
        >>> masks.shape, bool(((new_images != images).any(1) <= masks.bool()).all())
        (torch.Size([2, 32, 32]), True)
    """

    def __init__(
        self,
        probability: float = 0.5,
        blend_factor: tuple[float, float] = (0.2, 1.0),
        anomaly_source_path: str | Path | None = None,
        min_area: float = 0.005,
        max_tries: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 <= probability <= 1.0:
            msg = f"synthesis probability={probability} must lie in [0, 1]."
            raise ValueError(msg)
        low, high = blend_factor
        if not 0.0 < low <= high <= 1.0:
            msg = f"blend_factor={blend_factor} must satisfy 0 < low <= high <= 1."
            raise ValueError(msg)
        self.anomaly_source_path = anomaly_source_path
        self.perlin = PerlinAnomalyGenerator(anomaly_source_path, probability=1.0, blend_factor=blend_factor)
        self.sources = SOURCES if anomaly_source_path is not None else SOURCES[:2]
        self.probability, self.blend_factor = probability, (low, high)
        self.min_area, self.max_tries = min_area, max_tries

    def check_sources(self) -> None:
        """Fail clearly when the texture folder is missing or empty.

        Called when training starts rather than at construction, so that a trained model whose checkpoint names a
        texture folder still loads for inference on a machine without that folder.

        Raises:
            FileNotFoundError: If ``anomaly_source_path`` is not a folder or holds no images.
        """
        path = self.anomaly_source_path
        if path is not None and not Path(path).is_dir():
            msg = f"anomaly_source_path '{path}' is not a folder; give a folder of texture images (or null)."
            raise FileNotFoundError(msg)
        if path is not None and not self.perlin.anomaly_source_paths:
            msg = f"anomaly_source_path '{path}' holds no images (png, jpg, ...); add textures or set it to null."
            raise FileNotFoundError(msg)

    def choose(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Indices of the images that get an anomaly: normal ones, each with chance ``probability``.

        Separate from :meth:`add_anomalies` so that a caller computes the (costly) foreground of these images only.
        """
        drawn = torch.rand(len(labels), generator=generator).to(labels.device)
        return ((labels == 0) & (drawn < self.probability)).nonzero().flatten()

    def add_anomalies(
        self,
        images: torch.Tensor,
        foreground: torch.Tensor,
        chosen: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw an anomaly on each chosen image, inside its object.

        Args:
            images (torch.Tensor): Images in ``[0, 1]``, ``(N, 3, H, W)``.
            foreground (torch.Tensor): Object masks of the chosen images only, ``(len(chosen), H, W)``, in order.
            chosen (torch.Tensor): Indices from :meth:`choose`.
            labels (torch.Tensor): Labels ``(N,)``.
            generator (torch.Generator): Source of every random draw.

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: As :meth:`forward`.
        """
        images, masks = images.clone(), torch.zeros_like(images[:, 0])
        for index, object_mask in zip(chosen.tolist(), foreground, strict=True):
            drawn = self._draw(images[index], object_mask, generator)
            if drawn is not None:
                images[index], masks[index] = drawn
        return images, masks, torch.where(masks.flatten(1).any(1), torch.ones_like(labels), labels)

    def forward(
        self,
        images: torch.Tensor,
        foreground: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add anomalies to a share of the normal images.

        Args:
            images (torch.Tensor): Images in ``[0, 1]``, ``(N, 3, H, W)``, at the model's input resolution (after
                every geometric augmentation, so masks need no re-alignment).
            foreground (torch.Tensor): Object masks ``(N, H, W)``; anomalies never leave them.
            labels (torch.Tensor): Labels ``(N,)``; anomalous images are left as they are.
            generator (torch.Generator): Source of every random draw.

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: Images, binary masks ``(N, H, W)`` of the added
            anomalies (zero where none was added) and labels (1 exactly where an anomaly was added, or was there).
        """
        chosen = self.choose(labels, generator)
        return self.add_anomalies(images, foreground[chosen], chosen, labels, generator)

    @torch.no_grad()
    def training_batch(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None,
        backbone: ClipBackbone,
        attention_layer: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch with anomalies added to a share of its normal images: images, labels and masks.

        Runs on the pre-processed batch (after every augmentation and the resize), so masks are made at the model's
        input resolution and need no re-alignment. The object comes from ``backbone``'s class-token attention in
        block ``attention_layer``, computed for the chosen images only. Anomalies are blended in pixel space: the
        CLIP-normalised images (the pre-processor's ``Normalize`` uses CLIP's mean and std) are mapped back to
        ``[0, 1]``, and the changed pixels are normalised again; untouched pixels keep their exact values.

        Args:
            images (torch.Tensor): CLIP-normalised images ``(N, 3, H, W)``.
            labels (torch.Tensor): Labels ``(N,)``.
            masks (torch.Tensor | None): Ground-truth masks ``(N, H, W)`` of the real anomalies, if any.
            backbone (ClipBackbone): The model's frozen CLIP.
            attention_layer (int): 1-indexed block whose class-token attention finds the object.
            generator (torch.Generator): Source of every random draw.

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: Normalised images, labels and binary masks (real and
            synthetic anomalies together).
        """
        chosen = self.choose(labels, generator)
        images, labels, new_masks = self._synthesise(images, chosen, labels, backbone, attention_layer, generator)
        if masks is not None:
            new_masks = torch.maximum(new_masks, (masks > 0.5).to(new_masks.dtype))
        return images, labels, new_masks

    @torch.no_grad()
    def validation_images(
        self,
        images: torch.Tensor,
        backbone: ClipBackbone,
        attention_layer: int,
        seeds: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image with one anomaly drawn from its own seed: the same anomaly whatever the batch or the epoch.

        Label-free validation compares epochs, so its anomalies must not change between them; drawing each image's
        anomaly from a generator of its own (not the batch's) also makes it independent of batch size and order.
        Every image is chosen (``probability`` does not apply); one whose object is too small for an anomaly stays
        normal, with label 0 and an empty mask.

        Args:
            images (torch.Tensor): CLIP-normalised images ``(N, 3, H, W)``.
            backbone (ClipBackbone): The model's frozen CLIP.
            attention_layer (int): 1-indexed block whose class-token attention finds the object.
            seeds (Sequence[int]): One seed per image.

        Returns:
            tuple[torch.Tensor, torch.Tensor, torch.Tensor]: Normalised images, labels ``(N,)`` and masks ``(N, H, W)``.
        """
        first, normal = torch.zeros(1, dtype=torch.long, device=images.device), images.new_zeros(1)
        drawn = [
            self._synthesise(image[None], first, normal, backbone, attention_layer, torch.Generator().manual_seed(seed))
            for image, seed in zip(images, seeds, strict=True)
        ]
        return tuple(torch.cat(parts) for parts in zip(*drawn, strict=True))

    def _synthesise(
        self,
        images: torch.Tensor,
        chosen: torch.Tensor,
        labels: torch.Tensor,
        backbone: ClipBackbone,
        attention_layer: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Anomalies on the chosen CLIP-normalised images, blended in pixel space: images, labels, new masks."""
        attention = backbone.class_attention(images[chosen], attention_layer)
        foreground = attention_foreground(attention, tuple(images.shape[-2:]))
        mean = images.new_tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
        synthetic, new_masks, labels = self.add_anomalies(images * std + mean, foreground, chosen, labels, generator)
        images = torch.where(new_masks.bool().unsqueeze(1), (synthetic - mean) / std, images)
        return images, labels, new_masks

    def _draw(
        self, image: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One anomaly on one image, or ``None`` when no draw covers ``min_area`` of the image inside the object."""
        height, width = image.shape[-2:]
        for _ in range(self.max_tries):
            with _global_rng_from(generator, image.device):
                noise_texture, mask = self.perlin.generate_perturbation(height, width, image.device)
            mask = mask[..., 0] * foreground
            if mask.mean() < self.min_area:
                continue
            texture = self._texture(image, noise_texture.permute(2, 0, 1), generator)
            low, high = self.blend_factor
            beta = low + (high - low) * float(torch.rand((), generator=generator))
            blended = image * (1 - mask) + (beta * texture + (1 - beta) * image) * mask
            return blended.clamp(0.0, 1.0), mask
        return None

    def _texture(self, image: torch.Tensor, noise_texture: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The anomaly's texture from a randomly chosen source, at the image's size, in ``[0, 1]``."""

        def draw(low: int, high: int) -> int:
            return int(torch.randint(low, high, (1,), generator=generator))

        source = self.sources[draw(0, len(self.sources))]
        if source == "noise":
            return noise_texture
        if source == "self":  # the image's own material, moved and flipped
            height, width = image.shape[-2:]
            shift = (draw(height // 4, height - height // 4 + 1), draw(width // 4, width - width // 4 + 1))
            material = torch.roll(image, shifts=shift, dims=(-2, -1)).flip(-1)
        else:
            files = self.perlin.anomaly_source_paths
            material = read_image(files[draw(0, len(files))], as_tensor=True).to(image)
            material = resize(material, list(image.shape[-2:]), antialias=True)
        with _global_rng_from(generator, image.device):
            return self.perlin.augmenters(material).clamp(0.0, 1.0)
