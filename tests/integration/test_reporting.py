"""Reports of test and predict runs: where thresholds come from, pictures per category, CSV, per-category metrics.

A zero-shot tiny model (random head) is tested and run on generated categories that share file names. Its scores
mean nothing; what is checked is what the run reports and how.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.post_processing import PostProcessor
from engines import cpu_engine
from PIL import Image
from torchmetrics.classification import BinaryAUROC

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.data import SafePredictFolder
from anomalib_bayes_pfl.demo import demo_datamodule
from anomalib_bayes_pfl.reporting import CAPTION_HEIGHT, TABLE_NAME
from anomalib_bayes_pfl.thresholds import BayesPFLPostProcessor, ThresholdWarning

pytestmark = pytest.mark.integration

TARGETS = ("ring", "grain")
"""The demo datamodule's test categories (its validation holds the four source categories)."""


@pytest.fixture(scope="module")
def zero_shot_kwargs(tiny_kwargs: dict, tiny_clip_weights: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A zero-shot tiny model's arguments: a saved random head on the shared random CLIP."""
    kwargs = tiny_kwargs | {"pretrained": tiny_clip_weights}
    head = save_prompt_weights(BayesPFL(**kwargs).model, tmp_path_factory.mktemp("head") / "head.pt")
    return kwargs | {"prompt_weights": str(head)}


def _table(root: Path) -> list[dict[str, str]]:
    (table,) = root.rglob(TABLE_NAME)
    with table.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


class ScoresToZero(PostProcessor):
    """A post-processor that ties every score: metrics computed after it would be 0.5."""

    def post_process_batch(self, batch: object) -> None:
        """Set all scores to zero."""
        batch.pred_score = torch.zeros_like(batch.pred_score)


def test_metrics_are_computed_before_post_processing(
    zero_shot_kwargs: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    """The reported image AUROC is that of the model's own scores, whatever the post-processor does to them."""
    model = BayesPFL(**zero_shot_kwargs, post_processor=ScoresToZero())
    datamodule = MVTecAD(root=synthetic_root, category="ring", eval_batch_size=32, num_workers=0)
    warnings.filterwarnings("ignore")
    reported = cpu_engine(tmp_path).test(model, datamodule=datamodule)[0]["image_AUROC"]
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    model.eval()
    with torch.no_grad():
        raw = model.model(model.pre_processor.transform(batch.image)).pred_score
    expected = float(BinaryAUROC()(raw, batch.gt_label.int()))
    assert expected != pytest.approx(0.5)
    assert reported == pytest.approx(expected, abs=1e-6)


def test_zero_shot_predict_on_a_folder_path_gives_scores_without_labels(
    zero_shot_kwargs: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    """`anomalib predict --data <folder>` of a zero-shot model runs; no threshold: no labels, and a warning."""
    folder = synthetic_root / "ring" / "test" / "cut"
    with pytest.warns(ThresholdWarning, match="No anomaly threshold"):
        predictions = cpu_engine(tmp_path).predict(BayesPFL(**zero_shot_kwargs), data_path=folder)
    assert all(batch.pred_label is None for batch in predictions)
    rows = _table(tmp_path)
    assert len(rows) == len(list(folder.iterdir()))
    assert {row["label"] for row in rows} == {""}
    assert all(row["score"] and row["category"] == "ring" for row in rows)


def test_safe_predict_folder_never_labels_from_a_nan_threshold(
    zero_shot_kwargs: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    """SafePredictFolder has no validation: scores only, with a warning (anomalib labelled every image from NaN)."""
    with pytest.warns(ThresholdWarning, match="No anomaly threshold"):
        predictions = cpu_engine(tmp_path).predict(
            BayesPFL(**zero_shot_kwargs), datamodule=SafePredictFolder(synthetic_root / "ring" / "test")
        )
    assert all(batch.pred_label is None and batch.pred_score is not None for batch in predictions)


def test_labels_from_other_categories_thresholds_are_flagged(
    zero_shot_kwargs: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    """Thresholds learnt on the source categories label the targets only with a warning naming both."""
    with pytest.warns(ThresholdWarning, match="use the threshold and statistics learnt on") as caught:
        predictions = cpu_engine(tmp_path).predict(
            BayesPFL(**zero_shot_kwargs), datamodule=demo_datamodule(synthetic_root)
        )
    named = {category for category in TARGETS for warning in caught if f"of '{category}' use" in str(warning.message)}
    assert named == set(TARGETS)
    assert all(batch.pred_label is not None for batch in predictions)
    assert {row["label"] for row in _table(tmp_path)} <= {"normal", "anomalous"}


def test_several_categories_get_their_own_pictures_and_metrics(
    zero_shot_kwargs: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    """One picture per test image under images/<category>/<defect>/, captioned; metrics per category and pooled."""
    warnings.filterwarnings("ignore")
    results = cpu_engine(tmp_path).test(BayesPFL(**zero_shot_kwargs), datamodule=demo_datamodule(synthetic_root))[0]
    images = [path for category in TARGETS for path in (synthetic_root / category / "test").rglob("*.png")]
    pictures = sorted(tmp_path.rglob("images/**/*.png"))
    assert len(pictures) == len(images)
    assert {picture.relative_to(next(tmp_path.rglob("images"))).parts[0] for picture in pictures} == set(TARGETS)
    assert {f"{category}/image_AUROC" for category in TARGETS} | {"image_AUROC"} <= set(results)
    caption = np.asarray(Image.open(pictures[0]).convert("L"))[-CAPTION_HEIGHT:]
    assert (caption == 0).mean() > 0.8 and caption.max() > 0  # a black strip under the picture, with text on it


def test_threshold_categories_travel_with_the_checkpoint() -> None:
    """The categories thresholds were learnt on are saved with the post-processor's settings; junk reads as unknown."""
    saved = BayesPFLPostProcessor()
    saved.threshold_categories = ["disc", "square"]
    loaded = BayesPFLPostProcessor()
    loaded.load_checkpoint_config(saved.checkpoint_config())
    assert loaded.threshold_categories == ["disc", "square"]
    loaded.load_checkpoint_config({"threshold_categories": "disc"})
    assert loaded.threshold_categories is None
