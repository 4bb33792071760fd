"""`SafePredictFolder` over a folder that changes under it: late failures, odd names, pipes, repeated runs.

Every case runs end to end through anomalib's ``Engine.predict`` with the tiny random-weight model: the bad file is
skipped and reported (log warning and ``skipped_images.csv``), and every other image is predicted and visualised.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from anomalib.engine import Engine
from PIL import Image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data import SafePredictFolder
from anomalib_bayes_pfl.data.predict import REPORT_NAME

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_kwargs(tiny_kwargs: dict, tiny_clip_weights: str) -> dict:
    return tiny_kwargs | {"pretrained": tiny_clip_weights}


def _images(folder: Path, *names: str) -> Path:
    """Small random RGB PNGs named ``names`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for name in names:
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _predict(model_kwargs: dict, datamodule: SafePredictFolder, root: Path) -> list[str]:
    """Predict with a fresh tiny model; the names of the predicted images, in order (each batch checked whole)."""
    warnings.filterwarnings("ignore")
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    predictions = engine.predict(BayesPFL(**model_kwargs), datamodule=datamodule)
    for batch in predictions:
        assert len(batch.image_path) == batch.image.shape[0] == batch.pred_score.numel() == batch.anomaly_map.shape[0]
    return [Path(path).name for batch in predictions for path in batch.image_path]


def _report(root: Path) -> dict[str, str] | None:
    """The run's skipped_images.csv as {file name: reason} (the file must be valid UTF-8), or None if absent."""
    reports = list(root.rglob(REPORT_NAME))
    if not reports:
        return None
    (report,) = reports
    with report.open(encoding="utf-8", newline="") as file:
        return {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(file)}


def _visualised(root: Path) -> list[str]:
    return sorted(path.name for path in root.rglob("images/**/*.*"))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_files_gone_after_setup_are_skipped(
    model_kwargs: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, num_workers: int
) -> None:
    """Removed or emptied between the scan and loading: skipped and reported, empty batches dropped, rest predicted.

    Batches of two: [a, b] loses b, [c, d] loses both (an empty batch), [e] is whole.
    """
    folder = _images(tmp_path / "in", "a.png", "b.png", "c.png", "d.png", "e.png")
    datamodule = SafePredictFolder(folder, eval_batch_size=2, num_workers=num_workers)
    datamodule.setup()
    (folder / "b.png").unlink()
    (folder / "c.png").write_bytes(b"")
    (folder / "d.png").unlink()
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        predicted = _predict(model_kwargs, datamodule, tmp_path / "out")
    assert predicted == ["a.png", "e.png"]
    assert _visualised(tmp_path / "out") == ["a.png", "e.png"]
    report = _report(tmp_path / "out")
    assert report is not None
    assert set(report) == {"b.png", "c.png", "d.png"}
    assert "No such file" in report["b.png"]
    assert "not a readable image" in report["c.png"]
    assert [item.path.name for item in datamodule.skipped] == ["b.png", "c.png", "d.png"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{folder / 'c.png'}: not a readable image" in logged
    assert str(folder / "d.png") in logged


def test_name_that_is_not_utf8_is_reported(
    model_kwargs: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt file named with byte 0xFF is listed as ``bad\\xff.png`` in a valid UTF-8 report and the log."""
    folder = _images(tmp_path / "in", "a.png", "b.png")
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as file:
        file.write(b"not an image")
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        predicted = _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out")
    assert predicted == ["a.png", "b.png"]
    assert _report(tmp_path / "out") == {
        "bad\\xff.png": "not a readable image (empty, corrupt, or another kind of file)"
    }
    logged = "\n".join(record.getMessage() for record in caplog.records)
    logged.encode("utf-8")
    assert f"{folder}/bad\\xff.png: not a readable image" in logged


@pytest.mark.timeout(60)
def test_named_pipe_is_skipped_without_opening(
    model_kwargs: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO named like an image is never opened (that would wait for a writer forever): it is reported."""
    folder = _images(tmp_path / "in", "a.png")
    os.mkfifo(folder / "stream.png")
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"):
        predicted = _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out")
    assert predicted == ["a.png"]
    assert _report(tmp_path / "out") == {"stream.png": "not a regular file (named pipe); it was not opened"}
    assert f"{folder / 'stream.png'}: not a regular file" in caplog.text


def test_stale_report_of_an_earlier_run_is_removed(model_kwargs: dict, tmp_path: Path) -> None:
    """A run with a bad file, then a clean run into the same results folder: no report is left from the first."""
    folder = _images(tmp_path / "in", "a.png")
    (folder / "bad.png").write_bytes(b"")
    assert _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out") == ["a.png"]
    assert set(_report(tmp_path / "out") or {}) == {"bad.png"}
    (folder / "bad.png").unlink()
    assert _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out") == ["a.png"]
    assert _report(tmp_path / "out") is None


def test_each_run_reports_only_its_own_skips(model_kwargs: dict, tmp_path: Path) -> None:
    """Clean, bad file, other bad file, clean again, all into one results folder: each report is that run's alone."""
    folder = _images(tmp_path / "in", "a.png")
    assert _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out") == ["a.png"]
    assert _report(tmp_path / "out") is None
    (folder / "first.png").write_bytes(b"")
    _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out")
    assert set(_report(tmp_path / "out") or {}) == {"first.png"}
    (folder / "first.png").unlink()
    (folder / "second.png").write_text("not an image")
    _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out")
    assert set(_report(tmp_path / "out") or {}) == {"second.png"}
    (folder / "second.png").unlink()
    assert _predict(model_kwargs, SafePredictFolder(folder), tmp_path / "out") == ["a.png"]
    assert _report(tmp_path / "out") is None
