"""Exported BayesPFL (OpenVINO IR and ONNX, default dynamic export) scores image files of any size like eager.

The exported graph holds the pre-processor's resize, so files of the model's size, smaller, larger and very
elongated go through ``OpenVINOInferencer.predict(path)`` as a user runs it (the ONNX file too: OpenVINO reads it).
Both return the anomaly map at the model's input size, as eager does; they are compared there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.data.utils import read_image
from PIL import Image

from anomalib_bayes_pfl import BayesPFL

pytestmark = pytest.mark.integration

MODEL_SIZE = 32
IMAGE_SIZES = [(32, 32), (16, 16), (64, 64), (128, 128), (700, 1000), (4, 2000)]
"""(height, width): the model's size, smaller, larger, and non-square, up to 500:1."""
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO runs bf16 by default on CPUs that support it; compare in f32."""
TOLERANCE = 1e-3


class _TracebackRecords(logging.Handler):
    """Keeps the log records that carry a traceback (what a user reads as a failure)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def model(tiny_kwargs: dict) -> BayesPFL:
    """A tiny random-weight model at 32 px."""
    torch.manual_seed(0)
    return BayesPFL(**(tiny_kwargs | {"image_size": MODEL_SIZE})).eval()


@pytest.fixture(scope="module")
def exports(model: BayesPFL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Path], list]]:
    """Default exports (no ``input_size``) to OpenVINO and ONNX, and the logged tracebacks while exporting."""
    root = tmp_path_factory.mktemp("export")
    handler = _TracebackRecords()
    logging.getLogger().addHandler(handler)
    try:
        paths = {"openvino": model.to_openvino(root), "onnx": model.to_onnx(root)}
    finally:
        logging.getLogger().removeHandler(handler)
    yield paths, handler.records


def _write_image(folder: Path, height: int, width: int) -> Path:
    """A PNG with smooth structure and noise (so a resize has something to get wrong)."""
    rows, columns = np.mgrid[0:height, 0:width]
    phase = np.arange(3)
    smooth = 127 + 60 * np.sin(columns[..., None] / (width / 7 + 1) + phase) * np.cos(rows[..., None] / (height / 5))
    noise = np.random.default_rng(height * 10_000 + width).normal(0, 30, (height, width, 3))
    path = folder / f"{height}x{width}.png"
    Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def _eager(model: BayesPFL, path: Path) -> InferenceBatch:
    """What anomalib's Engine computes: the pre-processor's transform, the model, then the post-processor."""
    image = read_image(path, as_tensor=True).unsqueeze(0)
    with torch.no_grad():
        return model.post_processor(model.model(model.pre_processor.transform(image)))


@pytest.mark.parametrize("export_type", ["openvino", "onnx"])
@pytest.mark.parametrize(("height", "width"), IMAGE_SIZES)
def test_export_matches_eager_at_any_size(
    model: BayesPFL,
    exports: tuple[dict[str, Path], list],
    export_type: str,
    height: int,
    width: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenVINOInferencer.predict(file) gives eager's score and anomaly map (model size) within 1e-3 in f32."""
    from anomalib.deploy import OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # the inferencer writes ./openvino_cache
    path = _write_image(tmp_path, height, width)
    prediction = OpenVINOInferencer(exports[0][export_type], device="CPU", config=F32).predict(path)
    expected = _eager(model, path)
    anomaly_map = np.asarray(prediction.anomaly_map).squeeze()
    assert anomaly_map.shape == (MODEL_SIZE, MODEL_SIZE)
    assert abs(float(np.asarray(prediction.pred_score).flatten()[0]) - float(expected.pred_score)) <= TOLERANCE
    assert np.abs(anomaly_map - expected.anomaly_map.squeeze().numpy()).max() <= TOLERANCE


def test_default_export_logs_no_traceback(exports: tuple[dict[str, Path], list]) -> None:
    """Exporting with the defaults logs no traceback (onnx's version converter used to print one per export)."""
    records = exports[1]
    assert not records, [f"{record.name}: {record.getMessage()}" for record in records]
