# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Evaluate Bayes-PFL as the official ``test.py`` does, to check the paper's MVTec AD and VisA tables.

Usage:
    python benchmarks/paper_protocol.py --dataset mvtec --root datasets/MVTecAD \\
        --pretrained ViT-L-14-336px.pt --prompt-weights train_visa.pth
    python benchmarks/paper_protocol.py --dataset visa --root datasets/visa \\
        --pretrained ViT-L-14-336px.pt --prompt-weights train_mvtec.pth

``--root`` holds the category folders in MVTec AD's layout; for VisA, anomalib's prepared ``visa_pytorch`` folder
(written by anomalib's ``Visa`` datamodule, the same 1cls split as the paper's) or its parent. The paper tests
MVTec AD with the head trained on VisA and VisA with the head trained on MVTec AD.

What follows the official code (github.com/xiaozhen228/Bayes-PFL, MIT: ``test.py``, ``datasets.py``,
``models/metric_and_visualization.py``):

* pre-processing: the uint8 image is resized by PIL (bicubic) to ``image_size``, converted to RGB, scaled to [0, 1]
  and normalised with CLIP's mean and std. The mask is binarised (``> 0``), resized by PIL (bilinear) as a 0/255
  image and binarised again at 0.5. The deployed model resizes float tensors (torchvision, antialiased) instead;
* R = 10 prompt samples, the per-pair softmax averaged over pairs and layers (the model itself);
* image score: per category, the text (image-branch) score and the mean of the ``k`` largest values of the
  unsmoothed map are each min-max normalised over the category's test images, then fused 0.5 / 0.5
  (``k = 20`` for seven small-defect categories, 2000 otherwise);
* pixel map: SciPy's ``gaussian_filter`` with sigma 8, at ``image_size`` (the deployed model's anomalib blur has
  the same kernel but mirrors the border without repeating the edge pixel);
* metrics per category and their mean: image AUROC and AP, pixel AUROC (anomalib's AUROC and AUPR, which equal the
  reference's ``roc_auc_score`` and ``average_precision_score``) and pixel AUPRO (anomalib's, FPR limit 0.3).

