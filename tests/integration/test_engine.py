"""Engine.fit then Engine.test on tiny generated data; checkpoints, zero-shot mode and seeds."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.demo import demo_datamodule

pytestmark = pytest.mark.integration


def _engine(root_dir: Path, epochs: int = 3) -> Engine:
    warnings.filterwarnings("ignore")
    return Engine(
        max_epochs=epochs,
        default_root_dir=root_dir,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        logger=False,
    )


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
    engine = _engine(root_dir)
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
    results = _engine(tmp_path).test(model, datamodule=datamodule)[0]
    assert model.model.class_name == "ring"
    assert 0.0 <= results["image_AUROC"] <= 1.0


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
        _engine(tmp_path / str(run), epochs=1).fit(model, datamodule=demo_datamodule(synthetic_root))
        scores.append(_scores(model, images))
    assert torch.equal(scores[0], scores[1])
