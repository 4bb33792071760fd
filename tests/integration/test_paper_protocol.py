"""`python benchmarks/paper_protocol.py`: the official evaluation (pre-processing, min-max fusion, metrics) on
generated data and the tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import paper_protocol
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader
from torchvision import transforms

from anomalib_bayes_pfl import generate_synthetic_dataset, save_prompt_weights
from anomalib_bayes_pfl.anomaly_map import AnomalyMapGenerator, top_k_mean
from anomalib_bayes_pfl.torch_model import BayesPFLModel

pytestmark = pytest.mark.integration

CATEGORIES = ["disc", "stripes"]
DATA_SIZE = 72
"""Side of the generated images: not the model's 64, so the official resize is exercised."""


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_clip_weights: str, tiny_kwargs: dict) -> dict:
    """Generated MVTec-layout data, a random head and the command-line arguments of the tiny model."""
    root = tmp_path_factory.mktemp("paper")
    data = generate_synthetic_dataset(root / "data", CATEGORIES, image_size=DATA_SIZE, num_train=1,
                                      num_test_normal=3, num_test_anomalous=4)  # fmt: skip
    kwargs = tiny_kwargs | {"pretrained": tiny_clip_weights}
    head = save_prompt_weights(BayesPFLModel(**kwargs), root / "head.pt")
    argv = ["--dataset", "mvtec", "--root", str(data), "--prompt-weights", str(head),
            "--pretrained", tiny_clip_weights, "--backbone", kwargs["backbone"],
            "--image-size", str(kwargs["image_size"]), "--num-samples", str(kwargs["num_samples"]),
            "--feature-layers", *map(str, kwargs["feature_layers"]), "--categories", *CATEGORIES,
            "--batch-size", "3", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    return {"root": root, "data": data, "argv": argv}


class TestFusion:
    """The reference's per-category min-max fusion of the two halves of the image score."""

    @staticmethod
    def test_hand_computed() -> None:
        """text [.2, .4, .6] -> [0, .5, 1]; map [.1, .3, .2] -> [0, 1, .5]; 0.5 / 0.5 -> [0, .75, .75]."""
        fused = paper_protocol.fuse_scores(torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.1, 0.3, 0.2]))
        assert torch.allclose(fused, torch.tensor([0.0, 0.75, 0.75]), atol=1e-6)

    @staticmethod
    def test_constant_scores_give_zero() -> None:
        """The reference's 1e-8 in the denominator: a constant half contributes 0, not NaN."""
        fused = paper_protocol.fuse_scores(torch.full((3,), 0.3), torch.tensor([0.0, 1.0, 0.5]))
        assert torch.allclose(fused, torch.tensor([0.0, 0.5, 0.25]), atol=1e-6)

    @staticmethod
    def test_small_defect_top_k() -> None:
        """k = 20 for the reference's seven small-defect categories, 2000 otherwise."""
        assert paper_protocol.top_k_for("screw") == 20 and paper_protocol.top_k_for("pipe_fryum") == 20
        assert paper_protocol.top_k_for("bottle") == 2000


class TestScoreParts:
    """The unfused halves the protocol reads are exactly those the deployed score fuses."""

    @staticmethod
    def test_parts_fuse_to_forward() -> None:
        """alpha * text + (1 - alpha) * map is forward's score, bit for bit; the raw map smoothed is its map."""
        generator = torch.Generator().manual_seed(0)
        image_logits = torch.randn(3, 8, generator=generator)
        layer_logits = [torch.randn(3, 16, 8, generator=generator) * 3 for _ in range(2)]
        maps = AnomalyMapGenerator(image_size=16, sigma=1.0, alpha=0.3, top_k=5)
        score, anomaly_map = maps(image_logits, layer_logits, (4, 4), (16, 16))
        parts = maps.score_parts(image_logits, layer_logits, (4, 4), (16, 16))
        assert torch.equal(score, 0.3 * parts.text_score + 0.7 * parts.map_score)
        assert torch.equal(anomaly_map, maps.blur(parts.raw_map.unsqueeze(1)).squeeze(1))
        other_k = maps.score_parts(image_logits, layer_logits, (4, 4), (16, 16), top_k=2)
        assert torch.equal(other_k.map_score, top_k_mean(parts.raw_map, 2))


