"""Two-rank CPU DDP training of a tiny Bayes-PFL, run as a script by ``test_ddp.py``.

Usage: ``python ddp_helpers.py CONFIG.json``. The config names the model arguments, the synthetic dataset, the
output folder and the launcher (``"spawn"``: Lightning's ``ddp_spawn`` path, which pickles trainer, model and
datamodule into fresh interpreters; ``"popen"``: Lightning's default ``ddp`` path, which re-runs this script once
per extra rank, as on a multi-GPU machine or a cluster node).

Every rank writes ``rank{N}.pt`` at the end of training with its head weights (everything but the frozen CLIP)
before and after training, the images it trained on, its own per-step losses and the trainer's final
(rank-reduced) metrics. With the spawn launcher the launching process also writes ``main.pt``: the weights
Lightning copied back into the model it was given.

This runs in its own interpreter, not inside pytest, so that

* the callback below is importable by the worker processes whatever pytest's import mode (with ``spawn`` it is
  unpickled from ``__main__``, which multiprocessing re-imports in each worker; with ``popen`` every rank runs
  this file);
* the ``popen`` launcher re-runs *this* script rather than the pytest command line;
* ``MASTER_PORT``, ``PL_GLOBAL_SEED``, thread settings and the process group never leak into the test process.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")  # the workers' deprecation chatter would bury a real failure in the test output

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.plugins.environments import LightningEnvironment  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL  # noqa: E402
from anomalib_bayes_pfl.checkpoints import head_state_dict  # noqa: E402
from anomalib_bayes_pfl.demo import demo_datamodule  # noqa: E402

WORLD_SIZE = 2
"""Two CPU processes on one node."""

COLLECTIVE_TIMEOUT = timedelta(seconds=120)
"""If the ranks ever diverge (one waits in an all-reduce the other never enters), fail instead of hanging."""

MAIN_FILE = "main.pt"
"""What the launching process holds after ``fit`` (spawn launcher only)."""


def rank_file(rank: int) -> str:
    """Name of the file rank ``rank`` writes at the end of training."""
    return f"rank{rank}.pt"


def _head(module: LightningModule) -> dict[str, Any]:
    """CPU copy of the trainable head of the Bayes-PFL inside ``module`` (tensors cloned, extra state as is)."""
    return {
        key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
        for key, value in head_state_dict(module.model).items()
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


class RecordRankState(Callback):
    """Writes what one rank did and ended with to ``<out_dir>/rank{N}.pt``.

    Args:
        out_dir (str): Existing folder shared by all ranks.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = str(out_dir)
        self.initial: dict[str, Any] | None = None
        self.steps: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Weights as training starts (after DDP's broadcast from rank 0)."""
        del trainer
        self.initial = _head(pl_module)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401 - whatever the manual-optimisation loop hands over
        batch: Any,  # noqa: ANN401
        batch_idx: int,
    ) -> None:
        """This rank's own (not reduced) loss, stage and images of the step."""
        del batch_idx
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps.append(
            {
                "global_step": trainer.global_step,
                "stage": int(pl_module.model.stage),
                "loss": float(loss),
                "images": [str(path) for path in batch.image_path],
            },
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the record of this rank."""
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
            "global_step": trainer.global_step,
            "stage": int(pl_module.model.stage),
            "strategy": type(trainer.strategy).__name__,
            "backend": trainer.strategy.process_group_backend,
            "initial": self.initial,
            "final": _head(pl_module),
            "steps": self.steps,
            "metrics": _scalars(trainer.callback_metrics),
        }
        torch.save(record, Path(self.out_dir) / rank_file(trainer.global_rank))


def build(config: dict[str, Any]) -> tuple[BayesPFL, AuxiliaryTrain, Trainer]:
    """The model, datamodule and two-rank CPU trainer described by ``config``.

    Two epochs of two steps each; ``stage1_max_epochs=1`` ends stage 1 after the first epoch, so both stages (and
    both optimisers) run under DDP. The two stages train disjoint parameter sets (stage 2 only the image branch,
    and stage 1 never uses the image branch's stage-2 layers), so DDP needs ``find_unused_parameters=True``.
    """
    out_dir = Path(config["out_dir"])
    seed_everything(config["seed"], workers=True)
    model = BayesPFL(**config["model"], stage1_max_epochs=1)
    datamodule = demo_datamodule(
        Path(config["root"]), config["seed"], train_batch_size=2, eval_batch_size=2, val_ratio=0.2
    )
    strategy = DDPStrategy(
        cluster_environment=LightningEnvironment(),  # no SLURM/LSF/torchelastic detection from the host's env
        process_group_backend="gloo",
        find_unused_parameters=True,
        start_method=config["start_method"],
        timeout=COLLECTIVE_TIMEOUT,
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        num_nodes=1,
        strategy=strategy,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=True,  # BayesPFL.configure_callbacks replaces the default with its ModelCheckpoint
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out_dir,
        callbacks=[RecordRankState(str(out_dir))],
    )
    return model, datamodule, trainer


def main(config_path: str) -> None:
    """Train as ``config_path`` says; the ranks write their records, the spawn launcher also ``main.pt``."""
    config = json.loads(Path(config_path).read_text())
    model, datamodule, trainer = build(config)
    trainer.fit(model, datamodule=datamodule)
    if config["start_method"] == "spawn":  # back in the launching process, which Lightning gave rank 0's weights
        torch.save({"final": _head(model), "stage": int(model.model.stage)}, Path(config["out_dir"]) / MAIN_FILE)


if __name__ == "__main__":
    main(sys.argv[1])
