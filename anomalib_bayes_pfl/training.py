# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""How Bayes-PFL trains: two stages, their optimisers and schedule, the stage switch and the prompt pair per step.

* **Stage 1** trains the prompt bank, the prompt flows, RCA and the class mapping with Adam over four learning-rate
  groups, warm-up then cosine decay. Each step trains one (normal, abnormal) pair of the bank, drawn at random.
* **Stage 1 ends** after ``patience`` validation epochs without a source pixel AP at least as high as the best
  (or at a cap of epochs); the best stage-1 weights of the head are restored, as the reference does, and
* **stage 2** trains the image branch alone (its own Adam), on frozen prompts, until ``patience`` epochs pass
  without a source image AP at least as high as its best (the reference's early stop).

Every random choice here is a function of the run's seed and the step, so DDP ranks agree and a resumed run draws
what an uninterrupted one would.

Paper:
    Qu et al., CVPR 2025, Sec. 3.6. Reference code: ``train.py`` of https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from .checkpoints import head_state_dict
from .resume import SEED_STRIDE
from .torch_model import BayesPFLModel
from .validation import lists_normal_images_only

SWITCHED = "switched"
"""What :meth:`StageSwitch.end_of_epoch` returns when the model has just been switched to stage 2."""

STOP = "stop"
"""What :meth:`StageSwitch.end_of_epoch` returns when stage 2 stopped improving and training should end."""

PAIR_SEED = 0x5EED
"""Offsets the pair generator's seed from the step generator's, so the pair is not correlated with the noise."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step's draws (prompt noise, synthetic anomalies), a function of seed and step.

    Example:
        >>> a, b = step_generator(0, 5), step_generator(0, 5)
        >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
        True
    """
    return torch.Generator().manual_seed((seed * SEED_STRIDE + step) % 2**63)


def choose_pair(num_prompts: int, seed: int, step: int) -> int:
    """The bank pair trained at ``step``: uniform over the bank, the same on every rank and after a resume.

    Example:
        >>> sorted({choose_pair(3, seed=0, step=step) for step in range(50)})
        [0, 1, 2]
    """
    generator = torch.Generator().manual_seed((seed * SEED_STRIDE + PAIR_SEED + step) % 2**63)
    return int(torch.randint(num_prompts, (1,), generator=generator))


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine decay to 0 (the reference's schedule).

    Example:
        >>> factor = warmup_cosine(10, 0.1)
        >>> [round(factor(step), 3) for step in (0, 1, 5, 10)]
        [0.0, 1.0, 0.587, 0.0]
    """
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(warmup, 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return factor


def build_optimizers(
    model: BayesPFLModel,
    lr: float,
    lr_prompt: float,
    lr_flow: float,
    lr_temperature: float,
    betas: tuple[float, float],
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """The reference's two Adam optimisers: stage 1 over four learning-rate groups, stage 2 on the image branch."""
    groups = model.parameter_groups()
    stage1 = torch.optim.Adam(
        [
            {"params": groups["prompt"], "lr": lr_prompt},
            {"params": groups["temperature"], "lr": lr_temperature},
            {"params": groups["flow"], "lr": lr_flow},
            {"params": groups["other"], "lr": lr},
        ],
        betas=betas,
    )
    return stage1, torch.optim.Adam(groups["image_branch"], lr=lr, betas=betas)


def check_schedule(warmup_ratio: float, stage_patience: int, stage1_max_epochs: int | None) -> None:
    """Reject schedule settings that cannot work, before CLIP is built."""
    if not 0.0 <= warmup_ratio < 1.0:
        msg = f"warmup_ratio={warmup_ratio} must lie in [0, 1)."
        raise ValueError(msg)
    if stage_patience < 1:
        msg = f"stage_patience={stage_patience} must be at least 1."
        raise ValueError(msg)
    if stage1_max_epochs is not None and stage1_max_epochs < 1:
        msg = f"stage1_max_epochs={stage1_max_epochs} must be >= 1 or None."
        raise ValueError(msg)


def holds_no_anomalies(datamodule: object) -> bool:
    """Whether the datamodule's training split is known to hold normal images only (anomalib datasets list labels).

    Example:
        >>> from types import SimpleNamespace
        >>> import pandas as pd
        >>> holds_no_anomalies(SimpleNamespace(train_data=SimpleNamespace(samples=pd.DataFrame({"label_index": [0]}))))
        True
    """
    return lists_normal_images_only(getattr(getattr(datamodule, "train_data", None), "samples", None))


def synthesise_anomalies(setting: bool | None, normal_only: bool) -> bool:
    """Whether a fit synthesises anomalies: as set, or (``None``) exactly when the training split holds none.

    Bayes-PFL learns from anomalies and their masks; a normal-only split (e.g. MVTecAD's train split, which is what
    ``anomalib train --model BayesPFL --data MVTecAD`` gives) has none unless they are synthesised.

    Example:
        >>> synthesise_anomalies(None, normal_only=True), synthesise_anomalies(None, normal_only=False)
        (True, False)

    Raises:
        ValueError: If synthesis is switched off (``False``) on a normal-only split, naming the ways out.
    """
    if setting is False and normal_only:
        msg = (
            "The training split holds no anomalous images (e.g. MVTecAD's train split) and synthetic_anomalies=False, "
            "so Bayes-PFL has nothing to learn from. Let it synthesise anomalies (synthetic_anomalies=None, the "
            "default, or True; --model.synthetic_anomalies null) or train on labelled auxiliary data with "
            "AuxiliaryTrain."
        )
        raise ValueError(msg)
    return normal_only if setting is None else setting


class StageSwitch:
    """The reference's two early stops: stage 1 ends, then training ends, after ``patience`` epochs without gain.

    * **Stage 1** ends after ``patience`` consecutive validation epochs without a source pixel AP at least as high
      as the best so far (or at a cap of epochs). The head of the best epoch is remembered and restored into the
      model at the switch (the reference continues from its best stage-1 weights, not the last ones).
    * **Stage 2** then watches the source image AP from scratch and asks to stop after ``patience`` epochs without
      one at least as high as its best.

    A tie counts as a gain (the reference's ``>=``): it resets the patience and keeps the later weights.

    Args:
        patience (int): Validation epochs without improvement before the switch, and before the stop.
        max_epochs (int | None): Switch after this many stage-1 epochs at the latest; ``None``: patience only.
    """

    def __init__(self, patience: int, max_epochs: int | None) -> None:
        self.patience, self.max_epochs = patience, max_epochs
        self.best: float | None = None
        self.stale = 0
        self.best_head: dict[str, torch.Tensor] | None = None

    def end_of_epoch(
        self, model: BayesPFLModel, epoch: int, pixel_ap: float | None, image_ap: float | None = None
    ) -> str | None:
        """Record epoch ``epoch``'s validation; switch the model to stage 2, or say that training should stop.

        Args:
            model (BayesPFLModel): The model in training; its ``stage`` and head change at the switch.
            epoch (int): 0-indexed epoch that just ended.
            pixel_ap (float | None): Its source pixel AP, watched in stage 1 (``None``: validation did not run).
            image_ap (float | None): Its source image AP, watched in stage 2 (``None``: validation did not run).

        Returns:
            str | None: :data:`SWITCHED` when the model was switched to stage 2 now, :data:`STOP` when stage 2 ran
            out of patience, else ``None``.
        """
        if model.stage == 2:
            self._record(image_ap)
            return STOP if self.stale >= self.patience else None
        if self._record(pixel_ap):
            self.best_head = copy.deepcopy(head_state_dict(model))
        reached_cap = self.max_epochs is not None and epoch + 1 >= self.max_epochs
        if self.stale < self.patience and not reached_cap:
            return None
        if self.best_head is not None:
            model.load_state_dict(self.best_head, strict=False)
        model.stage = 2
        # stage 2 watches another metric from scratch; its checkpoints need not carry a second head
        self.best, self.stale, self.best_head = None, 0, None
        return SWITCHED

    def _record(self, value: float | None) -> bool:
        """Count ``value`` against the best so far; whether it is a gain (ties are, as in the reference)."""
        if value is None:
            return False
        if self.best is None or value >= self.best:
            self.best, self.stale = value, 0
            return True
        self.stale += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for checkpoints."""
        return {"best": self.best, "stale": self.stale, "best_head": self.best_head}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best, self.stale, self.best_head = state["best"], state["stale"], state["best_head"]
