"""`python benchmarks/few_shot.py`: its rows run end to end and its false-alarm rate is the one predict would give."""

from __future__ import annotations

import json
import math
from pathlib import Path

import few_shot
import pytest
from engines import cpu_engine
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl import BayesPFL, generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

pytestmark = pytest.mark.integration


def test_bayes_pfl_rows_report_every_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Zero-shot, k = 1 and memory only: finite metrics and rates in the JSON file and one table row each."""
    out = tmp_path / "r.json"
    assert few_shot.main(["--models", "bayes-pfl", "--shots", "1", "--categories", "ring", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["BayesPFL zero-shot", "BayesPFL k=1", "BayesPFL memory only k=1"]
    for row in results.values():
        assert all(math.isfinite(row[key]) for key in (*few_shot.METRICS, few_shot.FALSE_ALARMS))
        assert set(row["categories"]) == {"ring"}
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in results)
    assert results["BayesPFL k=1"]["image_AUROC"] != results["BayesPFL zero-shot"]["image_AUROC"]


def test_false_alarm_rate_of_the_test_pass_equals_predict(tmp_path: Path) -> None:
    """The harness reads labels from the test batches (no predict pass): they must be the labels predict gives."""
    data = generate_synthetic_dataset(tmp_path / "data", ["ring"], image_size=64, **few_shot.DATASET)
    head = save_prompt_weights(BayesPFL(**TINY_MODEL_ARGS).model, tmp_path / "head.pt")
    model = BayesPFL(**TINY_MODEL_ARGS, prompt_weights=str(head), k_shot=1, false_alarm_rate=0.1)
    seed_everything(0)
    measured = few_shot.evaluate(model, data, "ring", tmp_path / "runs")[few_shot.FALSE_ALARMS]

    predictions = cpu_engine(tmp_path / "p").predict(model, datamodule=few_shot.category_data(data, "ring"))
    predicted = few_shot.false_alarm_rate(predictions)
    assert math.isfinite(measured)
    assert measured == predicted
