"""The uncertainty map: mutual information between the prompt sample and the label, per pixel.

It is zero where the R x B sample maps agree, grows as they disagree, is bounded by ln 2, is computed per image
(batch-independent), leaves the anomaly map and score untouched, and reaches the Lightning batch and the pictures.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch
from anomalib.data import ImageBatch
from PIL import Image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.anomaly_map import pixel_anomaly_maps, pixel_anomaly_probability
from anomalib_bayes_pfl.reporting import CategoryImageVisualizer
from anomalib_bayes_pfl.torch_model import BayesPFLModel
from anomalib_bayes_pfl.uncertainty import mutual_information

GRID, SIZE = (2, 2), (8, 8)


def _model(tiny_kwargs: dict, **changes: object) -> BayesPFLModel:
    torch.manual_seed(0)
    return BayesPFLModel(**(tiny_kwargs | changes)).eval()


def _images(tiny_kwargs: dict, count: int = 3) -> torch.Tensor:
    side = tiny_kwargs["image_size"]
    return torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(1))


def _pair_logits(spread: float) -> list[torch.Tensor]:
    """Two layers of patch logits for 4 pairs whose abnormal-minus-normal differences lie ``spread`` apart."""
    centre = torch.linspace(-1, 1, 4).view(1, 4, 1)  # (N, P, 1) on the 2 x 2 grid: varies over patches
    offsets = spread * torch.tensor([-1.5, -0.5, 0.5, 1.5])  # one per pair
    abnormal = centre + offsets
    return [torch.cat([torch.zeros(1, 4, 4), abnormal * scale], dim=-1) for scale in (1.0, 0.5)]


def test_zero_when_all_samples_agree(tiny_kwargs: dict) -> None:
    """R = 1, B = 1: a single sample map has no spread, so the map is exactly zero."""
    output = _model(tiny_kwargs, num_samples=1, num_prompts=1)(_images(tiny_kwargs), uncertainty=True)
    assert torch.equal(output.uncertainty_map, torch.zeros_like(output.anomaly_map))


def test_zero_for_identical_sample_maps() -> None:
    """Samples that agree pixel by pixel, at any probability, carry no information about the label."""
    maps = torch.rand(2, 1, 5, 5).expand(2, 6, 5, 5)
    assert torch.allclose(mutual_information(maps), torch.zeros(2, 5, 5), atol=1e-6)


def test_grows_as_the_samples_disagree() -> None:
    """Spreading the pairs' logits apart raises the uncertainty at every pixel, up to at most ln 2."""
    maps = [pixel_anomaly_maps(_pair_logits(spread), GRID, SIZE, uncertainty=True)[1] for spread in (0, 1, 3, 9)]
    assert torch.equal(maps[0], torch.zeros_like(maps[0]))
    for smaller, larger in zip(maps, maps[1:], strict=False):
        assert bool((larger > smaller).all())
    assert float(maps[-1].max()) <= math.log(2)


def test_leaves_the_anomaly_map_bit_identical(tiny_kwargs: dict) -> None:
    """Asking for the uncertainty changes neither the map nor the score, to the bit."""
    model, images = _model(tiny_kwargs), _images(tiny_kwargs)
    plain, uncertain = model(images), model(images, uncertainty=True)
    assert torch.equal(plain.pred_score, uncertain.pred_score)
    assert torch.equal(plain.anomaly_map, uncertain.anomaly_map)
    logits = _pair_logits(2.0)
    assert torch.equal(pixel_anomaly_maps(logits, GRID, SIZE)[0], pixel_anomaly_probability(logits, GRID, SIZE))


def test_batch_independent_and_bounded(tiny_kwargs: dict) -> None:
    """Each image's map is what it gets alone, lies in [0, ln 2] and is not zero when R x B > 1."""
    model, images = _model(tiny_kwargs), _images(tiny_kwargs)
    together = model(images, uncertainty=True).uncertainty_map
    alone = torch.cat([model(image[None], uncertainty=True).uncertainty_map for image in images])
    assert torch.allclose(together, alone, atol=1e-6)
    assert float(together.min()) >= 0
    assert float(together.max()) <= math.log(2)
    assert float(together.max()) > 0


def test_reaches_the_predicted_batch(tiny_kwargs: dict) -> None:
    """``predict_step`` returns the batch with ``uncertainty_map (N, H, W)`` beside the anomaly map."""
    model, images = BayesPFL(**tiny_kwargs).eval(), _images(tiny_kwargs, count=2)
    with torch.no_grad():
        batch = model.predict_step(ImageBatch(image=images))
    assert batch.uncertainty_map.shape == batch.anomaly_map.shape


def _saved(root: Path) -> Path:
    """The one picture the visualiser saved under ``root/images`` (anomalib's naming for a loose file)."""
    (path,) = (root / "images").rglob("part.png")
    return path


def test_pictures_show_the_uncertainty_next_to_the_anomaly_map(tmp_path: Path) -> None:
    """A batch with an uncertainty map gets one more panel, titled, in the fixed [0, ln 2] colour scale."""
    visualizer = CategoryImageVisualizer(fields=["image", "anomaly_map"], field_size=(32, 32))
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), datamodule=None)
    image_path = tmp_path / "part.png"
    Image.new("RGB", (16, 16), "gray").save(image_path)
    batch = ImageBatch(image=torch.zeros(1, 3, 16, 16), image_path=[str(image_path)], anomaly_map=torch.rand(1, 16, 16))
    visualizer.on_test_batch_end(trainer, None, batch, batch, 0)
    width_without = Image.open(_saved(tmp_path)).width
    batch.uncertainty_map = torch.full((1, 16, 16), math.log(2))
    visualizer.on_test_batch_end(trainer, None, batch, batch, 0)
    with_panel = Image.open(_saved(tmp_path))
    assert with_panel.width == width_without + 32
    assert with_panel.getpixel((with_panel.width - 16, 24)) != with_panel.getpixel((16, 24))


def test_an_image_without_a_score_gets_the_largest_uncertainty(tiny_kwargs: dict) -> None:
    """A NaN pixel (possible in an exported graph, which cannot raise) gives ln 2 there, not NaN; others keep theirs."""
    model, images = _model(tiny_kwargs), _images(tiny_kwargs, count=2)
    broken = images.clone()
    broken[1, 0, 0, 0] = float("nan")
    expected = model(images, uncertainty=True).uncertainty_map
    uncertainty_map = model(broken, uncertainty=True).uncertainty_map
    assert torch.equal(uncertainty_map[0], expected[0])
    assert torch.equal(uncertainty_map[1], torch.full_like(uncertainty_map[1], math.log(2)))
