"""Normal-only training data works by default: anomalies are synthesised when the training split holds none.

``synthetic_anomalies=None`` (the default) decides once per fit, in ``on_fit_start`` (before the sanity check, whose
label-free validation needs the generator), from the training split of every rank; ``True`` and ``False`` are kept.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data import AuxiliaryTrain

pytestmark = pytest.mark.integration


class SynthesisAtSanityCheck(Callback):
    """Records whether the model synthesises anomalies when the sanity check (the first validation) starts."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note the model's state before its first validation batch."""
        del trainer
        self.seen.append(pl_module.synthesis is not None)


def _fake_trainer(labels: list[int], any_rank_normal_only: bool | None = None) -> SimpleNamespace:
    """A trainer whose training split has ``labels``; its strategy answers as if other ranks took part.

    ``any_rank_normal_only=None`` is one process: the reduction returns this rank's own answer.
    """

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        assert all is False  # synthesise if any rank's split is normal-only
        return decision if any_rank_normal_only is None else any_rank_normal_only

    samples = pd.DataFrame({"label_index": labels})
    return SimpleNamespace(
        datamodule=SimpleNamespace(train_data=SimpleNamespace(samples=samples)),
        strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision),
        is_global_zero=True,
    )


def _decide(model: BayesPFL, trainer: SimpleNamespace) -> BayesPFL:
    model._trainer = trainer  # noqa: SLF001 - what Lightning sets before on_fit_start
    model.on_fit_start()
    return model


@pytest.mark.parametrize(("train_split", "synthesised"), [("train", True), ("test", False)])
def test_default_decides_before_the_first_validation(
    train_split: str,
    synthesised: bool,
    synthetic_root: Path,
    tiny_kwargs: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`anomalib train` on MVTecAD-like normal-only data trains by default; a split with anomalies is kept as it is.

    The decision holds from the sanity check on (label-free validation keys on it), is logged once when anomalies
    are synthesised, and the checkpoint's hyper-parameters record it.
    """
    warnings.filterwarnings("ignore")
    datamodule = AuxiliaryTrain(synthetic_root, ["disc"], train_split=train_split, num_workers=0)
    model, watch = BayesPFL(**tiny_kwargs), SynthesisAtSanityCheck()
    engine = Engine(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, callbacks=[watch],
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        engine.fit(model, datamodule=datamodule)
    assert watch.seen == [synthesised]
    assert model.hparams.synthetic_anomalies is synthesised
    checkpoint = torch.load(engine.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert checkpoint["hyper_parameters"]["synthetic_anomalies"] is synthesised
    assert sum("synthesising anomalies" in record.getMessage() for record in caplog.records) == int(synthesised)


def test_default_keeps_real_anomalies_alone(tiny_kwargs: dict) -> None:
    """A training split with anomalies is trained on as it is, and the checkpoint records that choice."""
    model = _decide(BayesPFL(**tiny_kwargs), _fake_trainer([0, 1, 0]))
    assert model.synthesis is None
    assert model.hparams.synthetic_anomalies is False


def test_ranks_agree_when_one_rank_sees_only_normal_images(tiny_kwargs: dict) -> None:
    """DDP: this rank's split holds anomalies but another rank's does not: every rank synthesises."""
    model = _decide(BayesPFL(**tiny_kwargs), _fake_trainer([0, 1], any_rank_normal_only=True))
    assert model.synthesis is not None
    assert model.hparams.synthetic_anomalies is True


@pytest.mark.parametrize(("setting", "labels", "expected"), [(True, [0, 1], True), (False, [0, 1], False)])
def test_explicit_settings_are_kept(setting: bool, labels: list[int], expected: bool, tiny_kwargs: dict) -> None:
    """``True`` synthesises on any data; ``False`` never does."""
    model = _decide(BayesPFL(**tiny_kwargs, synthetic_anomalies=setting), _fake_trainer(labels))
    assert (model.synthesis is not None) is expected


def test_never_on_a_normal_only_split_is_refused_with_the_fix(tiny_kwargs: dict) -> None:
    """``synthetic_anomalies=False`` on normal-only data stops before the first validation, naming the ways out."""
    with pytest.raises(ValueError, match=r"synthetic_anomalies=None.*AuxiliaryTrain"):
        _decide(BayesPFL(**tiny_kwargs, synthetic_anomalies=False), _fake_trainer([0, 0]))


def test_default_adds_no_anomalies_outside_a_fit(tiny_kwargs: dict) -> None:
    """Before a fit decides, a fresh default model validates and predicts on its images as they are."""
    assert BayesPFL(**tiny_kwargs).synthesis is None


def test_a_second_fit_decides_again(tiny_kwargs: dict) -> None:
    """The decision follows each fit's data, not an earlier fit's (the checkpoint records the last one)."""
    model = _decide(BayesPFL(**tiny_kwargs), _fake_trainer([0, 0]))
    assert model.synthesis is not None
    assert _decide(model, _fake_trainer([0, 1])).synthesis is None
    assert _decide(model, _fake_trainer([0, 0])).synthesis is not None