Differences that remain: the model's evaluation noise is fixed by ``--eval-seed`` where the official code draws it
with seed 111, and the official code reports AUPRO as 0 (its commented-out ``cal_pro_score`` uses 200 thresholds;
anomalib's AUPRO uses the exact curve).

The deployed model needs no test-set statistics: its ``pred_score`` fuses the two raw scores per image, and
anomalib's post-processor normalises with validation statistics. This protocol exists only to compare with the
paper. Exit status 0; arguments that cannot work (a missing category folder) exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from anomalib.data.datasets.image import mvtecad, visa
from anomalib.metrics import AUPR, AUPRO, AUROC
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF  # noqa: N812
from tqdm import tqdm

from anomalib_bayes_pfl import defaults
from anomalib_bayes_pfl.anomaly_map import ScoreParts
from anomalib_bayes_pfl.checkpoints import load_prompt_weights
from anomalib_bayes_pfl.torch_model import BayesPFLModel

DATASETS = {
    "mvtec": (mvtecad.CATEGORIES, mvtecad.IMG_EXTENSIONS),
    "visa": (visa.CATEGORIES, visa.EXTENSIONS),
}
"""Categories and image extensions of each dataset, as anomalib reads them."""

PAPER_RESULTS = {
    "mvtec": {"image_AUROC": 92.3, "image_AP": 96.7, "pixel_AUROC": 91.8, "pixel_AUPRO": 87.4},
    "visa": {"image_AUROC": 87.0, "image_AP": 89.2, "pixel_AUROC": 95.6, "pixel_AUPRO": 88.9},
}
"""Category means of the paper's Table 1 (%), zero-shot (MVTec AD tested with the VisA-trained head, VisA with the
MVTec-trained one). Read second-hand from follow-up papers that cite the table; check against the PDF."""

METRICS = ("image_AUROC", "image_AP", "pixel_AUROC", "pixel_AUPRO")
"""Columns of the report, in %."""

SMALL_DEFECT_CATEGORIES = frozenset(
    {"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"}
)
"""Categories whose map score averages only ``SMALL_DEFECT_TOP_K`` pixels (reference ``calcuate_metric_pixel``)."""

SMALL_DEFECT_TOP_K = 20
"""Pixels averaged into the map score of small-defect categories."""

FUSION_ALPHA = 0.5
"""Weight of the normalised text score in the fused image score (the reference's ``alpha``)."""

MIN_MAX_EPSILON = 1e-8
"""Added to the reference's min-max denominator, so a constant score maps to 0 instead of NaN."""

AUPRO_FPR_LIMIT = 0.3
"""False-positive-rate limit of AUPRO (the reference's ``expect_fpr``)."""


class CategoryScores(NamedTuple):
    """Everything scored on one category's test set, with field names anomalib's metrics read."""

    pred_score: torch.Tensor
    """Fused image scores ``(N,)``."""

    gt_label: torch.Tensor
    """Image labels ``(N,)``: 1 anomalous."""

    anomaly_map: torch.Tensor
    """Smoothed maps ``(N, H, W)``."""

    gt_mask: torch.Tensor
    """Binary masks ``(N, H, W)``."""


# -- official pre-processing ----------------------------------------------------------------------------------------


def _unit_float(image: Image.Image) -> torch.Tensor:
    """``(C, H, W)`` in [0, 1], divided by 255 as torchvision's ``ToTensor`` (bit for bit; ``to_dtype`` multiplies)."""
    return TF.pil_to_tensor(image).float().div(255)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Image ``(3, size, size)`` as the reference's ``_transform_test``: PIL bicubic resize of the uint8 image
    (before the RGB conversion, as there), scaling to [0, 1], CLIP normalisation."""
    with Image.open(path) as image:
        resized = image.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    return TF.normalize(_unit_float(resized), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


def load_mask(path: str | Path | None, size: int) -> torch.Tensor:
    """Mask ``(size, size)`` as the reference: binarised (> 0) as a 0/255 image, PIL bilinear resize, > 0.5.

    ``None`` (a normal image) gives an empty mask.
    """
    if path is None:
        return torch.zeros(size, size, dtype=torch.bool)
    with Image.open(path) as mask:
        binary = mask.convert("L").point(lambda value: 255 if value > 0 else 0)
    resized = binary.resize((size, size), Image.Resampling.BILINEAR)
    return _unit_float(resized)[0] > 0.5


class CategoryTestSet(Dataset):
    """One category's test split (found by anomalib's MVTec-layout reader), loaded as the reference loads it."""

    def __init__(self, category_root: Path, extensions: Sequence[str], size: int) -> None:
        self.samples = mvtecad.make_mvtec_ad_dataset(category_root, split="test", extensions=extensions)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.samples.iloc[index]
        mask_path = sample.mask_path if sample.label_index == 1 else None
        return load_image(sample.image_path, self.size), load_mask(mask_path, self.size), int(sample.label_index)


# -- scoring --------------------------------------------------------------------------------------------------------


def min_max(scores: torch.Tensor) -> torch.Tensor:
    """Scale scores to [0, 1] over the test set: ``(s - min) / (max - min + 1e-8)``."""
    return (scores - scores.min()) / (scores.max() - scores.min() + MIN_MAX_EPSILON)


def fuse_scores(text_scores: torch.Tensor, map_scores: torch.Tensor, alpha: float = FUSION_ALPHA) -> torch.Tensor:
    """The reference's image score: each half min-max normalised over the test set, then mixed.

    Example:
        >>> fuse_scores(torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.1, 0.3, 0.2])).tolist()
        [0.0, 0.75, 0.75]
    """
    return alpha * min_max(text_scores) + (1 - alpha) * min_max(map_scores)


def top_k_for(category: str) -> int:
    """Pixels averaged into the map score of ``category``."""
    return SMALL_DEFECT_TOP_K if category in SMALL_DEFECT_CATEGORIES else defaults.TOP_K


@contextlib.contextmanager
def capture_score_parts(model: BayesPFLModel, top_k: int) -> Iterator[list[ScoreParts]]:
    """Append, at every forward of ``model``, the unfused scores and unsmoothed map of its anomaly-map step.

    The model's own forward stays the one inference path; the hook only re-reads its last step with ``top_k``.
    """
    parts: list[ScoreParts] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        del output
        parts.append(module.score_parts(*args, **kwargs, top_k=top_k))

    handle = model.anomaly_map.register_forward_hook(hook, with_kwargs=True)
    try:
        yield parts
    finally:
        handle.remove()


@torch.inference_mode()
def score_category(model: BayesPFLModel, category: str, loader: DataLoader, sigma: float) -> CategoryScores:
    """Score one category's test set and fuse the image scores over it."""
    device = next(model.parameters()).device
    text, map_score, maps, masks, labels = [], [], [], [], []
    with capture_score_parts(model, top_k_for(category)) as parts:
        for images, batch_masks, batch_labels in tqdm(loader, desc=category, unit="batch"):
            model(images.to(device), class_names=[category] * len(images))
            part = parts.pop()  # one batch at a time: the raw maps are not kept
            raw = part.raw_map.float().cpu().numpy()
            smoothed = gaussian_filter(raw, sigma=sigma, axes=(1, 2)) if sigma > 0 else raw
            text.append(part.text_score.float().cpu())
            map_score.append(part.map_score.float().cpu())
            maps.append(torch.from_numpy(smoothed))
            masks.append(batch_masks)
            labels.append(batch_labels)
    fused = fuse_scores(torch.cat(text), torch.cat(map_score))
    return CategoryScores(fused, torch.cat(labels), torch.cat(maps), torch.cat(masks))


