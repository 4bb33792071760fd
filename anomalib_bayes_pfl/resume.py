# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Resuming an interrupted training run so that it ends with the weights of an uninterrupted one.

Lightning's checkpoints restore weights, optimisers, schedulers and loop counters, but not where the random
generators stood, and saving their states is not enough either: a resumed run creates its first dataloader
iterator at a different moment than the uninterrupted run does (one iterator fewer, each of which draws a seed from
the global generator), so every later draw shifts. Bayes-PFL draws on every step (prompt-flow noise, synthetic
anomalies) and shuffles every epoch, so this module makes both depend on the step and the epoch alone:

* :class:`StepSeeding` seeds the torch, NumPy and Python generators before each training step from
  ``(seed, global_step)``;
* :class:`EpochShuffleSampler` shuffles from ``(seed, epoch)`` with a generator of its own (Lightning calls its
  ``set_epoch`` at the start of every epoch), so the order ignores the global generator.

Paper and reference train without interruptions; this is engineering for unattended runs.

Example:
    >>> sampler = EpochShuffleSampler(5, seed=0)
    >>> first = list(sampler)
    >>> sampler.set_epoch(1)
    >>> sorted(list(sampler)) == sorted(first), list(sampler) == list(sampler)
    (True, True)
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import Sampler

SEED_STRIDE = 1_000_003
"""Multiplies the run's seed before the step is added, so runs with nearby seeds do not share step seeds."""


def _run_seed(seed: int | None) -> int:
    """The given seed, else the one ``lightning.seed_everything`` recorded for this run, else 0."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seed_step(seed: int, step: int) -> None:
    """Seed the torch, NumPy and Python generators from ``(seed, step)``."""
    derived = (seed * SEED_STRIDE + step) % 2**32
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)


class StepSeeding(Callback):
    """Seeds the global generators before every training step from the run's seed and the step number.

    Args:
        seed (int | None): Seed of the run; ``None`` takes the one given to ``lightning.seed_everything`` (0 if
            none was). Defaults to ``None``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:  # noqa: ANN401 - any batch type
        """Draws of this step depend on the step alone, wherever the run was resumed."""
        del pl_module, batch, batch_idx
        seed_step(_run_seed(self.seed), trainer.global_step)


class EpochShuffleSampler(Sampler[int]):
    """A new order every epoch, a function of ``(seed, epoch)`` only.

    Args:
        size (int): Number of samples.
        seed (int | None): Seed of the orders; ``None`` draws one from the global generator now. Defaults to
            ``None``.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seed = int(torch.randint(2**31, (1,))) if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * SEED_STRIDE + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
