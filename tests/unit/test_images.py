"""Reading production images: every mode to RGB in [0, 1], bad files named, and the model's pre-processing after."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomalib_bayes_pfl.images import BadImageError, MultiFrameImageWarning, display_path, image_files, read_rgb
from anomalib_bayes_pfl.lightning_model import BayesPFL

PRE_PROCESS = BayesPFL.configure_pre_processor((64, 64)).transform


def _save(tmp_path: Path, image: Image.Image, name: str) -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def _pixels(seed: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    high = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype, endpoint=True)


class TestModes:
    """Each PIL mode becomes RGB float in [0, 1], like anomalib's reader where that one is right."""

    @staticmethod
    @pytest.mark.parametrize(
        ("mode", "name"),
        [
            ("L", "gray.png"),
            ("1", "binary.png"),
            ("P", "palette.png"),
            ("LA", "gray_alpha.png"),
            ("RGBA", "alpha.png"),
            ("RGB", "upper.PNG"),
            ("RGB", "bitmap.bmp"),
            ("RGBA", "lossless.webp"),
            ("CMYK", "print.tif"),
            ("RGB", "scan.TIFF"),
        ],
    )
    def test_eight_bit_modes_match_anomalib(tmp_path: Path, mode: str, name: str) -> None:
        """8-bit images (any extension, any case) read exactly as anomalib's read_image reads them."""
        source = Image.fromarray(_pixels(0, (5, 7, 4), np.uint8), "RGBA").convert(mode)
        path = _save(tmp_path, source, name)
        if name.endswith("webp"):
            source.save(path, lossless=True)
        image = read_rgb(path)
        assert image.dtype == torch.float32
        assert image.shape == (3, 5, 7)
        assert torch.equal(image, read_image(path, as_tensor=True))

    @staticmethod
    def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
        """A 16-bit PNG is divided by 65535 (anomalib's reader turns everything above 255 white)."""
        values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
        path = _save(tmp_path, Image.fromarray(values), "depth16.png")
        image = read_rgb(path)
        expected = torch.from_numpy(values.astype(np.float32) / 65535).expand(3, -1, -1)
        assert torch.allclose(image, expected, atol=1e-7)
        assert float(read_image(path, as_tensor=True)[0, 0, 1]) == 1.0  # the clipping this avoids

    @staticmethod
    def test_float_image_is_clipped_to_unit_range(tmp_path: Path) -> None:
        """A 32-bit float TIFF is taken as 0..1 data; out-of-range values are clipped."""
        values = np.array([[-0.5, 0.25, 2.0]], dtype=np.float32)
        image = read_rgb(_save(tmp_path, Image.fromarray(values, "F"), "float.tif"))
        assert torch.equal(image[:, 0], torch.tensor([[0.0, 0.25, 1.0]] * 3))

    @staticmethod
    @pytest.mark.parametrize(
        ("values", "bits", "sample_format", "full_scale"),
        [
            ([0, 65535, 2**31, 2**32 - 1], 32, 1, 2**32 - 1),  # unsigned 32-bit: Pillow hands the bits over as int32
            ([-(2**31), -5, 0, 2**30, 2**31 - 1], 32, 2, 2**31 - 1),  # signed 32-bit: negatives become 0
            ([-32768, -1, 0, 16384, 32767], 16, 2, 32767),  # signed 16-bit, which Pillow also opens as mode "I"
        ],
        ids=["uint32", "int32", "int16"],
    )
    def test_integer_tiff_is_scaled_by_its_sample_type(
        tmp_path: Path, values: list[int], bits: int, sample_format: int, full_scale: int
    ) -> None:
        """A mode "I" TIFF is divided by the largest value of the type it declares (16-bit: 65535), not clipped."""
        path = _integer_tiff(tmp_path / "sensor.tif", values, bits, sample_format)
        assert Image.open(path).mode == "I"
        image = read_rgb(path)
        expected = np.clip(np.array(values, dtype=np.float64) / full_scale, 0, 1).astype(np.float32)
        assert torch.equal(image, torch.from_numpy(expected).view(1, 1, -1).expand(3, 1, -1))

    @staticmethod
    def test_pillow_int32_tiff_keeps_the_type_rule(tmp_path: Path) -> None:
        """Pillow writes mode "I" as signed 32-bit: 16-bit values in it are scaled by 2**31 - 1 too (no guessing)."""
        values = np.array([[0, 65535, 2**31 - 1]], dtype=np.int32)
        image = read_rgb(_save(tmp_path, Image.fromarray(values), "converted.tif"))
        expected = (values.astype(np.float64) / (2**31 - 1)).astype(np.float32)
        assert torch.equal(image[0], torch.from_numpy(expected))

    @staticmethod
    def test_sixteen_bit_pgm_is_scaled_by_65535(tmp_path: Path) -> None:
        """Pillow opens 16-bit PGM as mode "I" with 16-bit values: other formats than TIFF keep the 65535 scale."""
        values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
        path = _save(tmp_path, Image.fromarray(values), "depth.pgm")
        assert Image.open(path).mode == "I"
        expected = (values.astype(np.float64) / 65535).astype(np.float32)
        assert torch.equal(read_rgb(path)[0], torch.from_numpy(expected))

    @staticmethod
    def test_multi_frame_tiff_uses_first_frame_and_warns(tmp_path: Path) -> None:
        """A 3-page TIFF reads as its first page, with a warning naming the file and the frame count."""
        frames = [Image.new("L", (4, 3), value) for value in (10, 20, 30)]
        path = tmp_path / "stack.tif"
        frames[0].save(path, save_all=True, append_images=frames[1:])
        with pytest.warns(MultiFrameImageWarning, match=r"stack\.tif has 3 frames; only the first is used"):
            image = read_rgb(path)
        assert torch.equal(image, torch.full((3, 3, 4), 10 / 255))

    @staticmethod
    def test_jpeg_reads_as_rgb(tmp_path: Path) -> None:
        """Lossy JPEG (``.jpeg`` and ``.jpg``) reads as 3 channels in [0, 1]."""
        image = read_rgb(_save(tmp_path, Image.new("L", (9, 4), 200), "photo.jpeg"))
        assert image.shape == (3, 4, 9)
        assert torch.allclose(image, torch.full_like(image, 200 / 255), atol=2 / 255)


