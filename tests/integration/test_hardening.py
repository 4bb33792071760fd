"""Unattended use: crafted checkpoints do not run code, bad files in a predicted folder are skipped and reported,
and scores are deterministic across runs and batch sizes."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from engines import cpu_engine
from lightning.pytorch import seed_everything
from PIL import Image

from anomalib_bayes_pfl import BayesPFL, load_prompt_weights
from anomalib_bayes_pfl.data import SafePredictFolder
from anomalib_bayes_pfl.data.predict import REPORT_NAME
from anomalib_bayes_pfl.demo import demo_datamodule

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_kwargs(tiny_kwargs: dict, tiny_clip_weights: str) -> dict:
    return tiny_kwargs | {"pretrained": tiny_clip_weights}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, model_kwargs: dict) -> Path:
    """A real Lightning checkpoint of one short epoch (optimiser, scheduler, stage tracker and all)."""
    seed_everything(0)
    root = tmp_path_factory.mktemp("hardening")
    engine = cpu_engine(root, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    engine.fit(BayesPFL(**model_kwargs), datamodule=demo_datamodule(synthetic_root))
    return next(root.rglob("last.ckpt"))


class Payload:
    """Pickles as a call that creates ``marker``: what a malicious checkpoint would smuggle in."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def crafted(checkpoint: Path, tmp_path: Path) -> dict[str, Path]:
    """A Lightning checkpoint and a head file that each carry the payload, and the marker it would create."""
    marker = tmp_path / "code-ran"
    lightning = torch.load(checkpoint, weights_only=True)
    lightning["hyper_parameters"]["class_name"] = Payload(marker)
    torch.save(lightning, tmp_path / "crafted.ckpt")
    head = {key.removeprefix("model."): value for key, value in lightning["state_dict"].items()}
    head["prompt_flow.eval_noise"] = Payload(marker)
    torch.save(head, tmp_path / "crafted.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "crafted.pth", weights_only=True)
    torch.load(tmp_path / "crafted.pth", weights_only=False)  # noqa: S614 - proves the payload is live
    assert marker.exists()
    marker.unlink()
    return {"ckpt": tmp_path / "crafted.ckpt", "pth": tmp_path / "crafted.pth", "marker": marker}


class TestCheckpointSafety:
    """Every loading path reads with weights_only=True: the payload never runs and the error says why."""

    @staticmethod
    def test_own_checkpoint_needs_no_allowlist(checkpoint: Path) -> None:
        """A full training checkpoint is tensors and plain data: plain weights_only loading reads it."""
        content = torch.load(checkpoint, weights_only=True)
        assert {"state_dict", "optimizer_states", "bayes_pfl_stage_tracker", "hyper_parameters"} <= set(content)

    @staticmethod
    @pytest.mark.parametrize("kind", ["ckpt", "pth"])
    def test_load_prompt_weights(crafted: dict[str, Path], model_kwargs: dict, kind: str) -> None:
        """load_prompt_weights and BayesPFL(prompt_weights=...) refuse the file, naming it."""
        model = BayesPFL(**model_kwargs)
        with pytest.raises(ValueError, match=r"Could not read .*crafted.* as safe weights") as info:
            load_prompt_weights(model.model, crafted[kind])
        assert "refers to exec, which is not weights; refused without running it" in str(info.value)
        with pytest.raises(ValueError, match="as safe weights"):
            BayesPFL(**model_kwargs, prompt_weights=str(crafted[kind]))
        assert not crafted["marker"].exists()

    @staticmethod
    def test_load_from_checkpoint(crafted: dict[str, Path]) -> None:
        """anomalib's load_from_checkpoint (used by export) refuses the crafted pickle."""
        with pytest.raises(pickle.UnpicklingError, match="refused without running it"):
            BayesPFL.load_from_checkpoint(crafted["ckpt"])
        assert not crafted["marker"].exists()

    @staticmethod
    def test_engine_ckpt_path(crafted: dict[str, Path], model_kwargs: dict, synthetic_root: Path) -> None:
        """The trainer's ckpt_path restore (anomalib test/predict/train --ckpt_path) refuses it too."""
        folder = synthetic_root / "ring" / "test" / "good"
        with pytest.raises(pickle.UnpicklingError, match="refused without running it"):
            cpu_engine(crafted["ckpt"].parent).predict(
                BayesPFL(**model_kwargs), datamodule=SafePredictFolder(folder), ckpt_path=crafted["ckpt"]
            )
        assert not crafted["marker"].exists()


@pytest.fixture(scope="module")
def production_folder(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """Good images in several formats, sizes and modes, plus the bad files an unattended run meets."""
    folder = tmp_path_factory.mktemp("production")
    rng = np.random.default_rng(0)
    Image.open(next((synthetic_root / "ring" / "test" / "good").glob("*.png"))).save(folder / "part.png")
    Image.fromarray(rng.integers(0, 65535, (48, 80), dtype=np.uint16)).save(folder / "depth16.PNG")
    Image.fromarray(rng.integers(0, 255, (1, 1, 4), dtype=np.uint8)).save(folder / "pixel.webp")
    Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8)).save(folder / "gray.tif")
    (folder / "nested").mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "nested" / "photo.jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    whole = (folder / "part.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def _predict(model: BayesPFL, folder: Path, root: Path, batch_size: int, ckpt: Path) -> dict[str, torch.Tensor]:
    datamodule = SafePredictFolder(folder, eval_batch_size=batch_size)
    predictions = cpu_engine(root).predict(model, datamodule=datamodule, ckpt_path=ckpt)
    return {
        Path(path).name: torch.cat([score.flatten(), anomaly_map.flatten()])
        for batch in predictions
        for path, score, anomaly_map in zip(batch.image_path, batch.pred_score, batch.anomaly_map, strict=True)
    }


