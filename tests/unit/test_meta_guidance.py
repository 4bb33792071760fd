"""Tests of meta-guided prompt tuning: the projection, the guide loss and its effect on training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl import AuxiliaryTrain, BayesPFL
from anomalib_bayes_pfl.checkpoints import head_state_dict
from anomalib_bayes_pfl.meta_guidance import MetaGuidance, project_conflicting

STEPS = 12


def _vectors(seed: int, sizes: tuple[int, ...] = (5, 3, 7)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=generator) for size in sizes]


def _dot(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return float(sum((a * b).sum() for a, b in zip(first, second, strict=True)))


class TestProjection:
    """ProGrad-style removal of the conflicting component, over all parameters as one vector."""

    @staticmethod
    @pytest.mark.parametrize("seed", range(20))
    def test_full_strength_never_opposes_the_guide(seed: int) -> None:
        """lambda = 1: the applied gradient is orthogonal to the guide when they conflicted, unchanged otherwise."""
        task, guide = _vectors(seed), _vectors(seed + 100)
        applied, dot = project_conflicting(task, guide, 1.0)
        assert dot.item() == pytest.approx(_dot(task, guide), rel=1e-5)
        if dot < 0:
            assert abs(_dot(applied, guide)) < 1e-5
        else:
            assert all(torch.equal(a, t) for a, t in zip(applied, task, strict=True))

    @staticmethod
    def test_strength_scales_the_removed_component() -> None:
        """lambda = 0 leaves the gradient exactly as it was; lambda = 0.5 removes half the conflict."""
        task, guide = [torch.tensor([1.0, -2.0])], [torch.tensor([0.0, 1.0])]
        assert torch.equal(project_conflicting(task, guide, 0.0)[0][0], task[0])
        assert project_conflicting(task, guide, 0.5)[0][0].tolist() == [1.0, -1.0]

    @staticmethod
    def test_negative_strength_is_rejected() -> None:
        """A negative lambda would push against the guide; it is refused."""
        with pytest.raises(ValueError, match="meta_strength"):
            MetaGuidance(-1.0)


def test_guide_loss_is_zero_when_prompts_equal_the_meta_prompts() -> None:
    """KL(p_meta || p_prompts) vanishes when the learned embeddings are the meta ones, and is positive otherwise."""
    torch.manual_seed(0)
    meta = torch.nn.functional.normalize(torch.randn(2, 2, 16), dim=-1)
    image = torch.randn(2, 16)
    same = meta.unsqueeze(2).expand(-1, -1, 3, -1)
    assert MetaGuidance.loss(image, same, meta).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(2, 2, 3, 16), dim=-1)
    assert MetaGuidance.loss(image, other, meta).item() > 0


class _Record(Callback):
    """Per step: the cosine between the gradient the optimiser is about to apply and the meta gradient, and the
    logged conflict flag."""

    def __init__(self, model: BayesPFL) -> None:
        self.values: list[dict[str, float]] = []
        self.guide: list[torch.Tensor] = []
        compute = model.meta_guidance.guide_gradients

        def keep_guide(*args: object) -> list[torch.Tensor]:
            self.guide = compute(*args)
            return self.guide

        model.meta_guidance.guide_gradients = keep_guide

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: BayesPFL, optimizer: object) -> None:
        del trainer, optimizer
        applied = torch.cat([p.grad.flatten() for p in pl_module.model.prompt_parameters()])
        guide = torch.cat([g.flatten() for g in self.guide])
        self.values.append({"cosine": float(torch.nn.functional.cosine_similarity(applied, guide, dim=0))})

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        del args
        self.values[-1]["conflict"] = float(trainer.callback_metrics["train_meta_conflict"])


def _train(model: LightningModule, root: Path, callbacks: list[Callback] | None = None) -> dict[str, torch.Tensor]:
    """Train ``STEPS`` stage-1 steps on generated data; return the head's tensors."""
    datamodule = AuxiliaryTrain(root, ["disc", "stripes"], num_workers=0, train_batch_size=4)
    trainer = Trainer(
        max_steps=STEPS, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return {key: value for key, value in head_state_dict(model.model).items() if isinstance(value, torch.Tensor)}


def test_zero_strength_equals_plain_training(synthetic_root: Path, tiny_kwargs: dict) -> None:
    """lambda = 0 trains to bitwise the same weights as training without meta guidance."""
    seed_everything(0)
    plain = _train(BayesPFL(**tiny_kwargs), synthetic_root)
    seed_everything(0)
    guided = _train(BayesPFL(**tiny_kwargs, meta_guidance=True, meta_strength=0.0), synthetic_root)
    assert plain.keys() == guided.keys()
    assert all(torch.equal(plain[key], guided[key]) for key in plain)


def test_full_strength_update_never_opposes_the_meta_gradient(synthetic_root: Path, tiny_kwargs: dict) -> None:
    """lambda = 1: at every step the gradient handed to the optimiser has no negative inner product with the meta
    gradient (cosine >= 0 up to rounding), and conflicts did occur, so the projection was exercised."""
    seed_everything(0)
    model = BayesPFL(**tiny_kwargs, meta_guidance=True)
    record = _Record(model)
    weights = _train(model, synthetic_root, [record])
    seed_everything(0)
    plain = _train(BayesPFL(**tiny_kwargs), synthetic_root)
    assert len(record.values) == STEPS
    assert min(step["cosine"] for step in record.values) >= -1e-5
    assert any(step["conflict"] == 1.0 for step in record.values)
    assert any(not torch.equal(weights[key], plain[key]) for key in plain)
