# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Antialiased bicubic resizing that computes the same in eager PyTorch, ONNX and OpenVINO.

The model's input resize is torchvision's ``Resize(size, BICUBIC, antialias=True)`` (PIL's resampling, as CLIP's
pre-processing). Exported, that operator does not survive: anomalib switches antialiasing off for export, and the
ONNX/OpenVINO bicubic kernels differ from PyTorch's at the borders and in the cubic coefficient, so an exported
model scored any image whose size is not the model's differently from eager (by up to 0.2 on the anomaly map).

Here the resize is two matrix products, ``rows @ image @ columns.T``. The interpolation weights are built from
the input's (possibly dynamic) height and width with plain tensor operations (``arange``, ``abs``, ``clamp``,
``where``, ``sum``) that export one to one, so the exported graph does the eager arithmetic, for any input size.
The weights are PyTorch's own antialiased bicubic filter (``_upsample_bicubic2d_aa``, which follows PIL): Keys'
cubic with ``a = -0.5``, stretched by the downscaling factor, truncated at the image borders and normalised to
sum to one. It matches torchvision's resize to float rounding (about 1e-6), and is the identity at equal size.

Reference:
    PIL ``ImagingResample`` (``libImaging/Resample.c``, HPND licence) and PyTorch ``UpSampleKernel.cpp``
    (``_compute_index_ranges_weights`` with ``aa_filter``, BSD-3-Clause), read to match; no code copied.

Example:
    >>> images = torch.rand(2, 3, 10, 7)
    >>> resize_bicubic(images, (5, 4)).shape
    torch.Size([2, 3, 5, 4])
    >>> bool(torch.equal(resize_bicubic(images, (10, 7)), images))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, Resize, Transform
from torchvision.transforms.v2 import functional as TF  # noqa: N812

CUBIC_COEFFICIENT = -0.5
"""``a`` of Keys' cubic convolution kernel in PIL's and PyTorch's antialiased bicubic (torch's plain one: -0.75)."""

CUBIC_SUPPORT = 2.0
"""Half-width of the cubic kernel, in input pixels before any downscaling stretch."""


def cubic_kernel(distance: torch.Tensor, a: float = CUBIC_COEFFICIENT) -> torch.Tensor:
    """Keys' cubic convolution kernel: 1 at 0, 0 at the other integers and beyond ``±2``.

    Args:
        distance (torch.Tensor): Signed distances, any shape.
        a (float): Kernel coefficient. Defaults to ``-0.5``.

    Returns:
        torch.Tensor: Kernel values, shape of ``distance``.

    Example:
        >>> cubic_kernel(torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))
        tensor([ 1.0000,  0.5625,  0.0000, -0.0625,  0.0000])
    """
    x = distance.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < CUBIC_SUPPORT, far, torch.zeros_like(x)))


def resize_weights(input_size: int, output_size: int, like: torch.Tensor) -> torch.Tensor:
    """Interpolation matrix of one axis: output pixel ``i`` is ``sum_j weights[i, j] * input[j]``.

    ``input_size`` may be a symbolic size during export: it only enters tensor operations, so the exported graph
    computes the weights from the actual input. Output pixel ``i`` is centred at input position
    ``(i + 0.5) * input_size / output_size``; when downscaling, the kernel is stretched by that factor
    (antialiasing), and each row is normalised to sum to one, which also handles the borders.

    Args:
        input_size (int): Input length along the axis.
        output_size (int): Output length along the axis.
        like (torch.Tensor): Gives the weights' dtype (floating point) and device.

    Returns:
        torch.Tensor: Weights of shape ``(output_size, input_size)``.

    Example:
        >>> resize_weights(4, 2, torch.zeros(())).sum(dim=1)
        tensor([1., 1.])
    """
    inputs = torch.arange(input_size, dtype=like.dtype, device=like.device)
    outputs = torch.arange(output_size, dtype=like.dtype, device=like.device)
    scale = (inputs[-1:] + 1) / output_size  # input_size / output_size as a tensor, so no Python branch on it
    stretch = scale.clamp(min=1.0)
    centres = (outputs[:, None] + 0.5) * scale
    weights = cubic_kernel((inputs[None, :] + 0.5 - centres) / stretch)
    return weights / weights.sum(dim=1, keepdim=True)


def resize_bicubic(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased bicubic resize of float images to ``size`` (torchvision's ``Resize(size, BICUBIC, True)``).

    Args:
        images (torch.Tensor): Float images of shape ``(..., H, W)``.
        size (Sequence[int]): Output ``(height, width)``.

    Returns:
        torch.Tensor: Images of shape ``(..., height, width)``.

    Raises:
        TypeError: If the images are not floating point.
    """
    if not images.is_floating_point():
        msg = (
            f"resize_bicubic expects floating-point images, got {images.dtype}; convert them first, e.g. with "
            "torchvision.transforms.v2.ToDtype(torch.float32, scale=True)."
        )
        raise TypeError(msg)
    rows = resize_weights(images.shape[-2], size[0], images)
    columns = resize_weights(images.shape[-1], size[1], images)
    return rows @ images @ columns.T


class ExportableBicubicResize(Transform):
    """``Resize(size, BICUBIC, antialias=True)`` whose ONNX/OpenVINO export computes what eager computes.

    Images (``tv_tensors.Image`` or plain tensors) go through :func:`resize_bicubic`; everything else (masks take
    nearest neighbours, PIL images) through torchvision's ``resize``, as torchvision's ``Resize`` would.

    Args:
        size (Sequence[int]): Output ``(height, width)``.

    Raises:
        ValueError: If ``size`` is not two positive integers.

    Example:
        >>> ExportableBicubicResize((5, 4))(torch.rand(3, 10, 7)).shape
        torch.Size([3, 5, 4])
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        if len(size) != 2 or any(not isinstance(side, int) or side < 1 for side in size):
            msg = f"ExportableBicubicResize needs size=(height, width) as two positive integers, got {size!r}."
            raise ValueError(msg)
        self.size = [int(side) for side in size]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: ANN401  # torchvision's signature
        """Resize one input of the sample."""
        del params
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(resize_bicubic(inpt, self.size), like=inpt)
        if isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor):  # plain (or traced) tensor
            return resize_bicubic(inpt, self.size)
        return TF.resize(inpt, self.size, interpolation=InterpolationMode.BICUBIC, antialias=True)

    @classmethod
    def replaces(cls, transform: Transform) -> bool:
        """Whether ``transform`` is a torchvision ``Resize`` that this class reproduces."""
        return (
            type(transform) is Resize
            and transform.interpolation == InterpolationMode.BICUBIC
            and bool(transform.antialias)
            and len(transform.size) == 2
            and transform.max_size is None
        )
