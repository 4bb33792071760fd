# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Exporting BayesPFL so that the exported model computes what the eager one does, quietly.

* **The resize.** anomalib's :class:`~anomalib.pre_processing.PreProcessor` runs ``transform`` in the Lightning
  loops and, in the exported graph, a copy with antialiasing switched off (``get_exportable_transform``), so an
  exported model saw other pixels than the eager one for every image not already at the model's size (and ONNX's
  bicubic differs from torch's anyway). :class:`ExportablePreProcessor` keeps torchvision's
  ``Resize(size, BICUBIC, antialias=True)`` in the loops (fast, and what anomalib's datamodules look for to resize
  each image before collation) and exports :class:`~anomalib_bayes_pfl.resize.ExportableBicubicResize` instead: the
  same filter as matrix products, which ONNX and OpenVINO compute exactly, within about 1e-6 of torchvision's at
  any input size. Checkpoints keep anomalib's format (they hold the loop transform); loading rebuilds the export
  transform, so checkpoints written before this pre-processor export correctly too.
* **The opset.** torch's ONNX exporter builds opset-18 graphs. anomalib asks for opset 14 by default; onnx's
  version converter then fails on the graph's dynamic ``axes`` inputs and logs a traceback on every export, which
  reads as a failure although the model is kept at opset 18. :data:`ONNX_OPSET` needs no conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Transform

from .resize import ExportableBicubicResize

ONNX_OPSET = 18
"""Opset of torch's ONNX exporter (``torch.onnx._internal.exporter._constants.TORCHLIB_OPSET`` in torch 2.13)."""


def _map_transforms(transform: Transform | None, function: Callable[[Transform], Transform]) -> Transform | None:
    """Apply ``function`` to each transform, descending into ``Compose``."""
    if transform is None:
        return None
    if isinstance(transform, Compose):
        return Compose([_map_transforms(inner, function) for inner in transform.transforms])
    return function(transform)


def _to_exportable(transform: Transform) -> Transform:
    return ExportableBicubicResize(transform.size) if ExportableBicubicResize.replaces(transform) else transform


class ExportablePreProcessor(PreProcessor):
    """A :class:`PreProcessor` whose antialiased bicubic resizes export exactly.

    Args:
        transform (Transform | None): torchvision transforms, as for :class:`PreProcessor`. Defaults to ``None``.

    Example:
        >>> from torchvision.transforms.v2 import InterpolationMode, Resize
        >>> pre_processor = ExportablePreProcessor(Resize((8, 8), InterpolationMode.BICUBIC, antialias=True))
        >>> type(pre_processor.transform).__name__, type(pre_processor.export_transform).__name__
        ('Resize', 'ExportableBicubicResize')
    """

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.export_transform = _map_transforms(self.transform, _to_exportable)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore anomalib's configuration, then rebuild the export transform from it."""
        super().load_checkpoint_config(config)
        self.export_transform = _map_transforms(self.transform, _to_exportable)
