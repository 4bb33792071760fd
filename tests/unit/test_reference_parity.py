"""Our model against the reference procedure (``benchmarks/reference_procedure.py``), same weights and input."""

from __future__ import annotations

import pytest
import torch
from reference_procedure import reference_output

from anomalib_bayes_pfl.torch_model import BayesPFLModel

R, TOP_K, SIZE = 2, 20, 64


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_same_score_and_map_as_the_reference_procedure(activation: str) -> None:
    """Stage-2 model, R = 2 samples: score and unsmoothed map equal within 1e-5."""
    torch.manual_seed(0)
    model = BayesPFLModel(
        "bayes-pfl-tiny", None, SIZE, (1, 2, 3, 4), activation=activation, num_samples=R, class_name="bottle",
        gaussian_sigma=0.0, top_k=TOP_K,
    ).eval()  # fmt: skip
    model.stage = 2
    for parameter in model.parameters():  # move off the reference's tiny initial values, so differences show
        parameter.data.add_(torch.randn_like(parameter) * 0.05)
    image = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(image)
        score, anomaly_map = reference_output(model, image)
    assert torch.allclose(ours.pred_score, score.view(1), atol=1e-5)
    assert torch.allclose(ours.anomaly_map, anomaly_map, atol=1e-5)