class TestPredictFolder:
    """`--data SafePredictFolder`: the bad files are reported and skipped, the others predicted and written."""

    @staticmethod
    def test_bad_files_skipped_and_reported(
        production_folder: Path, checkpoint: Path, model_kwargs: dict, tmp_path: Path
    ) -> None:
        """Five good images are scored and visualised; the three bad ones are listed with their reasons."""
        scores = _predict(BayesPFL(**model_kwargs), production_folder, tmp_path, 4, checkpoint)
        assert sorted(scores) == ["depth16.PNG", "gray.tif", "part.png", "photo.jpeg", "pixel.webp"]
        assert len(list(tmp_path.rglob("images/**/*.*"))) == 5
        with next(tmp_path.rglob(REPORT_NAME)).open() as file:
            report = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(file)}
        assert set(report) == {"empty.png", "notes.jpg", "cut.png"}
        assert "truncated" in report["cut.png"]

    @staticmethod
    def test_all_bad_is_an_error(tmp_path: Path) -> None:
        """A folder with nothing usable fails at set-up, naming the files."""
        (tmp_path / "a.png").write_bytes(b"")
        with pytest.raises(ValueError, match=r"None of the 1 image files .*a\.png: not a readable image"):
            SafePredictFolder(tmp_path).setup("predict")

    @staticmethod
    def test_missing_or_empty_folder(tmp_path: Path) -> None:
        """A path that does not exist, or a folder without image files, is explained."""
        with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
            SafePredictFolder(tmp_path / "absent").setup("predict")
        with pytest.raises(ValueError, match="Found no image files"):
            SafePredictFolder(tmp_path).setup("predict")


def test_scores_identical_across_runs_and_batch_sizes(
    production_folder: Path, checkpoint: Path, model_kwargs: dict, tmp_path: Path
) -> None:
    """Same weights: bitwise identical scores and maps on a repeated run; batch 1 vs 4 within 1e-6."""
    runs = [
        _predict(BayesPFL(**model_kwargs), production_folder, tmp_path / str(index), batch_size, checkpoint)
        for index, batch_size in enumerate((4, 4, 1))
    ]
    for name, values in runs[0].items():
        assert torch.equal(values, runs[1][name]), name
        assert torch.allclose(values, runs[2][name], rtol=0, atol=1e-6), name