class TestPreprocessing:
    """Images and masks are loaded as the official ``test.py`` / ``datasets.py`` load them."""

    @staticmethod
    @pytest.mark.parametrize("mode", ["RGB", "L"])
    def test_image_as_official_transform(tmp_path: Path, mode: str) -> None:
        """Same tensor as the reference's torchvision chain on PIL images (bicubic, RGB, ToTensor, CLIP stats)."""
        pixels = np.random.default_rng(0).integers(0, 256, (DATA_SIZE, DATA_SIZE, 3), dtype=np.uint8)
        path = tmp_path / "image.png"
        Image.fromarray(pixels).convert(mode).save(path)
        official = transforms.Compose([
            transforms.Resize((64, 64), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop((64, 64)),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ])  # fmt: skip
        assert torch.equal(paper_protocol.load_image(path, 64), official(Image.open(path)))

    @staticmethod
    def test_mask_as_official_transform(tmp_path: Path) -> None:
        """Binarised (> 0) as 0/255, bilinear resize, ToTensor, > 0.5; no mask gives an empty one."""
        mask = np.zeros((DATA_SIZE, DATA_SIZE), dtype=np.uint8)
        mask[10:30, 20:41] = 1  # VisA-style index values, not 255
        mask[50, 50] = 7
        path = tmp_path / "mask.png"
        Image.fromarray(mask).save(path)
        binary = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")
        official = transforms.Compose([transforms.Resize((64, 64)), transforms.CenterCrop(64), transforms.ToTensor()])
        assert torch.equal(paper_protocol.load_mask(path, 64), official(binary)[0] > 0.5)
        assert not paper_protocol.load_mask(None, 64).any()


def test_category_scores_follow_the_model(setting: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused scores and maps equal a hand fusion of the model's own per-image outputs, with the category's k."""
    monkeypatch.setattr(paper_protocol, "SMALL_DEFECT_CATEGORIES", frozenset({"disc"}))  # k = 20, not the model's
    args = paper_protocol._parser().parse_args(setting["argv"])
    model = paper_protocol.build_model(args)
    images = paper_protocol.CategoryTestSet(setting["data"] / "disc", (".png",), args.image_size)
    scores = paper_protocol.score_category(model, "disc", DataLoader(images, batch_size=3), sigma=2.0)

    batch = torch.stack([images[index][0] for index in range(len(images))])
    with torch.no_grad():
        output = model(batch, class_names=["disc"] * len(images))  # gaussian_sigma=0: the raw map
    map_score = top_k_mean(output.anomaly_map, 20)
    text = output.pred_score - (1 - model.anomaly_map.alpha) * top_k_mean(output.anomaly_map, model.anomaly_map.top_k)
    text = text / model.anomaly_map.alpha
    assert torch.allclose(scores.pred_score, paper_protocol.fuse_scores(text, map_score), atol=1e-5)
    smoothed = torch.from_numpy(gaussian_filter(output.anomaly_map.numpy(), sigma=2.0, axes=(1, 2)))
    assert torch.allclose(scores.anomaly_map, smoothed, atol=1e-6)
    assert scores.gt_label.tolist() == [int(images.samples.label_index[i]) for i in range(len(images))]
    anomalous = scores.gt_label == 1
    assert scores.gt_mask[anomalous].flatten(1).any(1).all() and not scores.gt_mask[~anomalous].any()


def test_runs_end_to_end(setting: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Per-category metrics, their mean, the paper's row, a progress bar and the CSV."""
    output = tmp_path / "out" / "paper.csv"
    table = paper_protocol.main([*setting["argv"], "--output", str(output)])
    assert list(table.index) == [*CATEGORIES, "mean", "paper"]
    assert list(table.columns) == list(paper_protocol.METRICS)
    measured = table.loc[CATEGORIES]
    assert measured.notna().all().all() and ((measured >= 0) & (measured <= 100)).all().all()
    assert np.allclose(table.loc["mean"], measured.mean())
    assert table.loc["paper"].to_dict() == paper_protocol.PAPER_RESULTS["mvtec"]
    assert np.allclose(pd.read_csv(output, index_col="category").to_numpy(), table.to_numpy(), atol=0.01)
    printed = capsys.readouterr()
    assert "disc" in printed.err and "batch" in printed.err  # tqdm's bar
    assert "paper" in printed.out and str(output) in printed.out


def test_missing_category_is_refused(setting: dict) -> None:
    """A root without the category folders stops before any model is built, naming the fix."""
    argv = [*setting["argv"], "--root", str(setting["root"])]
    with pytest.raises(SystemExit) as raised:
        paper_protocol.main(argv)
    assert raised.value.code == 2
