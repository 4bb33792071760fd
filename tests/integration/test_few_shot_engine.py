"""Few-shot mode through anomalib: references from the train split or a folder, checkpoints and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.data.utils import read_image
from engines import cpu_engine
from torch.utils.data import DataLoader

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.images import read_rgb
from anomalib_bayes_pfl.torch_model import BayesPFLModel

pytestmark = pytest.mark.integration

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO runs bf16 by default on CPUs that support it; compare in f32."""


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, tiny_kwargs: dict) -> Path:
    """Prompt weights of the tiny model."""
    torch.manual_seed(0)
    return save_prompt_weights(BayesPFLModel(**tiny_kwargs), tmp_path_factory.mktemp("head") / "head.pt")


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="ring", eval_batch_size=32, num_workers=0)


def _expected_memory(model: BayesPFL, paths: list[Path]) -> torch.Tensor:
    """The memory built by hand from ``paths``: pre-processed, encoded, normalised per patch, in float16."""
    images = model.pre_processor.transform(torch.stack([read_rgb(path) for path in paths]))
    patches = model.model.backbone(images)[1]
    return torch.stack([torch.nn.functional.normalize(p.flatten(0, 1), dim=-1) for p in patches]).half()


@pytest.fixture(scope="module")
def tested(synthetic_root: Path, tiny_kwargs: dict, head: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A k = 2 model tested on the generated ``ring`` category, its metrics and its saved checkpoint."""
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=2, few_shot_weight=0.5)
    root = tmp_path_factory.mktemp("few_shot")
    engine = cpu_engine(root)
    metrics = engine.test(model, datamodule=_datamodule(synthetic_root))[0]
    engine.trainer.save_checkpoint(root / "few_shot.ckpt")
    return model.eval(), metrics, root / "few_shot.ckpt"


def test_references_are_the_first_normal_train_images(synthetic_root: Path, tested: tuple) -> None:
    """The Engine fills the memory with the first k normal images of the train split, in dataset order."""
    model, metrics, _ = tested
    assert model.learning_type.value == "few_shot"
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(metrics)
    train = sorted((synthetic_root / "ring" / "train" / "good").iterdir())[:2]
    with torch.no_grad():
        torch.testing.assert_close(model.model.few_shot.memory, _expected_memory(model, train), atol=1e-3, rtol=0)


def test_references_from_a_folder(synthetic_root: Path, tiny_kwargs: dict, head: Path, tmp_path: Path) -> None:
    """few_shot_source (a folder) wins over the train split: its first k files in sorted order."""
    folder = synthetic_root / "disc" / "train" / "good"
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=1, few_shot_source=str(folder))
    cpu_engine(tmp_path).test(model, datamodule=_datamodule(synthetic_root))
    with torch.no_grad():
        expected = _expected_memory(model, sorted(folder.iterdir())[:1])
    torch.testing.assert_close(model.model.few_shot.memory, expected, atol=1e-3, rtol=0)


def test_checkpoint_holds_the_memory(tested: tuple) -> None:
    """A reloaded checkpoint holds the memory and scores as the model that saved it, without any datamodule."""
    model, _, checkpoint = tested
    loaded = BayesPFL.load_from_checkpoint(checkpoint).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.model.few_shot.memory, model.model.few_shot.memory)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images).anomaly_map, model.model(images).anomaly_map)


@pytest.fixture(scope="module")
def exports(tested: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One ONNX export of the tested model and its OpenVINO IR (what ``to_openvino`` converts: the same graph)."""
    import openvino as ov

    root = tmp_path_factory.mktemp("export")
    onnx = tested[0].to_onnx(root)
    ov.save_model(ov.convert_model(onnx), root / "model.xml", compress_to_fp16=False)
    return {"onnx": onnx, "openvino": root / "model.xml"}


@pytest.mark.parametrize("export_type", ["openvino", "onnx"])
def test_export_matches_eager(
    synthetic_root: Path,
    tested: tuple,
    exports: dict[str, Path],
    export_type: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exported memory scores an image file as eager does (pre-processing, model, post-processing), within 1e-3."""
    from anomalib.deploy import OpenVINOInferencer

    model = tested[0]
    monkeypatch.chdir(tmp_path)  # the inferencer writes ./openvino_cache
    path = synthetic_root / "ring" / "test" / "spot" / "000.png"
    prediction = OpenVINOInferencer(exports[export_type], device="CPU", config=F32).predict(path)
    with torch.no_grad():
        image = model.pre_processor.transform(read_image(path, as_tensor=True).unsqueeze(0))
        expected = model.post_processor(model.model(image))
    assert abs(float(np.asarray(prediction.pred_score).flatten()[0]) - float(expected.pred_score)) <= 1e-3
    assert np.abs(np.asarray(prediction.anomaly_map).squeeze() - expected.anomaly_map.squeeze().numpy()).max() <= 1e-3


def _predict_loader(folder: Path) -> DataLoader:
    dataset = PredictDataset(folder)
    return DataLoader(dataset, batch_size=4, collate_fn=dataset.collate_fn)


def test_predict_from_dataloaders_only(synthetic_root: Path, tiny_kwargs: dict, head: Path, tmp_path: Path) -> None:
    """``Engine.predict(model, dataloaders=...)`` without datamodule: references from few_shot_source, or an error."""
    test_images = synthetic_root / "ring" / "test" / "spot"
    references = synthetic_root / "ring" / "train" / "good"
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=1, few_shot_source=str(references))
    predictions = cpu_engine(tmp_path / "a").predict(model, dataloaders=_predict_loader(test_images))
    assert sum(len(batch.pred_score) for batch in predictions) == len(list(test_images.iterdir()))
    assert model.model.few_shot.memory.numel() > 0

    without = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=1)
    with pytest.raises(RuntimeError, match="few_shot_source"):
        cpu_engine(tmp_path / "b").predict(without, dataloaders=_predict_loader(test_images))
