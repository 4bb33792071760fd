# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Small synthetic anomaly-detection dataset in the MVTec AD folder layout.

Bayes-PFL is trained on the *test* split (normal and anomalous images with pixel masks) of some
categories and evaluated zero-shot on other categories. Real datasets (MVTec AD, VisA) are large and
need a download, so demos and tests use this generator instead. It writes exactly the layout that
anomalib's stock :class:`anomalib.data.MVTecAD` datamodule reads, so no download is ever attempted::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png   # single channel, 0 or 255

There are two kinds of categories:

* **objects** (``disc``, ``square``, ``ring``, ``cross``): one coloured shape on a plain, slightly noisy
  background, with per-image jitter of position, size, rotation and colour. Defects always lie on the
  object, as in MVTec AD's object categories.
* **textures** (``stripes``, ``checker``, ``grain``, ``dots``): a periodic or noise pattern with jitter
  of period, phase, orientation and colour. Defects lie anywhere away from the border.

Defects are local and visible: thin scratches, dark holes, Perlin-shaped colour stains (noise from
anomalib's own :func:`~anomalib.data.utils.generators.perlin.generate_perlin_noise`) and missing
chunks. Every category names its defect folders in its own way (``crack``, ``chip``, ``cut``...), so
a model cannot rely on folder names being shared across categories.

Generation is deterministic: every image draws from its own :class:`numpy.random.Generator` seeded
from ``(seed, category, split, defect, index)``, so the same arguments give byte-identical files, and
an image does not change when the number of other images changes. Torch's global random state, used
inside the Perlin helper, is forked and restored, so callers' random streams are left untouched.

Example:
    >>> from anomalib_bayes_pfl.data import generate_synthetic_dataset
    >>> root = generate_synthetic_dataset("./datasets/synthetic", categories=["disc", "stripes"])
    >>> from anomalib.data import MVTecAD
    >>> datamodule = MVTecAD(root=root, category="disc", num_workers=0)

Command line::

    python -m anomalib_bayes_pfl.data.synthetic ./datasets/synthetic --categories disc stripes
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from PIL import Image

__all__ = [
    "AVAILABLE_CATEGORIES",
    "DEFAULT_CATEGORIES",
    "SyntheticSample",
    "defect_types",
    "generate_synthetic_dataset",
    "main",
    "render_sample",
]

#: Categories written when none are requested: three objects and three textures.
DEFAULT_CATEGORIES: tuple[str, ...] = ("disc", "square", "ring", "stripes", "checker", "grain")

_MIN_IMAGE_SIZE = 16
_NOISE_STD = 0.015
_MAX_ATTEMPTS = 50

# Colours are RGB floats in [0, 1].
_OBJECT_BACKGROUND = (0.18, 0.19, 0.21)
_STAIN_COLOURS = ((0.55, 0.22, 0.08), (0.45, 0.10, 0.55), (0.05, 0.50, 0.55), (0.85, 0.80, 0.15))
_SCRATCH_COLOURS = ((0.97, 0.97, 0.95), (0.04, 0.04, 0.05))


@dataclass(frozen=True)
class _CategorySpec:
    """How one category looks and which defects it can have.

    Attributes:
        kind: ``"object"`` or ``"texture"``; decides where defects may lie.
        colours: Base colours (object colour, or the texture's two colours).
        defects: Defect folder name -> defect kind (``scratch``, ``hole``, ``stain``, ``chunk``).
    """

    kind: str
    colours: tuple[tuple[float, float, float], ...]
    defects: dict[str, str]


_SPECS: dict[str, _CategorySpec] = {
    "disc": _CategorySpec("object", ((0.88, 0.55, 0.15),), {"hole": "hole", "scratch": "scratch", "stain": "stain"}),
    "square": _CategorySpec("object", ((0.22, 0.45, 0.82),), {"chip": "chunk", "crack": "scratch", "stain": "stain"}),
    "ring": _CategorySpec("object", ((0.30, 0.72, 0.36),), {"cut": "chunk", "scratch": "scratch", "spot": "hole"}),
    "cross": _CategorySpec("object", ((0.80, 0.80, 0.78),), {"broken": "chunk", "dent": "hole", "rust": "stain"}),
    "stripes": _CategorySpec(
        "texture",
        ((0.86, 0.80, 0.68), (0.36, 0.30, 0.52)),
        {"hole": "hole", "stain": "stain", "thread": "scratch"},
    ),
    "checker": _CategorySpec(
        "texture",
        ((0.90, 0.90, 0.86), (0.25, 0.38, 0.30)),
        {"scratch": "scratch", "stain": "stain", "worn": "chunk"},
    ),
    "grain": _CategorySpec(
        "texture",
        ((0.78, 0.64, 0.42), (0.50, 0.36, 0.20)),
        {"scratch": "scratch", "spot": "hole", "stain": "stain"},
    ),
    "dots": _CategorySpec(
        "texture",
        ((0.30, 0.30, 0.34), (0.85, 0.85, 0.40)),
        {"blot": "stain", "missing": "chunk", "scratch": "scratch"},
    ),
}

#: Every category the generator knows, objects first.
AVAILABLE_CATEGORIES: tuple[str, ...] = tuple(_SPECS)


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image, kept together with what is needed to check it.

    Attributes:
        image: ``(H, W, 3)`` uint8 image as written to disk.
        clean: The same image before the defect was applied (equal to ``image`` for normal samples).
        mask: ``(H, W)`` bool defect mask, ``None`` for normal samples.
        region: ``(H, W)`` bool area where defects may lie (the object, or the texture minus a border).
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None
    region: np.ndarray


# --------------------------------------------------------------------------------------------------
# Random helpers
# --------------------------------------------------------------------------------------------------


def _stable_hash(text: str) -> int:
    """Hash a string the same way in every process (``hash()`` is salted per interpreter)."""
    return zlib.crc32(text.encode("utf-8"))


def _image_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """Give every image its own generator, so images do not depend on how many others are drawn."""
    key = [seed % 2**64, _stable_hash(category), _stable_hash(split), _stable_hash(defect), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def _perlin(size: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Perlin noise from anomalib's generator, made deterministic without touching global state.

    ``generate_perlin_noise`` draws from torch's global generator, so the draw is done inside
    :func:`torch.random.fork_rng`, which restores the caller's state afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**31 - 1)))
        noise = generate_perlin_noise(size, size, scale=(scale, scale), device=torch.device("cpu"))
    return noise.numpy().astype(np.float32)


def _perlin_scale(size: int, preferred: int) -> int:
    """Largest power of two <= ``preferred`` whose noise cells stay at least 4 px wide."""
    padded = 1 << (size - 1).bit_length()
    scale = preferred
    while scale > 1 and padded // scale < 4:
        scale //= 2
    return scale


def _jitter_colour(colour: Sequence[float], rng: np.random.Generator, amount: float = 0.05) -> np.ndarray:
    """Shift each channel a little, so normal images vary as real photographs do."""
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Normal images
# --------------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], as ``(y, x)`` arrays."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(coords, coords, indexing="ij")


def _rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate offsets by ``angle`` radians, used to jitter shape and pattern orientation."""
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dy - sin * dx, sin * dy + cos * dx


def _object_shape(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the object, with jittered centre, size and rotation."""
    y, x = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
    radius = 0.3 * (1.0 + rng.uniform(-0.1, 0.1))
    dy, dx = _rotate(y - cy, x - cx, rng.uniform(-np.pi / 12, np.pi / 12))
    distance = np.hypot(dy, dx)
    if category == "disc":
        return distance <= radius
    if category == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.85 * radius
    if category == "ring":
        return (distance <= radius) & (distance >= 0.55 * radius)
    arm = 0.32 * radius  # "cross": two crossing bars
    horizontal = (np.abs(dy) <= arm) & (np.abs(dx) <= radius)
    vertical = (np.abs(dx) <= arm) & (np.abs(dy) <= radius)
    return horizontal | vertical


def _render_object(category: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object on a plain background; returns ``(image, backdrop, object_mask)``.

    The backdrop (background without the object) is what shows through a missing chunk.
    """
    spec = _SPECS[category]
    backdrop = np.broadcast_to(_jitter_colour(_OBJECT_BACKGROUND, rng, 0.03), (size, size, 3)).copy()
    shape = _object_shape(category, size, rng)
    y, x = _grid(size)
    light = rng.uniform(-1.0, 1.0, 2)
    shading = 1.0 + 0.12 * (light[0] * (y - 0.5) + light[1] * (x - 0.5))
    image = backdrop.copy()
    image[shape] = (_jitter_colour(spec.colours[0], rng)[None, None, :] * shading[..., None])[shape]
    noise = rng.normal(0.0, _NOISE_STD, (size, size, 3)).astype(np.float32)
    return np.clip(image + noise, 0, 1), np.clip(backdrop + noise, 0, 1), shape


def _texture_pattern(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Blend weights in [0, 1] between the texture's two colours."""
    y, x = _grid(size)
    if category == "stripes":
        period = (1 / 6) * (1.0 + rng.uniform(-0.1, 0.1))
        dy, dx = _rotate(y, x, np.pi / 6 + rng.uniform(-0.15, 0.15))
        wave = np.sin(2 * np.pi * dx / period + rng.uniform(0, 2 * np.pi))
        return np.clip(0.5 + 1.5 * wave, 0.0, 1.0)
    if category == "checker":
        tile = (1 / 8) * (1.0 + rng.uniform(-0.1, 0.1))
        dy, dx = _rotate(y, x, rng.uniform(-0.08, 0.08))
        offset = rng.uniform(0, tile, 2)
        return ((np.floor((dy + offset[0]) / tile) + np.floor((dx + offset[1]) / tile)) % 2).astype(np.float32)
    if category == "dots":
        pitch = (1 / 6) * (1.0 + rng.uniform(-0.1, 0.1))
        offset = rng.uniform(0, pitch, 2)
        fy, fx = (y + offset[0]) % pitch - pitch / 2, (x + offset[1]) % pitch - pitch / 2
        return (np.hypot(fy, fx) <= 0.28 * pitch).astype(np.float32)
    coarse = _perlin(size, _perlin_scale(size, 4), rng)  # "grain": wood/sand-like noise
    fine = _perlin(size, _perlin_scale(size, 16), rng)
    return np.clip(0.5 + 0.9 * coarse + 0.35 * fine, 0.0, 1.0)


def _render_texture(category: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured image; returns ``(image, backdrop, defect_region)``.

    The backdrop is a flat mean-colour surface: a "missing" or worn patch shows the pattern gone.
    Defects stay away from the border so that every defect is fully inside the image.
    """
    spec = _SPECS[category]
    first, second = (_jitter_colour(colour, rng) for colour in spec.colours)
    weight = _texture_pattern(category, size, rng)[..., None]
    image = weight * first + (1.0 - weight) * second
    backdrop = np.broadcast_to(image.mean(axis=(0, 1)), image.shape)
    noise = rng.normal(0.0, _NOISE_STD, (size, size, 3)).astype(np.float32)
    margin = max(2, round(0.12 * size))
    region = np.zeros((size, size), dtype=bool)
    region[margin:-margin, margin:-margin] = True
    return np.clip(image + noise, 0, 1), np.clip(backdrop + noise, 0, 1), region


# --------------------------------------------------------------------------------------------------
# Defects: each returns the changed image and the boolean mask of the pixels it changed
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Surface:
    """A defect-free image and what a defect needs to know about it.

    Attributes:
        image: ``(H, W, 3)`` float image in [0, 1].
        backdrop: What shows through where material is missing (background, or flat texture colour).
        region: Where defects may lie.
        is_object: Objects lose chunks at their edge; textures wear off anywhere.
    """

    image: np.ndarray
    backdrop: np.ndarray
    region: np.ndarray
    is_object: bool

    @property
    def size(self) -> int:
        return self.region.shape[0]


_Drawn = tuple[np.ndarray, np.ndarray]


def _pick_point(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random ``(y, x)`` pixel centre inside ``region``, in [0, 1] coordinates."""
    candidates = np.argwhere(region)
    return (candidates[rng.integers(len(candidates))] + 0.5) / region.shape[0]


def _farthest(colours: Sequence[Sequence[float]], pixels: np.ndarray) -> np.ndarray:
    """The colour farthest from the mean of ``pixels``, so the defect is clearly visible there."""
    options = np.asarray(colours, dtype=np.float32)
    reference = pixels.reshape(-1, 3).mean(axis=0)
    return options[np.argmax(np.abs(options - reference).sum(axis=1))]


def _paint(surface: _Surface, mask: np.ndarray, colour: np.ndarray, alpha: float) -> _Drawn:
    """Blend ``colour`` into the masked pixels and leave every other pixel exactly as it was."""
    out = surface.image.copy()
    out[mask] = (1.0 - alpha) * out[mask] + alpha * colour
    return out, mask


def _scratch(surface: _Surface, rng: np.random.Generator) -> _Drawn:
    """Thin, slightly curved bright or dark line."""
    size = surface.size
    start = _pick_point(surface.region, rng)
    angle = rng.uniform(0, 2 * np.pi)
    end = start + rng.uniform(0.2, 0.4) * np.array([np.sin(angle), np.cos(angle)])
    bend = (start + end) / 2 + rng.uniform(-0.06, 0.06, 2)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end  # quadratic Bezier
    y, x = _grid(size)
    distance = np.min(np.hypot(y[..., None] - curve[:, 0], x[..., None] - curve[:, 1]), axis=-1)
    mask = (distance * size <= max(0.75, size / 80)) & surface.region
    return _paint(surface, mask, _farthest(_SCRATCH_COLOURS, surface.image[mask]), 0.85)


def _hole(surface: _Surface, rng: np.random.Generator) -> _Drawn:
    """Dark elliptical blob, like a hole or a burnt spot."""
    cy, cx = _pick_point(surface.region, rng)
    y, x = _grid(surface.size)
    dy, dx = _rotate(y - cy, x - cx, rng.uniform(0, np.pi))
    axes = rng.uniform(0.04, 0.08, 2)
    mask = ((dy / axes[0]) ** 2 + (dx / axes[1]) ** 2 <= 1.0) & surface.region
    out = surface.image.copy()
    out[mask] = np.clip(0.06 + rng.normal(0.0, 0.02, (int(mask.sum()), 3)), 0, 1)
    return out, mask


def _stain(surface: _Surface, rng: np.random.Generator) -> _Drawn:
    """Colour stain whose ragged outline comes from anomalib's Perlin noise."""
    size = surface.size
    cy, cx = _pick_point(surface.region, rng)
    y, x = _grid(size)
    falloff = 1.0 - np.hypot(y - cy, x - cx) / rng.uniform(0.1, 0.16)
    window = falloff > 0
    score = _perlin(size, _perlin_scale(size, 8), rng) + 0.8 * falloff
    mask = window & surface.region & (score > np.quantile(score[window], 0.45))
    return _paint(surface, mask, _farthest(_STAIN_COLOURS, surface.image[mask]), rng.uniform(0.65, 0.85))


def _edge(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it."""
    padded = np.pad(region, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def _chunk(surface: _Surface, rng: np.random.Generator) -> _Drawn:
    """Missing piece: a bite out of the object's edge, or a worn patch where the texture is gone."""
    centre_area = _edge(surface.region) if surface.is_object else surface.region
    cy, cx = _pick_point(centre_area, rng)
    y, x = _grid(surface.size)
    mask = (np.hypot(y - cy, x - cx) <= rng.uniform(0.09, 0.14)) & surface.region
    out = surface.image.copy()
    out[mask] = surface.backdrop[mask]
    return out, mask


_DEFECTS: dict[str, Callable[[_Surface, np.random.Generator], _Drawn]] = {
    "chunk": _chunk,
    "hole": _hole,
    "scratch": _scratch,
    "stain": _stain,
}


def _apply_defect(kind: str, surface: _Surface, rng: np.random.Generator) -> _Drawn:
    """Draw defects until one is clearly visible at this resolution.

    A draw is kept when at least a few pixels (0.4 % of the image) changed by more than 0.1 in some
    channel and those make up most of the mask, so every mask marks a change a model can see.
    """
    min_area = max(4, round(0.004 * surface.region.size))
    for _ in range(_MAX_ATTEMPTS):
        out, mask = _DEFECTS[kind](surface, rng)
        visible = mask & np.any(np.abs(out - surface.image) > 0.1, axis=-1)
        if visible.sum() >= min_area and visible.sum() >= 0.6 * mask.sum():
            return out, mask
    msg = f"Could not draw a visible '{kind}' defect at image size {surface.size}; use a larger image size."
    raise RuntimeError(msg)


# --------------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------------


def _check_category(category: str) -> _CategorySpec:
    """Look up a category, failing with the list of valid names."""
    if category not in _SPECS:
        msg = f"Unknown synthetic category '{category}'. Choose from {list(AVAILABLE_CATEGORIES)}."
        raise ValueError(msg)
    return _SPECS[category]


def defect_types(category: str) -> tuple[str, ...]:
    """Defect folder names of a category, in the order images cycle through them.

    Args:
        category: One of :data:`AVAILABLE_CATEGORIES`.

    Returns:
        Sorted defect folder names, e.g. ``("hole", "scratch", "stain")`` for ``"disc"``.

    Raises:
        ValueError: If the category is unknown.
    """
    return tuple(sorted(_check_category(category).defects))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_sample(
    category: str,
    rng: np.random.Generator,
    image_size: int = 64,
    defect: str | None = None,
) -> SyntheticSample:
    """Render one normal image, or one image with the given defect.

    Args:
        category: One of :data:`AVAILABLE_CATEGORIES`.
        rng: Source of randomness; the result depends on nothing else.
        image_size: Side length in pixels (square images).
        defect: A name from :func:`defect_types`, or ``None`` for a normal image.

    Returns:
        The image, its defect-free version, the defect mask and the allowed defect region.

    Raises:
        ValueError: If the category or defect name is unknown.
    """
    spec = _check_category(category)
    renderer = _render_object if spec.kind == "object" else _render_texture
    clean, backdrop, region = renderer(category, image_size, rng)
    surface = _Surface(clean, backdrop, region, is_object=spec.kind == "object")
    if defect is None:
        pixels = _to_uint8(clean)
        return SyntheticSample(image=pixels, clean=pixels, mask=None, region=region)
    if defect not in spec.defects:
        msg = f"Unknown defect '{defect}' for category '{category}'. Choose from {list(defect_types(category))}."
        raise ValueError(msg)
    image, mask = _apply_defect(spec.defects[defect], surface, rng)
    return SyntheticSample(image=_to_uint8(image), clean=_to_uint8(clean), mask=mask, region=region)


# --------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One file pair to write: the image and, for anomalies, its mask."""

    image_path: Path
    mask_path: Path | None
    split: str
    defect: str | None
    index: int


def _plan_category(
    category_dir: Path,
    category: str,
    num_train: int,
    num_normal: int,
    num_anomalous: int,
) -> list[_Job]:
    """List every file of one category; anomalies cycle through the category's defect types."""
    jobs = [_Job(category_dir / "train" / "good" / f"{i:03d}.png", None, "train", None, i) for i in range(num_train)]
    jobs += [_Job(category_dir / "test" / "good" / f"{i:03d}.png", None, "test", None, i) for i in range(num_normal)]
    defects = defect_types(category)
    counters = dict.fromkeys(defects, 0)
    for i in range(num_anomalous):
        defect = defects[i % len(defects)]
        index = counters[defect]
        counters[defect] += 1
        image_path = category_dir / "test" / defect / f"{index:03d}.png"
        mask_path = category_dir / "ground_truth" / defect / f"{index:03d}_mask.png"
        jobs.append(_Job(image_path, mask_path, "test", defect, index))
    return jobs


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write through a temporary name, so an interrupted run never leaves a truncated PNG behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _check_existing_size(jobs: list[_Job], image_size: int) -> None:
    """Refuse to mix image sizes inside a category that was generated before with other settings."""
    for job in jobs:
        if job.image_path.is_file():
            with Image.open(job.image_path) as existing:
                if existing.size != (image_size, image_size):
                    msg = (
                        f"{job.image_path} has size {existing.size}, but image_size={image_size} was requested. "
                        "Use the original image size or generate into a new root folder."
                    )
                    raise ValueError(msg)
            return


def _is_missing(path: Path | None) -> bool:
    return path is not None and not path.is_file()


def _write_category(root: Path, category: str, seed: int, image_size: int, counts: tuple[int, int, int]) -> int:
    """Write the missing files of one category and return how many files were written.

    Existing files are kept even when their mask or image partner is regenerated: each image has its
    own seed, so a re-rendered partner matches the kept file exactly.
    """
    jobs = _plan_category(root / category, category, *counts)
    missing = [job for job in jobs if _is_missing(job.image_path) or _is_missing(job.mask_path)]
    if not missing:
        return 0
    _check_existing_size(jobs, image_size)
    written = 0
    for job in missing:
        rng = _image_rng(seed, category, job.split, job.defect or "good", job.index)
        sample = render_sample(category, rng, image_size=image_size, defect=job.defect)
        if _is_missing(job.image_path):
            _save_png(sample.image, job.image_path)
            written += 1
        if _is_missing(job.mask_path) and sample.mask is not None:
            _save_png(sample.mask.astype(np.uint8) * 255, job.mask_path)
            written += 1
    return written


def _validate_arguments(categories: Sequence[str], image_size: int, counts: tuple[int, int, int]) -> list[str]:
    """Check all arguments before anything is written, so a bad call leaves the disk untouched."""
    names = [categories] if isinstance(categories, str) else list(categories)
    if not names:
        msg = f"categories is empty; pass at least one of {list(AVAILABLE_CATEGORIES)}."
        raise ValueError(msg)
    for name in names:
        _check_category(name)
    if image_size < _MIN_IMAGE_SIZE:
        msg = f"image_size={image_size} is too small to draw visible defects; use {_MIN_IMAGE_SIZE} or more."
        raise ValueError(msg)
    for label, count in zip(("num_train", "num_test_normal", "num_test_anomalous"), counts, strict=True):
        if count < 1:
            msg = f"{label}={count} must be at least 1 so that anomalib finds every split it expects."
            raise ValueError(msg)
    return list(dict.fromkeys(names))


def generate_synthetic_dataset(
    root: str | Path,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    image_size: int = 64,
    num_train: int = 8,
    num_test_normal: int = 6,
    num_test_anomalous: int = 10,
    seed: int = 0,
) -> Path:
    """Write a small MVTec AD style dataset, so demos and tests run offline.

    Only missing files are written: a complete category is left exactly as it is, an interrupted run
    is completed on the next call, and nothing is ever deleted or overwritten.

    Args:
        root: Folder that receives one sub-folder per category (anomalib's ``MVTecAD(root=...)``).
        categories: Names from :data:`AVAILABLE_CATEGORIES`.
        image_size: Side length of the square images in pixels (16 or more).
        num_train: Normal training images per category.
        num_test_normal: Normal test images per category.
        num_test_anomalous: Anomalous test images per category, spread over its defect types.
        seed: Seed of the whole dataset; the same seed gives byte-identical files.

    Returns:
        The dataset root as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If a category is unknown, a count is below one, the image size is too small, or
            existing images under ``root`` have another size.
    """
    counts = (num_train, num_test_normal, num_test_anomalous)
    names = _validate_arguments(categories, image_size, counts)
    root = Path(root)
    for category in names:
        _write_category(root, category, seed, image_size, counts)
    return root


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_bayes_pfl.data.synthetic",
        description="Write a small synthetic anomaly dataset in the MVTec AD folder layout.",
    )
    parser.add_argument("root", type=Path, help="output folder; one sub-folder per category")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=list(DEFAULT_CATEGORIES),
        choices=AVAILABLE_CATEGORIES,
        metavar="NAME",
        help=f"categories to write (default: %(default)s; available: {', '.join(AVAILABLE_CATEGORIES)})",
    )
    parser.add_argument("--image-size", type=int, default=64, help="side length in pixels (default: 64)")
    parser.add_argument("--num-train", type=int, default=8, help="normal train images per category (default: 8)")
    parser.add_argument("--num-test-normal", type=int, default=6, help="normal test images (default: 6)")
    parser.add_argument("--num-test-anomalous", type=int, default=10, help="anomalous test images (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status.

    Args:
        argv: Arguments without the program name; ``None`` reads :data:`sys.argv`.

    Returns:
        ``0`` on success, ``2`` when the arguments are rejected.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        root = generate_synthetic_dataset(
            args.root,
            categories=args.categories,
            image_size=args.image_size,
            num_train=args.num_train,
            num_test_normal=args.num_test_normal,
            num_test_anomalous=args.num_test_anomalous,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    for category in dict.fromkeys(args.categories):
        defects = ", ".join(defect_types(category))
        sys.stdout.write(f"{root / category}  (defects: {defects})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
