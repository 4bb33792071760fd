# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Offline demo: train Bayes-PFL on some generated categories and test it zero-shot on others.

Runs with no network and no downloaded weights: it generates a small MVTec-layout dataset, builds the packaged
tiny CLIP architecture with random (seeded) weights and saves them as a local weights file, trains both stages on
the source categories' anomalies, tests on unseen target categories, prints anomalib's metric table and writes
anomalib's visualisations. Random CLIP weights carry no semantics, so the numbers show that the pipeline works,
not what real CLIP weights achieve.

Usage:
    python -m anomalib_bayes_pfl.demo [--output demo_output] [--epochs 12]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from .backbone import ClipBackbone
from .checkpoints import save_prompt_weights
from .data import AuxiliaryTrain, generate_synthetic_dataset
from .lightning_model import BayesPFL

SOURCE_CATEGORIES = ("disc", "square", "stripes", "checker")
TARGET_CATEGORIES = ("ring", "grain")
TINY_BACKBONE = "bayes-pfl-tiny"
IMAGE_SIZE = 64
TINY_MODEL_ARGS = {
    "backbone": TINY_BACKBONE,
    "pretrained": None,
    "image_size": IMAGE_SIZE,
    "feature_layers": (1, 2, 3, 4),
    "num_samples": 3,
    "gaussian_sigma": 1.0,
    "top_k": 20,
}
"""A tiny Bayes-PFL: 4-block ViT, 8 x 8 patch grid, 3 samples; ``pretrained=None`` means random weights."""


def save_random_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Save seeded random weights of the tiny CLIP, so separately built models share one backbone."""
    if not path.is_file():
        torch.manual_seed(seed)
        torch.save(ClipBackbone(TINY_BACKBONE, None, IMAGE_SIZE, (1,)).clip.state_dict(), path)
    return path


def demo_datamodule(data_root: Path, seed: int = 0, **overrides: object) -> AuxiliaryTrain:
    """Train on the source categories of the generated data, test on the target ones."""
    arguments = {
        "target_root": data_root,
        "target_categories": TARGET_CATEGORIES,
        "train_batch_size": 8,
        "eval_batch_size": 16,
        "num_workers": 0,
        "val_ratio": 0.25,
        "seed": seed,
    }
    return AuxiliaryTrain(data_root, SOURCE_CATEGORIES, **(arguments | overrides))


def run(output: Path, epochs: int = 12, seed: int = 0) -> dict[str, float]:
    """Generate data, train, test; return the test metrics. Files go under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    data_root = generate_synthetic_dataset(output / "data", image_size=IMAGE_SIZE, seed=seed)
    clip_weights = save_random_tiny_clip(output / "clip-tiny-random.pt", seed)
    seed_everything(seed)
    model = BayesPFL(
        **(TINY_MODEL_ARGS | {"pretrained": str(clip_weights)}),
        lr=1e-3,
        stage1_max_epochs=max(epochs - 2, 1),
    )
    datamodule = demo_datamodule(data_root, seed)
    engine = Engine(max_epochs=epochs, default_root_dir=output / "results", accelerator="cpu", devices=1, logger=False)
    engine.fit(model, datamodule=datamodule)
    results = engine.test(model, datamodule=datamodule)[0]
    head = save_prompt_weights(model.model, output / "bayes_pfl_head.pt")
    print(f"\nPrompt weights: {head}\nCLIP weights (random, tiny): {clip_weights}")
    print(f"Visualisations: {output / 'results'} (images/<category>/<defect>/ under the run folder)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where data and results go")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (both stages)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    results = run(args.output, args.epochs, args.seed)
    print("\n".join(f"{name:>12}: {value:.3f}" for name, value in sorted(results.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
