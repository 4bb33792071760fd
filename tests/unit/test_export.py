"""The pre-processor: torchvision's resize in the Lightning loops and checkpoints, the exportable one in the export."""

from __future__ import annotations

import torch
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_bayes_pfl.export import ExportablePreProcessor
from anomalib_bayes_pfl.resize import ExportableBicubicResize


def _pipeline(size: int = 8) -> Compose:
    return Compose([Resize((size, size), InterpolationMode.BICUBIC, antialias=True), Normalize([0.5] * 3, [0.2] * 3)])


class TestExportablePreProcessor:
    """torchvision's resize in the loops and checkpoints, the exportable one in the export, equal within 1e-5."""

    @staticmethod
    def test_loops_keep_torchvision_and_the_export_takes_the_matrices() -> None:
        """The loop transform is torchvision's (datamodules find it); the export transform computes the same."""
        pre_processor = ExportablePreProcessor(_pipeline())
        images = torch.rand(1, 3, 30, 20)
        assert type(pre_processor.transform.transforms[0]) is Resize
        assert isinstance(pre_processor.export_transform.transforms[0], ExportableBicubicResize)
        assert torch.equal(pre_processor.transform(images), _pipeline()(images))
        assert torch.allclose(pre_processor(images), pre_processor.transform(images), rtol=0, atol=1e-5)

    @staticmethod
    def test_checkpoint_round_trip() -> None:
        """The checkpoint holds anomalib's own spec; loading rebuilds the export transform from it."""
        config = ExportablePreProcessor(_pipeline(8)).checkpoint_config()
        assert config == PreProcessor(_pipeline(8)).checkpoint_config()
        restored = ExportablePreProcessor(_pipeline(16))
        restored.load_checkpoint_config(config)
        assert type(restored.transform.transforms[0]) is Resize
        assert restored.transform.transforms[0].size == [8, 8]
        assert isinstance(restored.export_transform.transforms[0], ExportableBicubicResize)
        assert restored.export_transform.transforms[0].size == [8, 8]