def category_metrics(scores: CategoryScores) -> dict[str, float]:
    """Image AUROC and AP, pixel AUROC and AUPRO, in %."""
    metrics = {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "image_AP": AUPR(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=AUPRO_FPR_LIMIT),
    }
    results = {}
    for name, metric in metrics.items():
        metric.update(scores)
        results[name] = 100 * float(metric.compute())
    return results


# -- command line ---------------------------------------------------------------------------------------------------


def find_categories(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The folder holding the category folders (for VisA, ``visa_pytorch`` under ``--root`` if there) and the
    categories to evaluate, refusing to start when one has no test folder."""
    prepared = args.root / "visa_pytorch"
    root = prepared if args.dataset == "visa" and prepared.is_dir() else args.root
    categories = args.categories or list(DATASETS[args.dataset][0])
    missing = [category for category in categories if not (root / category / "test").is_dir()]
    if missing:
        msg = (
            f"No test folder for {missing} under {root}. Give --root the folder holding the {args.dataset} category "
            "folders (MVTec AD layout; for VisA the 'visa_pytorch' folder prepared by anomalib's Visa datamodule), "
            "or pick categories with --categories."
        )
        raise ValueError(msg)
    return root, categories


def build_model(args: argparse.Namespace) -> BayesPFLModel:
    """The torch model with the authors' (or our) head; smoothing is left to SciPy, as in the reference."""
    model = BayesPFLModel(
        backbone=args.backbone,
        pretrained=args.pretrained,
        image_size=args.image_size,
        feature_layers=args.feature_layers,
        activation=args.activation,
        num_samples=args.num_samples,
        eval_seed=args.eval_seed,
        gaussian_sigma=0.0,
    )
    load_prompt_weights(model, args.prompt_weights)
    return model.to(args.device).eval()


def evaluate(model: BayesPFLModel, root: Path, categories: Sequence[str], args: argparse.Namespace) -> pd.DataFrame:
    """Per-category metrics, their mean and the paper's values, in %."""
    extensions = DATASETS[args.dataset][1]
    rows = {}
    for category in categories:
        images = CategoryTestSet(root / category, extensions, args.image_size)
        loader = DataLoader(images, batch_size=args.batch_size, num_workers=args.num_workers)
        rows[category] = category_metrics(score_category(model, category, loader, args.sigma))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRICS))
    table.loc["mean"] = table.mean()
    table.loc["paper"] = PAPER_RESULTS[args.dataset]
    table.index.name = "category"
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--root", type=Path, required=True, help="folder holding the category folders")
    parser.add_argument("--prompt-weights", required=True, help="trained head (the authors' .pth or ours)")
    parser.add_argument("--pretrained", default=defaults.PRETRAINED, help="CLIP weights: open_clip tag or file")
    parser.add_argument("--backbone", default=defaults.BACKBONE, help="open_clip model name or config JSON")
    parser.add_argument("--image-size", type=int, default=defaults.IMAGE_SIZE)
    parser.add_argument("--feature-layers", type=int, nargs="+", default=list(defaults.FEATURE_LAYERS))
    parser.add_argument("--activation", default="gelu", help="'gelu' for the authors' heads (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=defaults.NUM_SAMPLES, help="R (default: %(default)s)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the fixed evaluation noise")
    parser.add_argument("--sigma", type=float, default=defaults.GAUSSIAN_SIGMA, help="map smoothing in pixels")
    parser.add_argument("--categories", nargs="+", help="evaluate only these categories (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="CSV file (default: paper_protocol_<dataset>.csv)")
    return parser


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the protocol, print the table and write the CSV; returns the table."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        root, categories = find_categories(args)
        model = build_model(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    table = evaluate(model, root, categories, args)
    output = args.output or Path(f"paper_protocol_{args.dataset}.csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, float_format="%.2f")
    print(table.to_string(float_format="{:.1f}".format))
    print(f"\nCSV: {output}")
    return table


if __name__ == "__main__":
    main()
