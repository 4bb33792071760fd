# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Resuming an interrupted training run so that it ends with the weights of an uninterrupted one.

Lightning's checkpoints restore weights, optimisers, schedulers and loop counters, but not where the random
generators stood, and saving their states is not enough either: a resumed run creates its first dataloader
iterator at a different moment than the uninterrupted run does (one iterator fewer, each of which draws a seed from
the global generator), so every later draw from the global generator shifts. Bayes-PFL therefore draws nothing
from it while training:

* each training step draws its prompt noise and synthetic anomalies from its own generator, seeded from
  ``(seed, step)`` (:func:`anomalib_bayes_pfl.training.step_generator`);
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

import contextlib
import os
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

SEED_STRIDE = 1_000_003
"""Multiplies the run's seed before the step or epoch is added, so runs with nearby seeds do not share seeds."""


LIGHTNING_SEED = "PL_GLOBAL_SEED"
"""Where ``lightning.seed_everything`` records the run's seed (anomalib 2.7's CLI ignores ``--seed_everything``)."""


def run_seed(seed: int | None = None) -> int:
    """The given seed, else the one ``lightning.seed_everything`` recorded for this run, else 0."""
    if seed is not None:
        return seed
    return int(os.environ.get(LIGHTNING_SEED, 0))


def _seeds_itself(seed: int | None) -> bool:
    """Whether the run's randomness comes from ``seed`` rather than from Lightning's ``seed_everything``."""
    return seed is not None or LIGHTNING_SEED not in os.environ


def seed_global_generator(seed: int | None) -> None:
    """Seed torch's global generator from ``run_seed(seed)``, unless ``seed`` is ``None`` and Lightning seeded the run.

    torch seeds its global generator from the OS at start-up, so without ``seed_everything`` (e.g. under
    ``anomalib train``) every draw from it, such as a shuffling ``DataLoader``'s order, changes from run to run.
    """
    if _seeds_itself(seed):
        torch.manual_seed(run_seed(seed))


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draws from the global generator inside come from ``run_seed(seed)``; the generator outside is left as it was.

    Unless ``seed`` is ``None`` and Lightning seeded the run: its generator is then drawn from as usual.

    Example:
        >>> with seeded(3):
        ...     first = torch.rand(2)
        >>> with seeded(3):
        ...     torch.equal(torch.rand(2), first)
        True
    """
    if not _seeds_itself(seed):
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed(seed))
        yield


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