def _integer_tiff(path: Path, values: list[int], bits: int, sample_format: int) -> Path:
    """A one-row grayscale TIFF of ``bits``-bit integers; ``sample_format`` 1 is unsigned, 2 signed (TIFF tag 339)."""
    dtype = {(32, 1): "<u4", (32, 2): "<i4", (16, 2): "<i2"}[bits, sample_format]
    data = np.array(values, dtype=dtype).tobytes()
    tags = [(256, len(values)), (257, 1), (258, bits), (259, 1), (262, 1), (273, 0), (277, 1), (278, 1)]
    tags += [(279, len(data)), (339, sample_format)]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    directory = struct.pack("<H", len(tags))
    for tag, value in tags:  # every value as a LONG (type 4), which readers accept for these tags
        directory += struct.pack("<HHII", tag, 4, 1, data_offset if tag == 273 else value)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + data)
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def _text_named_png(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    return path


def _truncated_png(tmp_path: Path) -> Path:
    whole = _save(tmp_path, Image.fromarray(_pixels(1, (32, 32, 3), np.uint8)), "whole.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _bomb_png(tmp_path: Path) -> Path:
    """A tiny PNG whose header claims 20000 x 20000 pixels (a decompression bomb), with a valid header checksum."""
    data = bytearray(_save(tmp_path, Image.new("L", (1, 1)), "bomb.png").read_bytes())
    header = b"IHDR" + struct.pack(">II", 20000, 20000) + data[24:29]
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    return path


class TestBadFiles:
    """Every bad file gives a BadImageError that names the file and says what is wrong."""

    @staticmethod
    @pytest.mark.parametrize(
        ("make", "reason"),
        [
            (_empty_file, "not a readable image"),
            (_text_named_png, "not a readable image"),
            (_truncated_png, "truncated"),
            (lambda tmp: tmp / "missing.png", "No such file"),
            (_bomb_png, "too large.*MAX_IMAGE_PIXELS"),
        ],
        ids=["zero-bytes", "text-named-png", "truncated", "missing", "decompression-bomb"],
    )
    def test_reason_and_file_are_named(tmp_path: Path, make: object, reason: str) -> None:
        """Corrupt, empty, missing and oversized files are refused before any pixels reach the model."""
        path = make(tmp_path)
        with pytest.raises(BadImageError, match=reason) as info:
            read_rgb(path)
        assert str(path) in str(info.value)
        assert info.value.path == path

    @staticmethod
    @pytest.mark.timeout(60)
    def test_fifo_is_refused_without_opening(tmp_path: Path) -> None:
        """A named pipe is not opened (opening it would wait for a writer forever)."""
        path = tmp_path / "stream.png"
        os.mkfifo(path)
        with pytest.raises(BadImageError, match=r"not a regular file \(named pipe\)"):
            read_rgb(path)

    @staticmethod
    def test_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
        """A file name with a byte that is not UTF-8 appears in the message as \\xff, printable anywhere."""
        with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.png"), "wb") as file:
            file.write(b"not an image")
        path = next(tmp_path.iterdir())
        with pytest.raises(BadImageError) as info:
            read_rgb(path)
        message = str(info.value).encode("utf-8")  # a lone surrogate (how Python holds the byte) would raise here
        assert message.endswith(b"bad\\xff.png: not a readable image (empty, corrupt, or another kind of file)")
        assert display_path(path) == f"{tmp_path}/bad\\xff.png"
        assert info.value.path == path


class TestPreProcessing:
    """Any size and aspect ratio reaches the model as a (3, 64, 64) normalised image."""

    @staticmethod
    @pytest.mark.parametrize("size", [(1, 1), (4000, 3000), (17, 5), (5, 300)])
    def test_extreme_sizes_are_resized(tmp_path: Path, size: tuple[int, int]) -> None:
        """1x1 (bicubic with antialias), 12-megapixel and very elongated images are resized to the input size."""
        image = read_rgb(_save(tmp_path, Image.new("RGB", size, (200, 100, 50)), "any.png"))
        batch = PRE_PROCESS(image.unsqueeze(0))
        assert batch.shape == (1, 3, 64, 64)
        expected = PRE_PROCESS(torch.tensor([200, 100, 50]).view(1, 3, 1, 1).expand(1, 3, 64, 64) / 255)
        assert torch.allclose(batch, expected, atol=1e-5)  # a flat image stays flat: no ringing, no edge artefacts

    @staticmethod
    @settings(max_examples=30, deadline=None)
    @given(
        height=st.integers(1, 48),
        width=st.integers(1, 48),
        channels=st.sampled_from([1, 3, 4]),
        sixteen_bit=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    @example(height=1, width=1, channels=1, sixteen_bit=True, seed=0)
    @example(height=1, width=48, channels=4, sixteen_bit=False, seed=0)
    def test_any_shape_dtype_and_channels(
        tmp_path_factory: pytest.TempPathFactory, height: int, width: int, channels: int, sixteen_bit: bool, seed: int
    ) -> None:
        """PNG round trip: exact RGB values in [0, 1] (gray replicated, alpha dropped), then a finite model input."""
        if sixteen_bit and channels != 1:  # PIL writes 16-bit PNGs for grayscale only
            channels = 1
        dtype = np.uint16 if sixteen_bit else np.uint8
        shape = (height, width) if channels == 1 else (height, width, channels)
        pixels = _pixels(seed, shape, dtype)
        path = _save(tmp_path_factory.mktemp("png"), Image.fromarray(pixels), "image.png")
        image = read_rgb(path)
        rgb = np.repeat(pixels[..., None], 3, axis=-1) if channels == 1 else pixels[..., :3]
        expected = torch.from_numpy(rgb.astype(np.float32) / np.iinfo(dtype).max).permute(2, 0, 1)
        assert image.shape == (3, height, width)
        assert torch.allclose(image, expected, atol=1e-7)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        model_input = PRE_PROCESS(image.unsqueeze(0))
        assert model_input.shape == (1, 3, 64, 64)
        assert torch.isfinite(model_input).all()


def test_image_files_of_a_folder_in_any_case_and_sorted(tmp_path: Path) -> None:
    """Image extensions in any case, in sub-folders too; other files and folders named like images are left out."""
    for name in ("b/A.PNG", "a.jpg", "c.JpEg", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert image_files(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b" / "A.PNG", tmp_path / "c.JpEg"]
