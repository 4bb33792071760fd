# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Reading production images robustly: every mode as RGB in ``[0, 1]``, and one clear error per bad file.

anomalib's ``read_image`` is ``Image.open(path).convert("RGB")``: right for 8-bit images, but it *clips* 16-bit
images (any value above 255 becomes white) and lets PIL's exceptions (``UnidentifiedImageError``, "image file is
truncated", decompression-bomb errors) escape with little context. :func:`read_rgb` gives the same result as
``read_image`` for every 8-bit mode (grayscale, palette, RGBA, CMYK, ...), scales 16-bit images by 65535 and 32-bit
integer images by the full range of their type, and turns every failure into a :class:`BadImageError` that names the
file and the reason.

Integer images are scaled by the largest value of the sample type the file declares, never by their content, so
that a pixel value means the same brightness in every image of a line:

* 16-bit (PIL modes ``I;16*``; also 16-bit PGM/PPM, which PIL opens as 32-bit ``I``): divided by 65535.
* 32-bit integer TIFF (PIL mode ``I``): unsigned (TIFF ``SampleFormat`` 1, the TIFF default) divided by
  ``2**32 - 1``; signed (``SampleFormat`` 2, which is what PIL writes for mode ``I``) divided by ``2**31 - 1``, with
  negative values set to 0. A signed 16-bit TIFF (also opened as ``I``) is divided by 32767 in the same way. So an
  ``I`` TIFF that only holds 16-bit values (e.g. saved after ``convert("I")``) reads almost black: save such data
  as 16-bit (mode ``I;16``) instead.
* Any other mode ``I`` image (formats that do not declare a sample type) is taken to hold 16-bit values, as PIL
  gives for PGM/PPM: divided by 65535, values outside ``[0, 1]`` clipped.

A multi-frame file (multi-page TIFF, animated GIF/PNG/WebP) is read as its first frame, with a
:class:`MultiFrameImageWarning` that names the file and the frame count. MPO files (the stereo or preview frames
cameras put in JPEGs) are read as their first frame without a warning. Only regular files are opened: a named pipe,
socket or device file named like an image is refused from its ``stat`` without being opened (opening a pipe would
wait for a writer forever).

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

import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2.functional import to_dtype, to_image

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of 16- and 32-bit integer grayscale images (PNG and TIFF open 16-bit as ``I;16*``; ``I`` is 32-bit)."""

HIGH_BIT_MAX = 65535.0
"""Full scale of a 16-bit image: its values are divided by this."""

_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339
_TIFF_SIGNED = 2
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISDIR, "directory"),
)


class MultiFrameImageWarning(UserWarning):
    """An image file holds several frames (pages, animation), and only the first is used."""


def display_path(path: str | os.PathLike[str]) -> str:
    r"""``path`` as text that can be printed, logged and written as UTF-8 anywhere.

    A file name need not be valid UTF-8 on Linux (e.g. byte ``0xFF``); Python holds such a byte as a lone surrogate,
    which cannot be encoded and crashes a UTF-8 log or CSV. Here each such byte is written as the four characters
    ``\xff`` (as Python shows bytes); every other name is returned unchanged.

    Args:
        path (str | os.PathLike[str]): A path as Python holds it.

    Returns:
        str: The path, with the bytes that are not UTF-8 escaped.
    """
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # surrogates that do not stand for bytes (possible on Windows)
        return os.fspath(path).encode("utf-8", errors="backslashreplace").decode("utf-8")
    return raw.decode("utf-8", errors="backslashreplace")


class BadImageError(ValueError):
    """An image file that cannot be used, with the file and the reason.

    Args:
        path (str | Path): The file.
        reason (str): What is wrong with it, in words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"Cannot use image {display_path(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


def image_files(folder: Path) -> list[Path]:
    """Every entry under ``folder`` with an image extension (any case) that is not a folder, sorted.

    Special files (pipes, sockets, devices) are kept: :func:`read_rgb` refuses them by name without opening them, so
    that they are reported rather than silently left out.
    """
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMG_EXTENSIONS and not path.is_dir())


