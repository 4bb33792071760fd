# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Few-shot mode: a memory of the patch tokens of ``k`` normal reference images, fused with the zero-shot map.

Every production line has a handful of good parts. Their patch tokens at the tapped CLIP blocks (the frozen CLIP,
after the same pre-processing as the test images) form a :class:`PatchMemory`. A test patch's anomaly at one block is
its cosine distance to the nearest reference patch, ``(1 - max cos) / 2`` (in ``[0, 1]``, like the zero-shot
probability); the per-block distances are upsampled exactly like the zero-shot map (bilinear,
``align_corners=True``) and averaged over blocks. With ``w = few_shot_weight``:

* map: ``(1 - w) * zero_shot_map + w * smooth(memory_map)`` (the zero-shot map's own Gaussian smoothing);
* score: ``(1 - w) * zero_shot_score + w * top_k_mean(memory_map)`` (the zero-shot ``top_k``).

``w = 0`` is the zero-shot model exactly (the memory is not consulted), ``w = 1`` the memory alone.

The memory is a buffer of the torch model: checkpoints hold it, exports carry it as a constant. It is
deterministic: the references are the first ``k`` normal images of the train split in dataset order, or the first
``k`` files of a folder in sorted order (or of a list in its order). It is stored in float16: at ViT-L-14-336 / 518 px
(1369 patches, 4 blocks, 1024 dims) it holds 22.4 M values per 4 references, 44.9 MB instead of 89.7 MB
(:func:`memory_bytes`); the memory map moves by less than 1e-3 (``tests/unit/test_few_shot.py``, on the tiny model).

Example:
    >>> memory = PatchMemory(k_shot=1, num_layers=1, grid=(2, 2), width=4, weight=1.0)
    >>> tokens = torch.nn.functional.one_hot(torch.arange(4), 4).float().unsqueeze(0)  # (1, 4 patches, 4 dims)
    >>> memory.fill([tokens])
    >>> memory.anomaly_map([tokens], (2, 2)).abs().max().item() < 1e-3  # the references are normal
    True
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .anomaly_map import top_k_mean
from .images import display_path, image_files, read_rgb

MEMORY_DTYPE = torch.float16
"""Storage type of the memory: half the size of float32, the distance map moves by less than 1e-3."""

EMPTY_MEMORY_FIX = (
    "Give few_shot_source (a folder or a list of normal images), use a datamodule whose train split holds normal "
    "images (the first k_shot are taken), or load a checkpoint of a few-shot model."
)


def memory_bytes(k_shot: int, num_layers: int, num_patches: int, width: int, dtype: torch.dtype = MEMORY_DTYPE) -> int:
    """Size of a memory in bytes.

    Example:
        >>> memory_bytes(4, 4, 37 * 37, 1024) / 1e6  # ViT-L-14-336 at 518 px, 4 references
        44.859392
    """
    return k_shot * num_layers * num_patches * width * torch.finfo(dtype).bits // 8


def check_few_shot_settings(k_shot: object, weight: object) -> None:
    """Reject a ``k_shot`` that is not an integer >= 0 and a ``few_shot_weight`` outside ``[0, 1]``."""
    if isinstance(k_shot, bool) or not isinstance(k_shot, numbers.Integral) or k_shot < 0:
        msg = f"k_shot={k_shot!r} must be an integer >= 0 (the number of normal reference images; 0: zero-shot)."
        raise ValueError(msg)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0.0 <= float(weight) <= 1.0:
        msg = f"few_shot_weight={weight!r} must be a number in [0, 1] (0: zero-shot only, 1: the memory only)."
        raise ValueError(msg)


def _check_stored_shape(memory: PatchMemory, state_dict: dict, prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: name the fix when a stored memory was built for another ``k_shot`` or model size."""
    del args
    stored = state_dict.get(prefix + "memory")
    if isinstance(stored, torch.Tensor) and stored.shape != memory.memory.shape:
        msg = (
            f"The checkpoint's few-shot memory has shape {tuple(stored.shape)} (blocks, k_shot x patches, width), "
            f"this model's {tuple(memory.memory.shape)} (k_shot={memory.k_shot}). Pass the k_shot, backbone, "
            "image_size and feature_layers the checkpoint was made with."
        )
        raise ValueError(msg)


class PatchMemory(nn.Module):
    """Normalised patch tokens of ``k`` normal images per tapped block, and the distance of test patches to them.

    Args:
        k_shot (int): Reference images.
        num_layers (int): Tapped blocks.
        grid (tuple[int, int]): Patch grid ``(h, w)`` of one image.
        width (int): Token width.
        weight (float): ``few_shot_weight`` of the fusion (see the module docstring).
    """

    def __init__(self, k_shot: int, num_layers: int, grid: tuple[int, int], width: int, weight: float) -> None:
        super().__init__()
        check_few_shot_settings(k_shot, weight)
        self.k_shot, self.weight, self.grid = int(k_shot), float(weight), tuple(grid)
        patches = k_shot * grid[0] * grid[1]
        self.register_buffer("memory", torch.zeros(num_layers, patches, width, dtype=MEMORY_DTYPE))
        self.register_buffer("filled", torch.tensor(False))
        self.register_load_state_dict_pre_hook(_check_stored_shape)

    @torch.no_grad()
    def fill(self, patches: Sequence[torch.Tensor]) -> None:
        """Store the reference patch tokens: per tapped block, ``(k_shot, P, W)``."""
        if len(patches) != self.memory.shape[0] or any(tokens.shape[0] != self.k_shot for tokens in patches):
            msg = f"Expected {self.memory.shape[0]} blocks of {self.k_shot} reference images' patch tokens."
            raise ValueError(msg)
        normalised = [F.normalize(tokens.flatten(0, 1).float(), dim=-1) for tokens in patches]
        self.memory.copy_(torch.stack(normalised).to(self.memory))
        self.filled.fill_(True)

    def anomaly_map(self, patches: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Mean over blocks of each patch's distance to its nearest reference patch, upsampled to ``size``.

        Args:
            patches (Sequence[torch.Tensor]): Per tapped block, test patch tokens ``(N, P, W)``.
            size (tuple[int, int]): Output size ``(H, W)``.

        Returns:
            torch.Tensor: ``(N, H, W)`` in ``[0, 1]``: ``(1 - max cosine similarity) / 2``.
        """
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(self.filled)):
            msg = f"k_shot={self.k_shot} but the few-shot memory is empty. {EMPTY_MEMORY_FIX}"
            raise RuntimeError(msg)
        total = None
        for layer, tokens in enumerate(patches):
            features = F.normalize(tokens, dim=-1)
            nearest = (features @ self.memory[layer].to(features.dtype).T).amax(dim=-1)  # (N, P)
            distance = ((1 - nearest) / 2).unflatten(1, self.grid).unsqueeze(1)
            upsampled = F.interpolate(distance, size=size, mode="bilinear", align_corners=True).squeeze(1)
            total = upsampled if total is None else total + upsampled
        return total / len(patches)

    def fuse(
        self,
        score: torch.Tensor,
        anomaly_map: torch.Tensor,
        patches: Sequence[torch.Tensor],
        smooth: Callable[[torch.Tensor], torch.Tensor],
        top_k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse the zero-shot score ``(N,)`` and smoothed map ``(N, H, W)`` with the memory's (module docstring).

        Args:
            score (torch.Tensor): Zero-shot image scores ``(N,)``.
            anomaly_map (torch.Tensor): Smoothed zero-shot map ``(N, H, W)``.
            patches (Sequence[torch.Tensor]): Per tapped block, test patch tokens ``(N, P, W)``.
            smooth (Callable): The zero-shot map's smoothing, on ``(N, 1, H, W)``.
            top_k (int): Map values averaged into the memory's score.
        """
        if self.weight == 0:
            return score, anomaly_map
        memory_map = self.anomaly_map(patches, tuple(anomaly_map.shape[-2:]))
        memory_score = top_k_mean(memory_map, top_k)
        smoothed = smooth(memory_map.unsqueeze(1)).squeeze(1)
        weight = self.weight
        return (1 - weight) * score + weight * memory_score, (1 - weight) * anomaly_map + weight * smoothed


def reference_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The reference files of ``few_shot_source``: a folder's :func:`image_files`, or a list as given."""
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            msg = f"few_shot_source={display_path(folder)} is not a folder; give a folder or a list of image files."
            raise ValueError(msg)
        return image_files(folder)
    return [Path(path) for path in source]


def train_reference_paths(dataset: object) -> list[Path]:
    """The normal images of a datamodule's train split (anomalib's ``samples`` table), in dataset order."""
    samples = getattr(dataset, "samples", None)
    if samples is None or "image_path" not in samples:
        return []
    normal = samples if "label_index" not in samples else samples[samples.label_index == 0]
    return [Path(path) for path in normal.image_path]


def read_references(paths: Sequence[Path], k_shot: int, where: str) -> torch.Tensor:
    """Read the first ``k_shot`` of ``paths`` as one ``(k, 3, H, W)`` batch in ``[0, 1]``.

    Args:
        paths (Sequence[Path]): Candidate files, in the order they are taken.
        k_shot (int): How many to read.
        where (str): Where the files come from, for the messages.

    Raises:
        ValueError: If there are fewer than ``k_shot`` files, or the references differ in size (each would be
            distorted differently by the resize; their patches would not compare), naming the fix.
        BadImageError: If a file cannot be read (naming it and why).
    """
    if len(paths) < k_shot:
        msg = (
            f"k_shot={k_shot} but {where} holds {len(paths)} normal image(s). Use k_shot <= {len(paths)} or give more "
            "normal images (few_shot_source: a folder or a list of files)."
        )
        raise ValueError(msg)
    images = [read_rgb(path) for path in paths[:k_shot]]
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        listed = ", ".join(
            f"{display_path(path)} {tuple(image.shape[-2:])}" for path, image in zip(paths, images, strict=False)
        )
        msg = (
            f"The few-shot references from {where} differ in size (height, width): {listed}. Give references of one "
            "size, the size of the images you test (crop or resize them alike)."
        )
        raise ValueError(msg)
    return torch.stack(images)


def check_few_shot_arguments(k_shot: object, source: object, weight: object, prompt_weights: object) -> bool:
    """Check the few-shot arguments of ``BayesPFL``; return whether few-shot mode is on (``k_shot > 0``).

    Raises:
        ValueError: If a value is out of range, references are given without ``k_shot``, or few-shot mode lacks the
            trained head it fuses with (naming the fix).
    """
    check_few_shot_settings(k_shot, weight)
    if source is not None and not k_shot:
        msg = f"few_shot_source={source!r} is given but k_shot=0; set k_shot to the number of references to use."
        raise ValueError(msg)
    if k_shot and prompt_weights is None:
        msg = (
            f"k_shot={k_shot} needs a trained head to fuse the memory with: pass prompt_weights (a checkpoint, a file "
            "of save_prompt_weights or the authors' released head), or k_shot=0 to train one."
        )
        raise ValueError(msg)
    return bool(k_shot)
