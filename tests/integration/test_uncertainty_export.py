"""The uncertainty map as an extra export output: equal to eager, and only where asked for.

anomalib's inferencers accept the four ``InferenceBatch`` outputs only, so the default export keeps them (its
equality with eager is ``test_export_sizes.py``); inside ``uncertainty_output`` the ONNX graph has a fifth output,
``uncertainty_map``, read here with OpenVINO's own API as a user would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.uncertainty import uncertainty_output

pytestmark = pytest.mark.integration

MODEL_SIZE = 32
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO runs bf16 by default on CPUs that support it; compare in f32."""
TOLERANCE = 1e-3


def test_exported_uncertainty_equals_eager(tiny_kwargs: dict, tmp_path: Path) -> None:
    """ONNX (through OpenVINO) gives eager's uncertainty map for a batch of images of another size, within 1e-3."""
    import openvino

    torch.manual_seed(0)
    model = BayesPFL(**(tiny_kwargs | {"image_size": MODEL_SIZE})).eval()
    with uncertainty_output(model):
        onnx_path = model.to_onnx(tmp_path)
    assert isinstance(model(torch.rand(1, 3, MODEL_SIZE, MODEL_SIZE)), InferenceBatch)  # the default again

    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    compiled = openvino.Core().compile_model(str(onnx_path), "CPU", F32)
    exported = compiled({compiled.input(0).any_name: images.numpy()})[compiled.output("uncertainty_map")]
    with torch.no_grad():
        eager = model.model(model.pre_processor.transform(images), uncertainty=True).uncertainty_map
    assert exported.shape == (2, MODEL_SIZE, MODEL_SIZE)
    assert float(eager.max()) > 0
    assert np.abs(exported - eager.numpy()).max() <= TOLERANCE
