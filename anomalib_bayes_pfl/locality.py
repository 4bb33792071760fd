# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Locality-aware attention for the last ViT blocks (human-free prompting paper).

Deep CLIP blocks mix every patch token with global context, so a patch feature no longer describes the place it
came from ("locality feature mismatch"), which blurs anomaly maps. Locality-aware attention lets each *patch*
query attend only to the patches in a square window around it, while the class token keeps attending to every
token, so image-level features stay global. It is an additive attention mask: no new weights, the same
computation at training and test time, and exportable wherever the text tower's causal mask is.

The exact window and layers of the paper are not known (its body could not be read); the hard square window
over the last blocks is our reconstruction of "each local patch feature attends only to nearby patch features".

Paper:
    Chen et al., "Human-Free Automated Prompting for Vision-Language Anomaly Detection: Prompt Optimization with
    Meta-guiding Prompt Scheme", arXiv 2406.18197.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_locality(window: int | None, layers: Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """Validate the options and return the 1-indexed blocks that get the window (empty when disabled).

    Args:
        window (int | None): Side of the square window in patches (odd, e.g. 3 for 3 x 3); ``None`` disables it.
        layers (Sequence[int] | None): 1-indexed blocks to restrict; ``None`` means the last block.
        depth (int): Number of blocks of the vision transformer.

    Raises:
        ValueError: For an even or non-positive window, or layers outside ``1..depth``.

    Example:
        >>> check_locality(3, None, depth=12)
        (12,)
        >>> check_locality(None, None, depth=12)
        ()
    """
    if window is None:
        if layers:
            msg = f"locality_layers={tuple(layers)} needs a locality_window (e.g. 3); set one or drop the layers."
            raise ValueError(msg)
        return ()
    if window < 1 or window % 2 == 0:
        msg = f"locality_window={window} must be an odd number of patches >= 1 (e.g. 3 for a 3 x 3 window)."
        raise ValueError(msg)
    chosen = (depth,) if layers is None else tuple(layers)
    if not chosen or any(layer < 1 or layer > depth for layer in chosen):
        msg = f"locality_layers={chosen} must be 1-indexed blocks within 1..{depth}."
        raise ValueError(msg)
    return tuple(sorted(set(chosen)))


def local_window_mask(grid: tuple[int, int], window: int) -> torch.Tensor:
    """Additive attention mask over ``[class token, patches]`` for a square patch window.

    Row ``i`` holds the logit offsets of query ``i``: the class-token row is all zeros (global); a patch row is
    zero for the patches within ``window // 2`` rows and columns of it and ``-inf`` elsewhere, the class token
    included. Every row keeps at least its own position, so softmax never sees an all-masked row.

    Args:
        grid (tuple[int, int]): Patch grid ``(rows, columns)``.
        window (int): Odd side of the window in patches.

    Returns:
        torch.Tensor: Float mask ``(1 + rows * columns, 1 + rows * columns)``.

    Example:
        >>> mask = local_window_mask((3, 3), 3)
        >>> mask.shape, bool(mask[0].eq(0).all()), int(mask[1].eq(0).sum())  # corner patch: 2 x 2 neighbours
        (torch.Size([10, 10]), True, 4)
    """
    rows, columns = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, columns = rows.flatten(), columns.flatten()
    radius = window // 2
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((columns[:, None] - columns[None, :]).abs() <= radius)
    size = 1 + near.shape[0]
    allowed = torch.zeros(size, size, dtype=torch.bool)
    allowed[0] = True
    allowed[1:, 1:] = near
    return torch.zeros(size, size).masked_fill(~allowed, float("-inf"))
