# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Frozen open_clip ViT backbone with multi-layer patch taps and prompt-level text encoding.

Bayes-PFL reads four things from a frozen CLIP: the projected class token of the last block (the global
image feature that conditions the image-specific prompt distribution), the *raw* outputs of a few residual
blocks (patch tokens, no ``ln_post`` and no projection), and the text tower run on token embeddings into
which learnable prompts were injected.

The backbone is any open_clip ViT/CLIP, named by its open_clip model name or given as the path of an open_clip
model-config JSON file (registered with open_clip under the file's stem). Weights come from an open_clip
pretrained tag (downloaded through open_clip, so a missing network is reported as such), from a local open_clip
checkpoint or OpenAI-layout state dict, or from an OpenAI ``.pt`` TorchScript archive such as
``ViT-L-14-336px.pt``. Weights are read in fp32 (OpenAI's files are fp16) and the positional embedding is then
resized (bicubic, antialiased) to the grid of ``image_size``, as the reference does for 518 px.

Paper:
    Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, Sec. 3.1.
    Reference code: https://github.com/xiaozhen228/Bayes-PFL (MIT), ``models/model_CLIP.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import open_clip
import torch
from open_clip.model import resize_pos_embed
from open_clip.transformer import VisionTransformer
from torch import nn

from . import defaults
from .locality import check_locality, local_window_mask

logger = logging.getLogger(__name__)

ACTIVATIONS = ("auto", "gelu", "quick_gelu")
"""``gelu`` is the exact GELU of the reference re-implementation (needed for the authors' released heads);
``quick_gelu`` is what OpenAI trained CLIP with; ``auto`` follows the weights (QuickGELU for OpenAI weights)."""

PACKAGED_CONFIGS = "model_configs"
"""Folder of small open_clip architectures shipped with the package (demo and tests run on them)."""

NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
"""Entries of TorchScript archives (OpenAI's, or a scripted open_clip model) that are not weights."""

CONFIG_SUFFIX = ".json"
"""A ``backbone`` ending in this is the path of an open_clip model-config file, not a model name."""

CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
"""Keys open_clip requires of a model config (it silently skips files without them)."""


class WeightsUnavailableError(RuntimeError):
    """Raised when CLIP weights cannot be obtained (offline, missing file, wrong architecture)."""


def packaged_model_names() -> list[str]:
    """Names of the open_clip architectures shipped in ``anomalib_bayes_pfl/model_configs``."""
    folder = resources.files(__package__) / PACKAGED_CONFIGS
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if entry.name.endswith(".json"))


def _register_config_file(path: Path) -> str:
    """Register an open_clip model-config JSON file with open_clip and return its model name (the file's stem).

    A file already registered with the same content is not registered again. A file whose stem is already the
    name of another architecture replaces it (with a warning), as ``open_clip.add_model_config`` does.

    Raises:
        ValueError: If the file does not exist or is not an open_clip model config.
    """
    fix = (
        "Pass an open_clip model name (open_clip.list_models()) or the path of an existing open_clip model-config "
        f"JSON file with the keys {', '.join(CONFIG_KEYS)}, named '<model name>.json'."
    )
    if not path.is_file():
        msg = f"Backbone config file not found: {path}. {fix}"
        raise ValueError(msg)
    if path.suffix != CONFIG_SUFFIX:
        msg = f"Backbone config file {path} must end in '{CONFIG_SUFFIX}' (lower case) for open_clip to read it. {fix}"
        raise ValueError(msg)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        msg = f"Backbone config file {path} is not valid JSON ({error}). {fix}"
        raise ValueError(msg) from None
    missing = [key for key in CONFIG_KEYS if key not in config] if isinstance(config, dict) else list(CONFIG_KEYS)
    if missing:
        msg = f"Backbone config file {path} is not an open_clip model config: it lacks {', '.join(missing)}. {fix}"
        raise ValueError(msg)
    name = path.stem
    registered = open_clip.get_model_config(name)
    if registered != config:
        if registered is not None:
            logger.warning("The backbone config %s replaces open_clip's registered architecture %r.", path, name)
        open_clip.add_model_config(path.resolve())
    return name


def model_name(backbone: str) -> str:
    """The open_clip model name of ``backbone``: the name itself, or the stem of a model-config JSON file.

    A config file is registered with open_clip on first use, so everything that resolves a backbone accepts both.

    Args:
        backbone (str): An open_clip model name, or the path of an open_clip model-config ``.json`` file.

    Returns:
        str: The name under which open_clip knows the architecture.

    Example:
        >>> model_name("bayes-pfl-tiny")
        'bayes-pfl-tiny'
        >>> model_name("configs/my-vit.json")  # doctest: +SKIP
        'my-vit'
    """
    if backbone.lower().endswith(CONFIG_SUFFIX):
        return _register_config_file(Path(backbone).expanduser())
    return backbone


def _model_config(backbone: str) -> dict:
    """Return open_clip's config for ``backbone`` (a name or a config file), registering it on first use.

    Packaged configs and config files are registered here, not at import, so importing the package never changes
    open_clip's registry.
    """
    name = model_name(backbone)
    if name not in open_clip.list_models() and name in packaged_model_names():
        config_file = resources.files(__package__) / PACKAGED_CONFIGS / f"{name}.json"
        with resources.as_file(config_file) as path:
            open_clip.add_model_config(path)
    config = open_clip.get_model_config(name)
    if config is None:
        known = ", ".join(open_clip.list_models() + packaged_model_names())
        msg = (
            f"Unknown backbone {name!r}. Use an open_clip model name, one of: {known}; or the path of an "
            "open_clip model-config JSON file."
        )
        raise ValueError(msg)
    return config


def _vision_config(name: str) -> dict:
    """The ``vision_cfg`` of a ViT backbone (a name or a config file), rejecting non-ViT architectures."""
    vision = _model_config(name).get("vision_cfg", {})
    if vision.get("patch_size") is None or not isinstance(vision.get("layers"), int):
        msg = f"Backbone {name!r} is not a ViT CLIP (no patch_size/layers in its config); use a ViT model."
        raise ValueError(msg)
    return vision


def vision_depth(name: str) -> int:
    """Number of blocks of a ViT backbone, read from its config (nothing is built).

    Args:
        name (str): open_clip model name, or the path of an open_clip model-config JSON file.

    Returns:
        int: The number of residual blocks of the vision tower.

    Example:
        >>> vision_depth("bayes-pfl-tiny")
        4
    """
    return _vision_config(name)["layers"]


TRUST_REMOTE_CODE = "TRUST_REMOTE_CODE"
"""Environment variable that allows loading files whose loading runs code, as for anomalib's pickled exports
(``anomalib.deploy.TorchInferencer``): ``1`` or ``true`` (any case) allows it."""

CONVERT_COMMAND = "python -m anomalib_bayes_pfl.convert_clip"
"""Command that converts a TorchScript archive once into a plain state-dict file (:mod:`.convert_clip`)."""

OPENAI_URL_HOST = "openaipublic"
"""open_clip's ``openai`` tags download OpenAI's archives from this host; the URL's folder is the file's SHA-256."""

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
"""SHA-256 of files already hashed in this process, by (resolved path, size, modification time)."""


def trusts_remote_code() -> bool:
    """Whether ``TRUST_REMOTE_CODE`` allows loading files that run code (anomalib's rule: ``1`` or ``true``)."""
    return os.environ.get(TRUST_REMOTE_CODE, "0").lower() in {"1", "true"}


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips (OpenAI's released CLIP files among them) hold code: a ``code/`` folder, ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


@functools.cache
def published_openai_hashes() -> frozenset[str]:
    """SHA-256 digests of OpenAI's released CLIP archives, as open_clip's pretrained registry pins them."""
    digests = set()
    for name, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_cfg(name, tag).get("url", "")
        parts = url.split("/")
        if OPENAI_URL_HOST in url and len(parts) > 1 and len(parts[-2]) == 64:
            digests.add(parts[-2].lower())
    return frozenset(digests)


def _sha256(path: Path) -> str:
    """SHA-256 of a file, hashed once per process (OpenAI's ViT-L-14-336 archive is 0.9 GB)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(functools.partial(file.read, 1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def is_published_openai_archive(path: Path) -> bool:
    """Whether ``path`` is byte for byte one of OpenAI's released archives (what the ``openai`` tags download).

    Such a file runs only OpenAI's published code, which open_clip itself loads for the ``openai`` tags after the
    same checksum test, so it needs no opt-in.
    """
    return _sha256(path) in published_openai_hashes()


def read_torchscript_archive(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive. Loading it RUNS CODE stored in the file: trusted files only.

    This is the one place an archive is opened; callers decide trust (:func:`_read_state_dict` through
    ``TRUST_REMOTE_CODE`` or the published checksums, :mod:`.convert_clip` by being run on the file).
    """
    return torch.jit.load(str(path), map_location="cpu").state_dict()


def _untrusted_archive_message(path: Path) -> str:
    """Why an archive is refused and the two ways forward: convert it once, or opt in."""
    converted = path.with_name(f"{path.stem}-state-dict.pt")
    return (
        f"{path} is a TorchScript archive: loading it runs code stored in the file, which is disabled by default "
        "(it is not one of OpenAI's released archives, whose checksums open_clip pins). If you trust its source, "
        f"convert it once into a plain weights file and use that: `{CONVERT_COMMAND} {path} {converted}`, then "
        f"pretrained='{converted}' (--model.pretrained {converted}); or set the environment variable "
        f"{TRUST_REMOTE_CODE}=1 to load archives directly, as anomalib requires for pickled models."
    )


def _read_state_dict(path: Path, torchscript: bool) -> dict[str, torch.Tensor]:
    """Read CLIP weights: a state dict with ``weights_only``, or (``torchscript``) a TorchScript archive.

    State dicts are open_clip checkpoints or OpenAI-layout files (such as :mod:`.convert_clip` writes). An archive
    runs code when loaded, so it is read only if it is one of OpenAI's released archives (checksum) or
    ``TRUST_REMOTE_CODE=1`` is set; otherwise the error says how to convert it once with :mod:`.convert_clip`.

    Raises:
        WeightsUnavailableError: If the file cannot be read safely, or is an archive that is not trusted.
    """
    if torchscript:
        published = is_published_openai_archive(path)
        if not (published or trusts_remote_code()):
            raise WeightsUnavailableError(_untrusted_archive_message(path))
        if not published:
            logger.warning(
                "%s=1: loading the TorchScript archive %s runs code stored in it. Only do this for files you trust.",
                TRUST_REMOTE_CODE,
                path,
            )
        state_dict = read_torchscript_archive(path)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
            reason = str(error).splitlines()[0][:300] if str(error).strip() else type(error).__name__
            msg = f"Could not read CLIP weights from {path}: {reason}. Expected an open_clip/OpenAI CLIP checkpoint."
            raise WeightsUnavailableError(msg) from None
        if isinstance(state_dict, dict) and "state_dict" in state_dict:
            state_dict = state_dict["state_dict"]
        if not isinstance(state_dict, dict) or not all(isinstance(key, str) for key in state_dict):
            msg = f"{path} does not hold a state dict of CLIP weights. Expected an open_clip/OpenAI CLIP checkpoint."
            raise WeightsUnavailableError(msg)
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    for key in NON_WEIGHT_KEYS:
        state_dict.pop(key, None)
    return state_dict


def _has_openai_layout(path: Path) -> bool:
    """Whether a state-dict file is in OpenAI's layout: it keeps OpenAI's ``input_resolution`` entry.

    :mod:`.convert_clip` writes OpenAI's archives this way. Such weights were trained with QuickGELU, so
    ``activation="auto"`` treats the file as it treats the archive. Tensors are memory-mapped, nothing is copied.
    """
    if not zipfile.is_zipfile(path):
        return False
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the actual load
        return False
    content = content.get("state_dict", content) if isinstance(content, dict) else None
    return isinstance(content, dict) and any(key in content for key in ("input_resolution", "module.input_resolution"))


def _download(name: str, tag: str) -> Path:
    """Fetch an open_clip pretrained tag, turning network failures into one actionable message."""
    config = open_clip.get_pretrained_cfg(name, tag)
    source = config.get("url") or config.get("hf_hub") or "open_clip's pretrained registry"
    try:
        return Path(open_clip.download_pretrained(config))
    except Exception as error:  # noqa: BLE001 - urllib, HF hub and OS errors all mean "not available here"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        msg = (
            f"Could not obtain the pretrained weights {tag!r} of {name!r} ({reason}). This machine may be offline. "
            f"Download them elsewhere ({source}) and pass the local file instead of the tag, e.g. "
            f"BayesPFL(backbone={name!r}, pretrained='/path/to/weights.pt') or --model.pretrained /path/to/weights.pt."
        )
        raise WeightsUnavailableError(msg) from None


def resolve_weights(name: str, pretrained: str | None) -> Path | None:
    """Map ``pretrained`` (None, a tag or a path) to a local weights file, validating it early."""
    if not pretrained:
        return None
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return _download(name, pretrained)
    path = Path(pretrained).expanduser()
    if path.suffix or path.is_absolute() or path.exists():
        if not path.is_file():
            msg = f"CLIP weights file not found: {path}. Check the path, or use a pretrained tag of {name!r}: {tags}."
            raise WeightsUnavailableError(msg)
        return path
    msg = f"Unknown pretrained tag {pretrained!r} for {name!r}. Use one of {tags}, a local weights file, or None."
    raise ValueError(msg)


def _wants_quick_gelu(activation: str, openai_weights: bool) -> bool:
    """Decide the MLP activation: QuickGELU for OpenAI weights under ``auto``, else as asked."""
    if activation not in ACTIVATIONS:
        msg = f"Unknown activation {activation!r}; use one of {ACTIVATIONS}."
        raise ValueError(msg)
    if activation != "auto":
        return activation == "quick_gelu"
    return openai_weights


def _batch_first(transformer: nn.Module) -> bool:
    """open_clip < 2.26 runs its transformers sequence-first; later versions batch-first."""
    return bool(getattr(transformer, "batch_first", False))


class ClipBackbone(nn.Module):
    """Frozen CLIP that returns the global image feature, raw patch tokens of chosen blocks and text features.

    Args:
        name (str): open_clip model name (``open_clip.list_models()``), a packaged tiny config, or the path of an
            open_clip model-config JSON file (registered with open_clip under the file's stem, e.g.
            ``"configs/my-vit.json"`` -> ``"my-vit"``). Defaults to ``"ViT-L-14-336"``.
        pretrained (str | None): open_clip pretrained tag, a local weights file, or ``None`` for random weights.
            Defaults to ``"openai"``.
        image_size (int): Input side length; must be a multiple of the patch size. Defaults to ``518``.
        feature_layers (tuple[int, ...]): 1-indexed residual blocks whose outputs are tapped.
            Defaults to ``(6, 12, 18, 24)``.
        activation (str): ``"auto"``, ``"gelu"`` or ``"quick_gelu"``; see :data:`ACTIVATIONS`.
            Defaults to ``"auto"``.
        locality_window (int | None): Odd side, in patches, of the window patch queries attend to in
            ``locality_layers`` (locality-aware attention); ``None`` keeps CLIP's global attention.
            Defaults to ``None``.
        locality_layers (Sequence[int] | None): 1-indexed blocks with the window; ``None``: the last block.
            Defaults to ``None``.

    Example:
        >>> backbone = ClipBackbone("bayes-pfl-tiny", pretrained=None, image_size=64, feature_layers=(1, 2))
        >>> global_feature, patches = backbone(torch.zeros(2, 3, 64, 64))
        >>> global_feature.shape, len(patches), patches[0].shape
        (torch.Size([2, 64]), 2, torch.Size([2, 64, 96]))
    """

    def __init__(
        self,
        name: str = defaults.BACKBONE,
        pretrained: str | None = defaults.PRETRAINED,
        image_size: int = defaults.IMAGE_SIZE,
        feature_layers: tuple[int, ...] = defaults.FEATURE_LAYERS,
        activation: str = "auto",
        locality_window: int | None = None,
        locality_layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        vision = _vision_config(name)
        self._check_geometry(name, vision, image_size, feature_layers)
        self.locality_layers = check_locality(locality_window, locality_layers, vision["layers"])
        architecture = model_name(name)
        weights = resolve_weights(architecture, pretrained)
        torchscript = weights is not None and _is_torchscript_archive(weights)
        openai_layout = weights is not None and not torchscript and _has_openai_layout(weights)
        openai_weights = pretrained == "openai" or torchscript or openai_layout
        quick_gelu = _wants_quick_gelu(activation, openai_weights=openai_weights)
        self.clip = open_clip.create_model(
            architecture, pretrained=None, force_image_size=image_size, force_quick_gelu=quick_gelu
        )
        self._check_supported(name)
        if weights is not None:
            self._load(weights, name, torchscript)
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.image_size = image_size
        self.feature_layers = tuple(feature_layers)
        if self.locality_layers:
            self.register_buffer("locality_mask", local_window_mask(self.grid_size, locality_window), persistent=False)

    @staticmethod
    def _check_geometry(name: str, vision: dict, image_size: int, feature_layers: tuple[int, ...]) -> None:
        """Reject sizes and layers the architecture cannot serve, before anything heavy is built."""
        depth, patch_size = vision["layers"], vision["patch_size"]
        if image_size <= 0 or image_size % patch_size:
            msg = f"image_size={image_size} must be a positive multiple of {name!r}'s patch size {patch_size}."
            raise ValueError(msg)
        if not feature_layers or any(layer < 1 or layer > depth for layer in feature_layers):
            msg = f"feature_layers={tuple(feature_layers)} must be 1-indexed blocks within 1..{depth} for {name!r}."
            raise ValueError(msg)
        if list(feature_layers) != sorted(set(feature_layers)):
            # taps come out in block order and each block once, while the head has one RCA and image-branch
            # layer per entry: a repeat or another order would pair layers with the wrong blocks
            msg = (
                f"feature_layers={tuple(feature_layers)} must list each block once, in increasing order "
                f"(e.g. {tuple(sorted(set(feature_layers)))})."
            )
            raise ValueError(msg)

    def _check_supported(self, name: str) -> None:
        """Bayes-PFL needs a plain class-token ViT and a CLIP (not custom/HF) text tower."""
        visual = self.clip.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok":
            msg = f"Backbone {name!r} must be a class-token open_clip VisionTransformer without attention pooling."
            raise ValueError(msg)
        if not hasattr(self.clip, "token_embedding"):
            msg = f"Backbone {name!r} has a custom text tower; Bayes-PFL needs open_clip's built-in CLIP text model."
            raise ValueError(msg)

    def _load(self, weights: Path, name: str, torchscript: bool) -> None:
        """Load weights, resizing the positional embedding to this grid; report an architecture mismatch clearly.

        Floating tensors are upcast to fp32 first, as the reference's loader does (``model.float()``): OpenAI's
        files are fp16, and the grid is resized in fp32 (CPU interpolation has no fp16 kernel, and resizing in fp16
        would round differently).
        """
        state_dict = {
            key: value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for key, value in _read_state_dict(weights, torchscript).items()
        }
        resize_pos_embed(state_dict, self.clip)
        try:
            self.clip.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            detail = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
            msg = (
                f"The weights in {weights} do not fit the {name!r} architecture ({detail}). "
                f"Use the file that matches {name!r}, or pick the backbone name that matches the file."
            )
            raise WeightsUnavailableError(msg) from None

    def train(self, mode: bool = True) -> ClipBackbone:
        """Keep CLIP in eval mode whatever the trainer asks: it is frozen."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (the projected features)."""
        return self.clip.text_projection.shape[1]

    @property
    def vision_width(self) -> int:
        """Width of the vision transformer's residual stream (raw patch tokens)."""
        return self.clip.visual.conv1.out_channels

    @property
    def text_width(self) -> int:
        """Width of the text transformer's token embeddings, where prompts are injected."""
        return self.clip.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        """Maximum text length in tokens."""
        return self.clip.positional_embedding.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid of the vision transformer at ``image_size``."""
        return tuple(self.clip.visual.grid_size)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch, class and position embeddings of ``images``, in the transformer's layout."""
        visual = self.clip.visual
        x = visual.conv1(images)  # shape = [N, W, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # shape = [N, grid ** 2, W]
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        return x if _batch_first(visual.transformer) else x.transpose(0, 1)  # NLD -> LND

    def _blocks(self, x: torch.Tensor, depth: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Run blocks ``1..depth`` on embedded tokens, yielding ``(block index, output)``.

        Blocks listed in :attr:`locality_layers` run with the local-window attention mask.
        """
        for index, block in enumerate(self.clip.visual.transformer.resblocks[:depth], start=1):
            x = block(x, attn_mask=self._attention_mask(index))
            yield index, x

    def _attention_mask(self, index: int) -> torch.Tensor | None:
        """The local-window mask for blocks with locality-aware attention, else none."""
        return self.locality_mask if index in self.locality_layers else None

    def _batch_major(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of the vision transformer's layout as ``(N, L, W)``."""
        return x if _batch_first(self.clip.visual.transformer) else x.transpose(0, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode images.

        Args:
            images (torch.Tensor): Normalised images of shape ``(N, 3, S, S)``, ``S = image_size``.

        Returns:
            tuple[torch.Tensor, list[torch.Tensor]]: The global feature ``(N, E)`` (``ln_post`` of the last
            class token, projected, not normalised) and one ``(N, P, W)`` raw patch-token tensor per tapped
            block (class token dropped), ``P`` = grid cells, ``W`` = vision width.
        """
        visual = self.clip.visual
        taps = []
        for index, x in self._blocks(self._embed(images), len(visual.transformer.resblocks)):
            if index in self.feature_layers:
                taps.append(self._batch_major(x)[:, 1:])
        global_feature = visual.ln_post(self._batch_major(x)[:, 0]) @ visual.proj
        return global_feature, taps

    def class_attention(self, images: torch.Tensor, layer: int) -> torch.Tensor:
        """Class-token attention over the patches in block ``layer`` (1-indexed), averaged over heads.

        This is the frozen CLIP's own notion of where the object is; object-attention anomaly generation uses
        it as a foreground map. Only blocks ``1..layer`` run.

        Args:
            images (torch.Tensor): Normalised images ``(N, 3, S, S)``.
            layer (int): 1-indexed block whose attention is read.

        Returns:
            torch.Tensor: Attention weights ``(N, rows, columns)`` on the patch grid (rows sum to at most 1).
        """
        blocks = self.clip.visual.transformer.resblocks
        if not 1 <= layer <= len(blocks):
            msg = f"Attention layer {layer} must be a 1-indexed block within 1..{len(blocks)}."
            raise ValueError(msg)
        block = blocks[layer - 1]
        if not isinstance(block.attn, nn.MultiheadAttention):
            msg = "Class-token attention needs open_clip's standard blocks (nn.MultiheadAttention)."
            raise TypeError(msg)
        x = self._embed(images)
        for _, output in self._blocks(x, layer - 1):
            x = output
        tokens = block.ln_1(x)
        weights = block.attn(tokens, tokens, tokens, need_weights=True, attn_mask=self._attention_mask(layer))[1]
        return weights[:, 0, 1:].reshape(images.shape[0], *self.grid_size)

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``(M, L)`` into ``(M, L, text_width)``."""
        return self.clip.token_embedding(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """Run the text tower on token embeddings and read out the end-of-text token.

        The causal mask means nothing after the end-of-text token changes its output, so ``embeddings`` may be
        cut to the longest prompt (fewer than the 77 positions CLIP was trained with).

        Args:
            embeddings (torch.Tensor): Token embeddings ``(M, L, text_width)``, ``L <= context_length``.
            eos_index (torch.Tensor): Position of the end-of-text token of each sequence, ``(M,)``.

        Returns:
            torch.Tensor: Projected, unnormalised text features ``(M, E)``.
        """
        length = embeddings.shape[1]
        x = embeddings + self.clip.positional_embedding[:length].to(embeddings.dtype)
        attn_mask = self.clip.attn_mask[:length, :length]
        batch_first = _batch_first(self.clip.transformer)
        x = x if batch_first else x.transpose(0, 1)
        x = self.clip.transformer(x, attn_mask=attn_mask)
        x = x if batch_first else x.transpose(0, 1)
        x = self.clip.ln_final(x)
        eos = x[torch.arange(x.shape[0], device=x.device), eos_index]
        return eos @ self.clip.text_projection
