"""The exportable antialiased bicubic resize: torchvision's values, images and masks, a traceable export."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, Resize
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from anomalib_bayes_pfl.resize import ExportableBicubicResize, cubic_kernel, resize_bicubic


def _torchvision(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return TF.resize(images, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)


class TestCubicKernel:
    """Keys' kernel with a = -0.5."""

    @staticmethod
    def test_values() -> None:
        """Hand-worked values: 1 at 0, 0 at the integers and beyond 2, 0.5625 at 0.5, -0.0625 at 1.5."""
        distance = torch.tensor([-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
        expected = torch.tensor([0.0, -0.0625, 0.0, 0.5625, 1.0, 0.5625, 0.0, -0.0625, 0.0])
        assert torch.allclose(cubic_kernel(distance), expected)


class TestResizeBicubic:
    """Two matrix products give torchvision's antialiased bicubic resize."""

    @staticmethod
    @pytest.mark.parametrize(
        ("shape", "size"),
        [((40, 40), (8, 8)), ((5, 5), (8, 8)), ((70, 100), (8, 8)), ((4, 200), (8, 8)), ((1, 1), (8, 8)),
         ((33, 17), (5, 11))],
    )  # fmt: skip
    def test_matches_torchvision(shape: tuple[int, int], size: tuple[int, int]) -> None:
        """Down, up, non-square, 50:1 and 1x1 inputs: torchvision's values to float rounding."""
        images = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(resize_bicubic(images, size), _torchvision(images, size), atol=1e-5)

    @staticmethod
    def test_identity_at_equal_size() -> None:
        """At the output size nothing changes, bit for bit."""
        images = torch.rand(1, 3, 9, 7)
        assert torch.equal(resize_bicubic(images, (9, 7)), images)

    @staticmethod
    def test_refuses_integer_images() -> None:
        """uint8 images are refused with the conversion to use."""
        with pytest.raises(TypeError, match="ToDtype"):
            resize_bicubic(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (2, 2))


class TestExportableBicubicResize:
    """The transform: images through the matrices, masks by nearest neighbour, and an export without upsampling."""

    @staticmethod
    def test_images_and_masks() -> None:
        """An Image stays an Image with torchvision's values; a mask is resized like torchvision's Resize does."""
        image = tv_tensors.Image(torch.rand(3, 20, 30))
        mask = tv_tensors.Mask(torch.rand(20, 30) > 0.5)
        resized_image, resized_mask = ExportableBicubicResize((8, 12))(image, mask)
        assert isinstance(resized_image, tv_tensors.Image)
        assert torch.allclose(resized_image, _torchvision(image, (8, 12)), atol=1e-5)
        assert torch.equal(resized_mask, Resize((8, 12), InterpolationMode.BICUBIC, antialias=True)(mask))

    @staticmethod
    @pytest.mark.parametrize("size", [(8,), (0, 8), (8.0, 8)])
    def test_refuses_bad_sizes(size: tuple) -> None:
        """Anything but two positive integers is refused, naming the value."""
        with pytest.raises(ValueError, match="two positive integers"):
            ExportableBicubicResize(size)

    @staticmethod
    def test_export_uses_the_matrices() -> None:
        """Traced for export (dynamic H, W), the transform is matrix products, not an upsampling operator."""
        height, width = torch.export.Dim("height"), torch.export.Dim("width")
        program = torch.export.export(
            ExportableBicubicResize((8, 8)),
            (torch.rand(1, 3, 24, 40),),
            dynamic_shapes=(({2: height, 3: width},),),  # forward(*inputs)
        )
        targets = {str(node.target) for node in program.graph.nodes}
        assert not any("upsample" in target for target in targets)
        images = torch.rand(1, 3, 50, 7)
        assert torch.allclose(program.module()(images), resize_bicubic(images, (8, 8)))
