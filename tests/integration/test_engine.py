"""Engine.fit then Engine.test on tiny generated data; checkpoints, zero-shot mode and seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from engines import cpu_engine
from lightning.pytorch import Callback, Trainer, seed_everything
from torchmetrics.classification import BinaryAUROC

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.checkpoints import head_state_dict
from anomalib_bayes_pfl.demo import demo_datamodule
from anomalib_bayes_pfl.training import choose_pair

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_kwargs(tiny_kwargs: dict, tiny_clip_weights: str) -> dict:
    """Tiny configuration on one saved random CLIP, so separately built models share the backbone."""
    return tiny_kwargs | {"pretrained": tiny_clip_weights}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, shared_kwargs: dict) -> dict:
    """Train the tiny model for three epochs (stage 2 in the last one) and test it."""
    seed_everything(0)
    root_dir = tmp_path_factory.mktemp("engine")
    model = BayesPFL(**shared_kwargs, stage1_max_epochs=2)
    engine = cpu_engine(root_dir, max_epochs=3)
    engine.fit(model, datamodule=demo_datamodule(synthetic_root))
    best = Path(engine.trainer.checkpoint_callback.best_model_path)
    results = engine.test(model, datamodule=demo_datamodule(synthetic_root))
    return {"model": model, "best": best, "results": results[0], "root_dir": root_dir}


def _scores(model: BayesPFL, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.model(images).pred_score


def test_fit_trains_both_stages_and_tests(trained: dict) -> None:
    """Both stages ran; the test metrics of the issue are reported; a best checkpoint exists."""
    assert trained["model"].model.stage == 2
    assert {"image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_F1Max", "pixel_AUPRO"} <= set(trained["results"])
    best = trained["best"]
    assert best.is_file()
    assert (best.parent / "last.ckpt").is_file()


def test_checkpoint_reload_gives_same_scores(trained: dict) -> None:
    """The last checkpoint reloads (weights_only) into a model that scores exactly like the trained one."""
    last = trained["best"].parent / "last.ckpt"
    reloaded = BayesPFL.load_from_checkpoint(last, weights_only=True)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert reloaded.model.stage == trained["model"].model.stage
    assert torch.equal(_scores(reloaded, images), _scores(trained["model"], images))


def test_zero_shot_mode_from_saved_weights(
    trained: dict, synthetic_root: Path, shared_kwargs: dict, tmp_path: Path
) -> None:
    """Saved prompt weights drive a ZERO_SHOT model tested with the stock MVTecAD datamodule."""
    weights = save_prompt_weights(trained["model"].model, tmp_path / "head.pt")
    model = BayesPFL(**shared_kwargs, prompt_weights=str(weights))
    assert model.learning_type.value == "zero_shot"
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    model.model.set_class_name(trained["model"].model.class_name)
    assert torch.equal(_scores(model, images), _scores(trained["model"], images))
    datamodule = MVTecAD(root=synthetic_root, category="ring", eval_batch_size=16, num_workers=0)
    results = cpu_engine(tmp_path, max_epochs=3).test(model, datamodule=datamodule)[0]
    assert model.model.class_name == "ring"
    scores, labels = [], []
    for batch in datamodule.test_dataloader():  # the same images, scored by the model directly
        scores.append(_scores(model, model.pre_processor.transform(batch.image)))
        labels.append(batch.gt_label)
    expected = BinaryAUROC()(torch.cat(scores), torch.cat(labels).int()).item()
    assert results["image_AUROC"] == pytest.approx(expected, abs=1e-6)


def test_zero_shot_rejects_mismatched_weights(trained: dict, tiny_kwargs: dict, tmp_path: Path) -> None:
    """Weights of another configuration are refused with the sizes to check."""
    weights = save_prompt_weights(trained["model"].model, tmp_path / "head.pt")
    with pytest.raises(ValueError, match="num_prompts"):
        BayesPFL(**(tiny_kwargs | {"num_prompts": 2}), prompt_weights=str(weights))


def test_same_seed_same_scores(synthetic_root: Path, shared_kwargs: dict, tmp_path: Path) -> None:
    """Two runs with the same seed end with identical scores."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    scores = []
    for run in range(2):
        seed_everything(7)
        model = BayesPFL(**shared_kwargs, stage1_max_epochs=1)
        cpu_engine(tmp_path / str(run), max_epochs=1).fit(model, datamodule=demo_datamodule(synthetic_root))
        scores.append(_scores(model, images))
    assert torch.equal(scores[0], scores[1])


class HeadAtEpochStart(Callback):
    """Keeps a copy of the model's head at the start of every epoch."""

    def __init__(self) -> None:
        self.heads: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: BayesPFL) -> None:
        del trainer
        self.heads.append({k: v.clone() for k, v in head_state_dict(pl_module.model).items() if torch.is_tensor(v)})


def test_training_step_wiring(synthetic_root: Path, shared_kwargs: dict, tmp_path: Path) -> None:
    """The real training step: its pair per step follows `choose_pair`; stage 2 changes the image branch only."""
    seed_everything(0)
    model = BayesPFL(**shared_kwargs, stage1_max_epochs=1)
    calls, original = [], model.loss.forward

    def recording_loss(outputs: dict, labels: torch.Tensor, masks: torch.Tensor, pair: int, stage: int, grid: tuple):
        calls.append((pair, stage))
        return original(outputs, labels, masks, pair, stage, grid)

    model.loss.forward = recording_loss
    heads = HeadAtEpochStart()
    engine = Engine(max_epochs=2, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[heads])
    engine.fit(model, datamodule=demo_datamodule(synthetic_root))
    pairs, stages = zip(*calls, strict=True)
    assert list(pairs) == [choose_pair(3, seed=0, step=step) for step in range(len(calls))]
    assert len(set(pairs)) > 1 and set(stages) == {1, 2}
    switched, final = heads.heads[1], head_state_dict(model.model)
    changed = {key for key, value in switched.items() if not torch.equal(value, final[key])}
    assert changed and all(key.startswith("image_branch.") for key in changed), sorted(changed)
