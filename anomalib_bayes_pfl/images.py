# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Reading production images robustly: every mode as RGB in ``[0, 1]``, and one clear error per bad file.

anomalib's ``read_image`` is ``Image.open(path).convert("RGB")``: right for 8-bit images, but it *clips* 16-bit
images (any value above 255 becomes white) and lets PIL's exceptions (``UnidentifiedImageError``, "image file is
truncated", decompression-bomb errors) escape with little context. :func:`read_rgb` gives the same result as
``read_image`` for every 8-bit mode (grayscale, palette, RGBA, CMYK, ...), scales 16-bit images by 65535, and turns
every failure into a :class:`BadImageError` that names the file and the reason.

Alpha is dropped, not composited, as anomalib does, so that predictions match what anomalib's datamodules feed the
model. Images larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 megapixels by default; PIL's guard against
decompression bombs) are refused before they are decoded; raise that limit if such images are expected and trusted.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> path = Path(tempfile.mkdtemp()) / "gray16.png"
    >>> Image.fromarray(np.full((2, 3), 65535, dtype=np.uint16)).save(path)
    >>> image = read_rgb(path)
    >>> image.shape, float(image.max())
    (torch.Size([3, 2, 3]), 1.0)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import to_dtype, to_image

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of 16-bit grayscale images (PNG and TIFF open as ``I;16*``; some readers give 32-bit ``I``)."""

HIGH_BIT_MAX = 65535.0
"""Full scale of a 16-bit image: its values are divided by this."""


class BadImageError(ValueError):
    """An image file that cannot be used, with the file and the reason.

    Args:
        path (str | Path): The file.
        reason (str): What is wrong with it, in words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"Cannot use image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _gray_to_rgb(gray: np.ndarray) -> torch.Tensor:
    """``(H, W)`` values in ``[0, 1]`` as a ``(3, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).expand(3, -1, -1).contiguous()


def _pixels(image: Image.Image) -> torch.Tensor:
    """Decoded pixels as ``(3, H, W)`` float32 in ``[0, 1]``; 8-bit modes exactly as anomalib's ``read_image``."""
    if image.mode in HIGH_BIT_MODES:
        return _gray_to_rgb(np.clip(np.asarray(image, dtype=np.float32) / HIGH_BIT_MAX, 0.0, 1.0))
    if image.mode == "F":  # 32-bit float images are taken to be on a 0..1 scale already
        return _gray_to_rgb(np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0))
    return to_dtype(to_image(image.convert("RGB")), torch.float32, scale=True)


def _decode(path: Path) -> torch.Tensor:
    """Open, size-check and decode ``path``; PIL's decompression-bomb warning is raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            return _pixels(image)


def read_rgb(path: str | Path) -> tv_tensors.Image:
    """Read an image file as an RGB float tensor, or explain why it cannot be used.

    Args:
        path (str | Path): Image file of any format and mode PIL reads.

    Returns:
        tv_tensors.Image: ``(3, H, W)`` float32 in ``[0, 1]``.

    Raises:
        BadImageError: If the file is missing, empty, not an image, truncated or corrupt, or too large.
    """
    path = Path(path)
    try:
        pixels = _decode(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = f"too large ({error}). Downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        raise BadImageError(path, reason) from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not a readable image (empty, corrupt, or another kind of file)") from None
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error...: all mean "bad file"
        raise BadImageError(path, f"{type(error).__name__}: {error}") from None
    return tv_tensors.Image(pixels)
