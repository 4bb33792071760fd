"""Few-shot mode: the patch memory, its fusion with the zero-shot map, and the errors on bad references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_bayes_pfl import BayesPFL, save_prompt_weights
from anomalib_bayes_pfl.few_shot import PatchMemory, memory_bytes, read_references, reference_paths
from anomalib_bayes_pfl.images import BadImageError
from anomalib_bayes_pfl.torch_model import BayesPFLModel


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, tiny_kwargs: dict) -> Path:
    """Prompt weights of the tiny model."""
    torch.manual_seed(0)
    return save_prompt_weights(BayesPFLModel(**tiny_kwargs), tmp_path_factory.mktemp("head") / "head.pt")


def _images(count: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _write(folder: Path, name: str, height: int = 40, width: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(name) + height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / name)
    return folder / name


SAME_CLIP = {"seed": 0}
"""The random tiny CLIP is drawn from the model's seed: models compared with each other must share it (with seed
``None`` they draw from Lightning's generator, which earlier tests may have seeded and advanced)."""


def _few_shot_model(head: Path, tiny_kwargs: dict, weight: float, k_shot: int = 2) -> BayesPFL:
    arguments = {"prompt_weights": str(head), "k_shot": k_shot, "few_shot_weight": weight}
    model = BayesPFL(**tiny_kwargs, **SAME_CLIP, **arguments).eval()
    model.model.fill_few_shot_memory(_images(k_shot, seed=1))
    return model


def test_memory_size_at_vit_l_518() -> None:
    """The issue's figure: 1369 patches x 4 blocks x 1024 dims x 4 references, stored in float16."""
    assert memory_bytes(4, 4, 1369, 1024) == 1369 * 4 * 1024 * 4 * 2
    assert memory_bytes(4, 4, 1369, 1024, torch.float32) == 2 * memory_bytes(4, 4, 1369, 1024)


def test_references_are_normal_and_other_patches_are_not() -> None:
    """A reference patch is at distance ~0 from the memory; an orthogonal one at 1/2, in every pixel."""
    memory = PatchMemory(k_shot=1, num_layers=2, grid=(2, 2), width=8, weight=1.0)
    references = torch.nn.functional.one_hot(torch.arange(4), 8).float().unsqueeze(0)
    memory.fill([references, references])
    assert memory.anomaly_map([references, references], (8, 8)).abs().max() < 1e-3
    others = torch.nn.functional.one_hot(torch.arange(4, 8), 8).float().unsqueeze(0)
    torch.testing.assert_close(memory.anomaly_map([others, others], (8, 8)), torch.full((1, 8, 8), 0.5))


def test_weight_zero_is_zero_shot_exactly(head: Path, tiny_kwargs: dict) -> None:
    """few_shot_weight=0 gives the zero-shot model's score and map, bit for bit."""
    images = _images(2, seed=2)
    zero_shot = BayesPFL(**tiny_kwargs, **SAME_CLIP, prompt_weights=str(head)).eval()
    few_shot = _few_shot_model(head, tiny_kwargs, weight=0.0)
    with torch.no_grad():
        expected, got = zero_shot.model(images), few_shot.model(images)
    assert torch.equal(expected.pred_score, got.pred_score)
    assert torch.equal(expected.anomaly_map, got.anomaly_map)


def test_weight_one_is_the_memory_only(head: Path, tiny_kwargs: dict) -> None:
    """few_shot_weight=1 scores a reference image's own patches ~0, whatever the zero-shot head says."""
    model = _few_shot_model(head, tiny_kwargs, weight=1.0)
    with torch.no_grad():
        references = model.model(_images(2, seed=1))
        others = model.model(_images(2, seed=3))
    assert references.anomaly_map.abs().max() < 1e-3
    assert references.pred_score.abs().max() < 1e-3
    assert (others.pred_score > 10 * references.pred_score.abs().max()).all()


def test_fusion_is_the_documented_mix(head: Path, tiny_kwargs: dict) -> None:
    """Map and score at weight w are (1 - w) * zero-shot + w * memory-only."""
    images = _images(2, seed=4)
    with torch.no_grad():
        parts = [_few_shot_model(head, tiny_kwargs, weight).model(images) for weight in (0.0, 1.0, 0.25)]
    zero_shot, memory, fused = parts
    torch.testing.assert_close(fused.pred_score, 0.75 * zero_shot.pred_score + 0.25 * memory.pred_score)
    torch.testing.assert_close(fused.anomaly_map, 0.75 * zero_shot.anomaly_map + 0.25 * memory.anomaly_map)


