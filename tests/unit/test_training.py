"""The training module: warm-up/cosine factor, stage switch, pair choice, step generators, epoch sampler."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_bayes_pfl.checkpoints import head_state_dict
from anomalib_bayes_pfl.resume import EpochShuffleSampler
from anomalib_bayes_pfl.torch_model import BayesPFLModel
from anomalib_bayes_pfl.training import (
    STOP,
    SWITCHED,
    StageSwitch,
    build_optimizers,
    check_schedule,
    choose_pair,
    step_generator,
    warmup_cosine,
)


def _model() -> BayesPFLModel:
    torch.manual_seed(0)
    return BayesPFLModel("bayes-pfl-tiny", None, 64, (2, 4), num_samples=2, gaussian_sigma=1.0)


class TestWarmupCosine:
    @staticmethod
    @pytest.mark.parametrize(("total", "ratio"), [(100, 0.1), (37, 0.25), (10, 0.0)])
    def test_linear_warm_up_then_cosine_to_zero(total: int, ratio: float) -> None:
        factor = warmup_cosine(total, ratio)
        warmup = int(total * ratio)
        for step in range(warmup):
            assert factor(step) == pytest.approx(step / warmup)
        for step in range(warmup, total + 5):
            progress = min((step - warmup) / (total - warmup), 1.0)
            assert factor(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)), abs=1e-12)
        assert factor(warmup) == pytest.approx(1.0)
        assert factor(total) == pytest.approx(0.0, abs=1e-12)

    @staticmethod
    @pytest.mark.parametrize(
        ("arguments", "match"),
        [((1.0, 4, None), "warmup_ratio"), ((0.1, 0, None), "stage_patience"), ((0.1, 4, 0), "stage1_max_epochs")],
    )
    def test_bad_schedules_are_refused(arguments: tuple, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            check_schedule(*arguments)


class TestStageSwitch:
    @staticmethod
    def test_patience_counts_epochs_without_improvement_and_restores_the_best_head() -> None:
        model = _model()
        switch = StageSwitch(patience=2, max_epochs=None)
        prompt = model.prompt_bank.prompt_context
        for epoch, value in enumerate([0.3, 0.5]):  # epoch 1 is the best
            with torch.no_grad():
                prompt.fill_(float(epoch))
            assert not switch.end_of_epoch(model, epoch, value)
        best = {key: value.clone() for key, value in head_state_dict(model).items() if torch.is_tensor(value)}
        with torch.no_grad():
            prompt.fill_(7.0)
        assert not switch.end_of_epoch(model, 2, 0.4)  # one stale epoch
        assert model.stage == 1 and switch.stale == 1
        assert not switch.end_of_epoch(model, 3, None)  # no validation: patience does not move
        assert switch.end_of_epoch(model, 4, 0.45)  # second stale epoch: switch
        assert model.stage == 2
        restored = head_state_dict(model)
        assert all(torch.equal(restored[key], value) for key, value in best.items())
        assert torch.all(prompt == 1.0)
        assert switch.best_head is None  # not carried into stage-2 checkpoints
        assert not switch.end_of_epoch(model, 5, 0.9)  # stage 2: the rule is done
        assert model.stage == 2

    @staticmethod
    def test_cap_switches_even_while_improving() -> None:
        model = _model()
        switch = StageSwitch(patience=4, max_epochs=2)
        assert not switch.end_of_epoch(model, 0, 0.1)
        assert switch.end_of_epoch(model, 1, 0.2)
        assert model.stage == 2

    @staticmethod
    def test_a_tie_is_a_gain_that_keeps_the_later_head() -> None:
        """The reference's ``>=``: an equal pixel AP resets the patience and the later weights are the best."""
        model = _model()
        switch = StageSwitch(patience=1, max_epochs=None)
        prompt = model.prompt_bank.prompt_context
        for epoch in range(2):
            with torch.no_grad():
                prompt.fill_(float(epoch))
            assert switch.end_of_epoch(model, epoch, 0.5) is None
        assert switch.stale == 0
        assert switch.end_of_epoch(model, 2, 0.4) == SWITCHED
        assert torch.all(prompt == 1.0)

    @staticmethod
    def test_stage_two_stops_after_patience_epochs_without_a_better_image_ap() -> None:
        """Stage 2 watches the image AP from scratch (ties count as gains) and stops as the reference does."""
        model = _model()
        switch = StageSwitch(patience=2, max_epochs=1)
        assert switch.end_of_epoch(model, 0, 0.9, 0.1) == SWITCHED
        assert (switch.best, switch.stale) == (None, 0)
        verdicts = [switch.end_of_epoch(model, epoch, 0.0, ap) for epoch, ap in enumerate([0.6, 0.6, 0.5, None], 1)]
        assert verdicts == [None, None, None, None]  # gain, tie (a gain), stale, no validation
        assert switch.end_of_epoch(model, 5, 0.0, 0.59) == STOP
        assert model.stage == 2

    @staticmethod
    def test_state_round_trip() -> None:
        model = _model()
        switch = StageSwitch(patience=3, max_epochs=None)
        switch.end_of_epoch(model, 0, 0.5)
        switch.end_of_epoch(model, 1, 0.4)
        restored = StageSwitch(patience=3, max_epochs=None)
        restored.load_state_dict(switch.state_dict())
        assert (restored.best, restored.stale) == (0.5, 1)
        assert restored.best_head.keys() == switch.best_head.keys()