def _gray_to_rgb(gray: np.ndarray) -> torch.Tensor:
    """``(H, W)`` values in ``[0, 1]`` as a ``(3, H, W)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32)).expand(3, -1, -1).contiguous()


def _tag(image: Image.Image, tag: int, default: int) -> int:
    """First value of a TIFF tag of ``image``, or ``default`` where the file does not set it."""
    value = image.tag_v2.get(tag, default)
    return int(value[0] if isinstance(value, tuple) else value)


def _int32_values(image: Image.Image) -> np.ndarray:
    """Pixels of a mode ``I`` image in ``[0, 1]``, scaled by the range of the type the file declares."""
    if image.format != "TIFF" or not hasattr(image, "tag_v2"):  # no declared type: 16-bit values, as PGM gives
        return np.clip(np.asarray(image, dtype=np.float32) / HIGH_BIT_MAX, 0.0, 1.0)
    values = np.asarray(image)
    bits = _tag(image, _TIFF_BITS_PER_SAMPLE, 32)
    signed = _tag(image, _TIFF_SAMPLE_FORMAT, 1) == _TIFF_SIGNED
    if bits == 32 and not signed:  # PIL hands unsigned 32-bit samples over as int32 with the same bits
        values = values.view(np.uint32)
    return np.clip(values / float(2 ** (bits - signed) - 1), 0.0, 1.0)


def _pixels(image: Image.Image) -> torch.Tensor:
    """Decoded pixels as ``(3, H, W)`` float32 in ``[0, 1]``; 8-bit modes exactly as anomalib's ``read_image``."""
    if image.mode == "I":
        return _gray_to_rgb(_int32_values(image))
    if image.mode in HIGH_BIT_MODES:
        return _gray_to_rgb(np.clip(np.asarray(image, dtype=np.float32) / HIGH_BIT_MAX, 0.0, 1.0))
    if image.mode == "F":  # 32-bit float images are taken to be on a 0..1 scale already
        return _gray_to_rgb(np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0))
    return to_dtype(to_image(image.convert("RGB")), torch.float32, scale=True)


class _NotRegularFileError(OSError):
    """The path is a pipe, socket, device or directory: reading it could block, or means nothing."""


def _special_kind(mode: int) -> str | None:
    """What kind of special file a ``st_mode`` describes, or ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)), "special file")


def _open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading if, and only if, it is a regular file (following symbolic links).

    The kind is checked from ``stat`` before opening, so a special file is never opened, and again on the open file,
    in case the path was replaced in between; the open is non-blocking so that even then a pipe cannot hang it.
    """
    kind = _special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise _NotRegularFileError(f"{kind}); it was not opened")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = _special_kind(os.fstat(descriptor).st_mode)
        if kind is not None:
            raise _NotRegularFileError(f"{kind}, which replaced the file as it was opened); it was not read")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _decode(path: Path) -> tuple[torch.Tensor, int]:
    """Open, size-check and decode ``path``: its first frame and its frame count.

    PIL's decompression-bomb warning is raised as an error.
    """
    with _open_regular(path) as file, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(file) as image:
            image.load()
            pixels = _pixels(image)  # before counting frames: counting seeks through the file
            return pixels, 1 if image.format == "MPO" else int(getattr(image, "n_frames", 1))


def read_rgb(path: str | Path) -> tv_tensors.Image:
    """Read an image file as an RGB float tensor, or explain why it cannot be used.

    Args:
        path (str | Path): Image file of any format and mode PIL reads.

    Returns:
        tv_tensors.Image: ``(3, H, W)`` float32 in ``[0, 1]``.

    Raises:
        BadImageError: If the file is missing, not a regular file (a pipe, socket, device: never opened), empty, not
            an image, truncated or corrupt, or too large.

    Warns:
        MultiFrameImageWarning: If the file holds several frames (only the first is read).
    """
    path = Path(path)
    try:
        pixels, frames = _decode(path)
    except _NotRegularFileError as error:
        raise BadImageError(path, f"not a regular file ({error}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        reason = f"too large ({error}). Downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        raise BadImageError(path, reason) from None
    except UnidentifiedImageError:
        raise BadImageError(path, "not a readable image (empty, corrupt, or another kind of file)") from None
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error...: all mean "bad file"
        raise BadImageError(path, f"{type(error).__name__}: {error}") from None
    if frames > 1:
        warnings.warn(
            f"{display_path(path)} has {frames} frames; only the first is used.", MultiFrameImageWarning, stacklevel=2
        )
    return tv_tensors.Image(pixels)