def test_float16_memory_error_is_below_1e_3(head: Path, tiny_kwargs: dict) -> None:
    """The stored float16 memory moves the memory map by less than 1e-3 against a float32 one."""
    model = _few_shot_model(head, tiny_kwargs, weight=1.0)
    memory = model.model.few_shot
    patches = model.model.backbone(_images(2, seed=5))[1]
    stored = memory.anomaly_map(patches, (64, 64))
    memory.memory = memory.memory.float()
    memory.fill(model.model.backbone(_images(2, seed=1))[1])
    assert (memory.anomaly_map(patches, (64, 64)) - stored).abs().max() < 1e-3


def test_empty_memory_names_the_fix(head: Path, tiny_kwargs: dict) -> None:
    """Scoring before any reference was collected is an error, not a constant map."""
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=2).eval()
    with pytest.raises(RuntimeError, match="few-shot memory is empty.*few_shot_source"):
        model.model(_images(1, seed=0))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"k_shot": -1}, "k_shot=-1 must be an integer >= 0"),
        ({"k_shot": 2, "few_shot_weight": 1.5}, r"few_shot_weight=1.5 must be a number in \[0, 1\]"),
        ({"few_shot_source": "refs"}, "k_shot=0; set k_shot"),
    ],
)
def test_bad_arguments_name_the_fix(head: Path, tiny_kwargs: dict, arguments: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BayesPFL(**tiny_kwargs, prompt_weights=str(head), **arguments)


def test_few_shot_needs_a_head(tiny_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="k_shot=2 needs a trained head.*prompt_weights"):
        BayesPFL(**tiny_kwargs, k_shot=2)


def test_few_shot_model_is_few_shot_and_keeps_the_head(head: Path, tiny_kwargs: dict) -> None:
    """k_shot is not a head setting: the head loads, and the learning type is FEW_SHOT."""
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=3)
    assert model.learning_type.value == "few_shot"
    assert model.model.few_shot.memory.shape == (4, 3 * 64, model.model.backbone.vision_width)
    assert BayesPFL(**tiny_kwargs, prompt_weights=str(head)).learning_type.value == "zero_shot"


def test_references_from_a_folder_sorted(tmp_path: Path) -> None:
    """A folder gives its images (any depth) in sorted order; other files are ignored."""
    for name in ("b.png", "a.png", "c.jpg"):
        _write(tmp_path / "refs", name)
    (tmp_path / "refs" / "notes.txt").write_text("not an image")
    paths = reference_paths(tmp_path / "refs")
    assert [path.name for path in paths] == ["a.png", "b.png", "c.jpg"]
    assert read_references(paths, 2, "refs").shape == (2, 3, 40, 40)


def test_too_few_references_name_the_fix(tmp_path: Path) -> None:
    paths = [_write(tmp_path, "a.png")]
    with pytest.raises(ValueError, match=r"k_shot=2 but refs holds 1 normal image\(s\). Use k_shot <= 1"):
        read_references(paths, 2, "refs")


def test_unreadable_reference_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(BadImageError, match="broken.png"):
        read_references([_write(tmp_path, "a.png"), broken], 2, "refs")


def test_references_of_another_size_name_the_fix(tmp_path: Path) -> None:
    paths = [_write(tmp_path, "a.png"), _write(tmp_path, "b.png", height=30)]
    with pytest.raises(ValueError, match=r"differ in size.*\(30, 40\).*Give references of one size"):
        read_references(paths, 2, "refs")


def test_checkpoint_memory_of_another_k_names_the_fix(head: Path, tiny_kwargs: dict) -> None:
    """A stored memory built for another k_shot is refused with the arguments to pass."""
    two = _few_shot_model(head, tiny_kwargs, weight=0.5, k_shot=2)
    three = BayesPFL(**tiny_kwargs, prompt_weights=str(head), k_shot=3)
    with pytest.raises(ValueError, match=r"few-shot memory has shape .*\(k_shot=3\). Pass the k_shot"):
        three.model.load_state_dict(two.model.state_dict())