class TestDraws:
    @staticmethod
    def test_pair_choice_covers_the_bank_uniformly_and_repeats() -> None:
        pairs = [choose_pair(3, seed=0, step=step) for step in range(600)]
        counts = torch.bincount(torch.tensor(pairs), minlength=3)
        assert counts.min() > 150  # uniform: 200 each expected
        assert pairs == [choose_pair(3, seed=0, step=step) for step in range(600)]
        assert pairs != [choose_pair(3, seed=1, step=step) for step in range(600)]

    @staticmethod
    def test_step_generators_depend_on_seed_and_step_only() -> None:
        draw = [torch.rand(4, generator=step_generator(0, step)) for step in (5, 5, 6)]
        torch.manual_seed(123)  # the global generator plays no part
        again = torch.rand(4, generator=step_generator(0, 5))
        assert torch.equal(draw[0], draw[1]) and torch.equal(draw[0], again)
        assert not torch.equal(draw[0], draw[2])
        assert not torch.equal(draw[0], torch.rand(4, generator=step_generator(1, 5)))

    @staticmethod
    def test_epoch_sampler_is_a_new_permutation_per_epoch() -> None:
        sampler = EpochShuffleSampler(50, seed=3)
        orders = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
            assert sorted(orders[-1]) == list(range(50)) and len(sampler) == 50
        assert orders[0] != orders[1] != orders[2]
        sampler.set_epoch(1)
        assert list(sampler) == orders[1]
        assert list(EpochShuffleSampler(50, seed=4)) != orders[0]


def test_optimizers_split_the_head_by_stage() -> None:
    """Stage 1 holds the four reference groups at their rates; stage 2 the image branch alone."""
    model = _model()
    stage1, stage2 = build_optimizers(
        model, lr=1e-4, lr_prompt=1e-3, lr_flow=2e-3, lr_temperature=1e-2, betas=(0.5, 0.9)
    )
    groups = model.parameter_groups()
    assert [group["lr"] for group in stage1.param_groups] == [1e-3, 1e-2, 2e-3, 1e-4]
    assert [len(group["params"]) for group in stage1.param_groups] == [
        len(groups[name]) for name in ("prompt", "temperature", "flow", "other")
    ]
    stage2_ids = {id(p) for group in stage2.param_groups for p in group["params"]}
    assert stage2_ids == {id(p) for p in model.image_branch.parameters()}
    assert stage2.param_groups[0]["betas"] == (0.5, 0.9)
    prompt_ids = {id(p) for p in model.prompt_parameters()}
    assert not prompt_ids & stage2_ids
