"""Tests of locality-aware attention: window mask, receptive field, global class token, options."""

from __future__ import annotations

import pytest
import torch

from anomalib_bayes_pfl.backbone import ClipBackbone
from anomalib_bayes_pfl.locality import check_locality, local_window_mask

PATCH = 8  # the tiny config's patch size; 64 px -> 8 x 8 grid


def _backbone(**locality: object) -> ClipBackbone:
    torch.manual_seed(0)
    return ClipBackbone("bayes-pfl-tiny", None, 64, (1, 2, 3, 4), **locality)


def _far_change(images: torch.Tensor, row: int, column: int) -> torch.Tensor:
    """A copy of ``images`` with one patch changed: the patch at (``row``, ``column``) of the grid."""
    changed = images.clone()
    changed[:, :, row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] += 3.0
    return changed


def test_mask_allows_exactly_the_window() -> None:
    """Patch rows see their (2r+1)^2 neighbours only; the class token sees everything and no patch sees it."""
    mask = local_window_mask((5, 5), 3)
    allowed = mask.eq(0)
    assert allowed[0].all()
    assert not allowed[1:, 0].any()
    centre = 1 + 2 * 5 + 2  # patch (2, 2)
    expected = {1 + r * 5 + c for r in (1, 2, 3) for c in (1, 2, 3)}
    assert set(allowed[centre].nonzero().flatten().tolist()) == expected
    assert torch.isneginf(mask[~allowed]).all()


def test_patch_output_ignores_pixels_outside_its_window() -> None:
    """With the window in every block, a patch's features at block k depend only on pixels within k patches.

    Without locality the same change does reach the patch (the property is not vacuous), and the class token
    stays global either way.
    """
    images = torch.randn(1, 3, 64, 64)
    changed = _far_change(images, 0, 3)  # patch (0, 3): 3 columns from patch (0, 0)
    local = _backbone(locality_window=3, locality_layers=(1, 2, 3, 4))
    (global_before, taps_before), (global_after, taps_after) = local(images), local(changed)
    for block in (1, 2):  # receptive field: 1 and 2 patches
        assert torch.allclose(taps_before[block - 1][0, 0], taps_after[block - 1][0, 0], atol=1e-6)
    assert not torch.allclose(taps_before[2][0, 0], taps_after[2][0, 0], atol=1e-4)  # block 3 reaches 3 patches
    assert not torch.allclose(global_before, global_after, atol=1e-4)
    vanilla = _backbone()
    assert not torch.allclose(vanilla(images)[1][0][0, 0], vanilla(changed)[1][0][0, 0], atol=1e-4)


def test_last_block_only_keeps_class_token_and_earlier_blocks() -> None:
    """Default layers (the last block): earlier taps and the global feature equal CLIP's; the last tap differs."""
    images = torch.randn(2, 3, 64, 64)
    vanilla, local = _backbone(), _backbone(locality_window=3)
    (global_v, taps_v), (global_l, taps_l) = vanilla(images), local(images)
    assert local.locality_layers == (4,)
    assert torch.allclose(global_v, global_l, atol=1e-6)
    for before, after in zip(taps_v[:3], taps_l[:3], strict=True):
        assert torch.equal(before, after)
    assert not torch.allclose(taps_v[3], taps_l[3], atol=1e-4)


def test_same_at_train_and_eval_time_and_no_new_weights() -> None:
    """The option adds no parameters and the backbone computes the same in both modes."""
    vanilla, local = _backbone(), _backbone(locality_window=5, locality_layers=(3, 4))
    assert [name for name, _ in local.named_parameters()] == [name for name, _ in vanilla.named_parameters()]
    assert "locality_mask" not in local.state_dict()
    images = torch.randn(1, 3, 64, 64)
    evaluated = local.eval()(images)[1][-1]
    trained = local.train()(images)[1][-1]
    assert torch.equal(evaluated, trained)


@pytest.mark.parametrize(
    ("window", "layers", "match"),
    [(2, None, "odd"), (0, None, "odd"), (3, (5,), "within 1..4"), (3, (), "within 1..4"), (None, (4,), "needs")],
)
def test_bad_options_are_explained(window: int | None, layers: tuple | None, match: str) -> None:
    """Even or empty windows, blocks beyond the depth and layers without a window are rejected."""
    with pytest.raises(ValueError, match=match):
        check_locality(window, layers, depth=4)
