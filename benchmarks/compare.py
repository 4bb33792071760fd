# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Compare BayesPFL with other anomalib models through ``anomalib benchmark``, failing loudly.

anomalib's benchmark pipeline exits 0 even when jobs fail, and crashes when the models of one grid have different
``init_args`` keys. This command runs one benchmark per config (one model each, any data grid), checks that every
job of the grid produced a result row, and merges the rows into one CSV and one plot.

Usage:
    python benchmarks/compare.py configs/benchmark/*.yaml --output results/compare
        [--winclip-pretrained none|TAG|FILE]

``--winclip-pretrained`` sets the weights anomalib's WinCLIP loads (``none``: random weights, for offline runs).
Exit status 1, with the failed config named, when any job failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
from argparse import Namespace
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import yaml

from anomalib_bayes_pfl.plugin import register_entry_points

logger = logging.getLogger(__name__)

RUNS = Path("runs") / "benchmark"
"""Where anomalib's benchmark writes, relative to the working directory."""

METRICS = ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_F1Max", "pixel_AUPRO")
"""Metric columns plotted when present."""


class BenchmarkFailedError(RuntimeError):
    """Raised when a benchmark config did not produce a result for every job of its grid."""


@contextlib.contextmanager
def _zero_shot_benchmark_fix() -> Iterator[None]:
    """Work around anomalib 2.7's benchmark job calling ``engine.fit(model, datamodule)`` positionally.

    The datamodule lands in ``train_dataloaders``; one-class models train anyway (Lightning accepts a datamodule
    there), but zero-shot models (WinCLIP, BayesPFL with prompt weights) only validate, with no data, and fail
    with "`val_dataloader` must be implemented". The job's engine gets the datamodule where it belongs.
    """
    from anomalib.engine import Engine
    from anomalib.pipelines.benchmark import job
    from lightning.pytorch import LightningDataModule

    class DatamoduleEngine(Engine):
        def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None) -> None:  # noqa: ANN001
            if datamodule is None and isinstance(train_dataloaders, LightningDataModule):
                train_dataloaders, datamodule = None, train_dataloaders
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path)

    job.Engine = DatamoduleEngine
    try:
        yield
    finally:
        job.Engine = Engine


def expected_jobs(config: dict) -> int:
    """Number of jobs a benchmark config expands to (accelerators x grid combinations)."""
    from anomalib.pipelines.components.utils import get_iterator_from_grid_dict

    accelerators = config.get("accelerator", ["cpu"])
    accelerators = accelerators if isinstance(accelerators, list) else [accelerators]
    return len(accelerators) * sum(1 for _ in get_iterator_from_grid_dict(config["benchmark"]))


def run_config(config_path: Path, work_dir: Path) -> pd.DataFrame:
    """Run one benchmark config; move anomalib's result folder to ``work_dir``; return the results or raise.

    anomalib writes ``runs/benchmark/<time stamp>/results.csv`` under the working directory (relative data paths in
    configs are kept working); the folder is moved at once, so a next run in the same second cannot overwrite it.
    """
    from anomalib.pipelines import Benchmark

    config = yaml.safe_load(config_path.read_text())
    before = set(RUNS.glob("*/results.csv"))
    with _zero_shot_benchmark_fix():
        Benchmark().run(Namespace(config=str(config_path)))
    work_dir.mkdir(parents=True, exist_ok=True)
    result_files = []
    for new in sorted(set(RUNS.glob("*/results.csv")) - before):
        result_files.append(work_dir / new.parent.name / new.name)
        shutil.move(new.parent, work_dir / new.parent.name)
    results = pd.concat([pd.read_csv(path) for path in result_files]) if result_files else pd.DataFrame()
    expected = expected_jobs(config)
    if len(results) < expected:
        msg = (
            f"{config_path}: {len(results)} of {expected} benchmark jobs produced results. "
            "See runs/pipeline.log for the errors."
        )
        raise BenchmarkFailedError(msg)
    return results.assign(config=config_path.stem)


def _model_column(results: pd.DataFrame) -> pd.Series:
    """The model name of each row, from whichever config key the benchmark flattened it into."""
    for column in ("model.class_path", "model"):
        if column in results:
            return results[column].astype(str).str.rsplit(".", n=1).str[-1]
    return results["config"]


def plot(results: pd.DataFrame, path: Path) -> Path:
    """Bar chart of the metrics, one group per category, one bar per model."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metric for metric in METRICS if metric in results]
    category = results.get("data.init_args.category", pd.Series(["all"] * len(results), index=results.index))
    table = results.assign(model=_model_column(results), category=category.astype(str))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        table.pivot_table(index="category", columns="model", values=metric).plot.bar(ax=axis, rot=0, legend=False)
        axis.set_title(metric)
        axis.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def compare(configs: Sequence[Path], output: Path, winclip_pretrained: str | None = "keep") -> pd.DataFrame:
    """Run every config, merge the results into ``output/results.csv`` and plot them to ``output/results.png``.

    Raises:
        BenchmarkFailedError: If any config lost a job; the results of the configs that ran are still written.
    """
    register_entry_points()
    if winclip_pretrained != "keep":
        from anomalib.models.image.winclip import torch_model as winclip

        winclip.PRETRAINED = None if winclip_pretrained in (None, "none") else winclip_pretrained
    output.mkdir(parents=True, exist_ok=True)
    frames, failures = [], []
    for config in configs:
        try:
            frames.append(run_config(Path(config), output / "work" / Path(config).stem))
        except BenchmarkFailedError as error:
            failures.append(str(error))
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not results.empty:
        results.to_csv(output / "results.csv", index=False)
        plot(results, output / "results.png")
    if failures:
        raise BenchmarkFailedError("\n".join(failures))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 when any benchmark job failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="benchmark configs, one model each")
    parser.add_argument("--output", type=Path, default=Path("results/compare"))
    parser.add_argument("--winclip-pretrained", default="keep", help="none (random), an open_clip tag or a file")
    args = parser.parse_args(argv)
    try:
        results = compare(args.configs, args.output, args.winclip_pretrained)
    except BenchmarkFailedError as error:
        logger.error("Benchmark failed:\n%s", error)
        print(f"Benchmark failed:\n{error}")
        return 1
    print(results.to_string(index=False))
    print(f"\nMerged results: {args.output / 'results.csv'}; plot: {args.output / 'results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
