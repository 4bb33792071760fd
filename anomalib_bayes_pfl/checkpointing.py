# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Durable training checkpoints: the last state every epoch, atomic writes, and no copy of the frozen CLIP.

* :class:`BestAndLastCheckpoint` keeps ``model.ckpt`` (best held-out source validation) and ``last.ckpt``, written
  at the end of **every** epoch (Lightning rewrites ``last.ckpt`` only when a new best is saved, so a crash could
  lose every epoch since the last improvement). A run resumed from one of its checkpoints keeps writing into that
  checkpoint's folder, so it continues the same best-checkpoint bookkeeping.
* :func:`atomic_save` writes next to the destination, flushes and syncs, then renames over it: a kill at any moment
  leaves either the previous file or the new one, never a truncated checkpoint, and the temporary files of killed
  writes are removed by the next save.
* :func:`drop_frozen_clip` / :func:`restore_frozen_clip`: checkpoints store the trained head, the settings and the
  optimiser, scheduler and stage state; the frozen CLIP (GBs at ViT-L-14-336) is rebuilt from ``pretrained`` when
  the checkpoint loads, and an identity of its weights (a SHA-256 of the state dict) is recorded so that loading
  against other CLIP weights is refused. With ``pretrained=None`` (random CLIP weights, which cannot be rebuilt)
  the CLIP stays in the checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from lightning.pytorch import LightningModule, Trainer

from .atomic import atomic_write
from .backbone import ClipBackbone
from .safe_loading import _quote

BACKBONE_PREFIX = "model.backbone."
"""State-dict prefix of the frozen CLIP inside a :class:`~anomalib_bayes_pfl.BayesPFL` checkpoint."""

CLIP_KEY = "bayes_pfl_clip"
"""Checkpoint entry recording which CLIP weights the head was trained on."""


def atomic_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write ``checkpoint`` to ``path`` so that a kill at any moment leaves the old file or the new one, whole.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_save({"a": torch.ones(2)}, folder / "x.ckpt")
        >>> sorted(p.name for p in folder.iterdir()), torch.load(folder / "x.ckpt")["a"].tolist()
        (['x.ckpt'], [1.0, 1.0])
    """
    atomic_write(path, lambda file: torch.save(checkpoint, file))


class BestAndLastCheckpoint(ModelCheckpoint):
    """anomalib's checkpoint callback, with ``last.ckpt`` at the end of every epoch and atomic writes.

    ``last.ckpt`` is written after the model's own end-of-epoch hook (Lightning calls checkpoint callbacks last), so
    it holds the stage switch of that epoch: a run resumed from it starts at the next epoch exactly as the
    uninterrupted run does.
    """

    last_writes = 0
    """``last.ckpt`` writes so far (a class default, counted per instance)."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save as Lightning does, then write ``last.ckpt`` unless Lightning just wrote it."""
        written = self.last_writes
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and self.last_writes == written and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        """Lightning's ``last.ckpt`` write, counted."""
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self.last_writes += 1

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resuming: keep writing into the resumed run's checkpoint folder, with its best score and paths."""
        saved = state_dict.get("dirpath")
        if isinstance(saved, str) and Path(saved).is_dir():
            self.dirpath = saved
        super().load_state_dict(state_dict)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Write atomically next to the destination (Lightning's writer stages the file in the temp folder)."""
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)  # noqa: SLF001
        if trainer.is_global_zero:
            atomic_save(checkpoint, filepath)
        trainer.strategy.barrier("BestAndLastCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


def clip_identity(backbone: ClipBackbone) -> str:
    """SHA-256 of the frozen CLIP's weights (names, shapes, dtypes and bytes), computed once per backbone."""
    cached = getattr(backbone, "_identity", None)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(backbone.clip.state_dict().items()):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        cached = digest.hexdigest()
        backbone._identity = cached  # noqa: SLF001 - a cache, invalid only if frozen weights change
    return cached


def drop_frozen_clip(checkpoint: dict[str, Any], backbone: ClipBackbone, settings: dict[str, Any]) -> None:
    """Remove the frozen CLIP from ``checkpoint["state_dict"]`` (if it can be rebuilt) and record its identity."""
    rebuildable = settings.get("pretrained") is not None
    checkpoint[CLIP_KEY] = {
        "identity": clip_identity(backbone),
        "backbone": str(settings.get("backbone")),
        "pretrained": None if settings.get("pretrained") is None else str(settings["pretrained"]),
        "stored": not rebuildable,
    }
    if rebuildable:
        state = checkpoint.get("state_dict", {})
        for key in [key for key in state if key.startswith(BACKBONE_PREFIX)]:
            del state[key]


def restore_frozen_clip(checkpoint: dict[str, Any], backbone: ClipBackbone) -> None:
    """Put this model's CLIP back into a head-only checkpoint, after checking it is the CLIP the head was trained on.

    Raises:
        ValueError: If the checkpoint's CLIP identity differs from this model's CLIP (other weights, other
            architecture or input size).
    """
    record = checkpoint.get(CLIP_KEY)
    state = checkpoint.get("state_dict")
    if not isinstance(record, dict) or not isinstance(state, dict) or record.get("stored", True):
        return
    expected, actual = record.get("identity"), clip_identity(backbone)
    if expected != actual:
        msg = (
            f"This checkpoint's head was trained on other CLIP weights (backbone {_quote(record.get('backbone'))}, "
            f"pretrained {_quote(record.get('pretrained'))}, SHA-256 {_quote(expected)}) than the ones this model "
            f"loaded (SHA-256 {actual}). Checkpoints store the head only; pass the CLIP weights it was trained with "
            "(--model.pretrained / BayesPFL(pretrained=...)) at the same image_size."
        )
        raise ValueError(msg)
    state.update({BACKBONE_PREFIX + key: value for key, value in backbone.state_dict().items()})
