"""One source of class names for every phase (explicit > AuxiliaryTrain's folders > datamodule category > stored),
and heads that name the settings they need, first, through the stock CLI."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from anomalib.data import Folder
from engines import cpu_engine

from anomalib_bayes_pfl import BayesPFL, SafePredictFolder, save_prompt_weights
from anomalib_bayes_pfl.demo import SOURCE_CATEGORIES, TARGET_CATEGORIES, demo_datamodule
from anomalib_bayes_pfl.torch_model import BayesPFLModel

pytestmark = pytest.mark.integration


@pytest.fixture
def prompt_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The class name each scored image was prompted with, in the order scored."""
    names: list[str] = []
    forward = BayesPFLModel.forward

    def recording(self: BayesPFLModel, images: torch.Tensor, class_names: list[str] | None = None, **kwargs: object):
        names.extend(class_names or [self.class_name] * len(images))
        return forward(self, images, class_names, **kwargs)

    monkeypatch.setattr(BayesPFLModel, "forward", recording)
    return names


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory, tiny_kwargs: dict) -> Path:
    """Prompt weights of the tiny model, stored with the class name ``cable``."""
    model = BayesPFLModel(**tiny_kwargs)
    model.set_class_name("cable")
    return save_prompt_weights(model, tmp_path_factory.mktemp("head") / "head.pt")


def test_stock_folder_root_is_not_a_category(
    synthetic_root: Path, tiny_kwargs: dict, head: Path, prompt_names: list[str], tmp_path: Path
) -> None:
    """A stock Folder (no category) prompts with the model's name in validation and test, as predict and export do.

    The dataset's root folder (here ``ring``, laid out ``<root>/test/<defect>/``) must not become the prompt.
    """
    root = synthetic_root / "ring"
    datamodule = Folder(
        name="line3_2024", root=root, normal_dir="test/good", abnormal_dir=["test/spot", "test/cut"], num_workers=0
    )
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head))
    engine = cpu_engine(tmp_path)
    engine.validate(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    assert prompt_names
    assert set(prompt_names) == {"cable"} == {model.model.class_name}


def test_auxiliary_train_names_each_image(
    synthetic_root: Path, tiny_kwargs: dict, head: Path, prompt_names: list[str], tmp_path: Path
) -> None:
    """AuxiliaryTrain's layout names categories: each image (source validation, target test) gets its own."""
    model = BayesPFL(**tiny_kwargs, prompt_weights=str(head))
    cpu_engine(tmp_path).test(model, datamodule=demo_datamodule(synthetic_root))
    assert set(TARGET_CATEGORIES) <= set(prompt_names) <= {*SOURCE_CATEGORIES, *TARGET_CATEGORIES}


def test_predict_category_wins_over_checkpoint(
    synthetic_root: Path, tiny_kwargs: dict, prompt_names: list[str], tmp_path: Path
) -> None:
    """``--ckpt_path`` restores after setup: the datamodule's category (and an explicit name) still wins."""
    images = synthetic_root / "ring" / "test" / "good"
    trained = BayesPFL(**tiny_kwargs)
    trained.model.set_class_name("cable")
    engine = cpu_engine(tmp_path / "save")
    engine.predict(trained, datamodule=SafePredictFolder(images))
    checkpoint = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    prompt_names.clear()
    model = BayesPFL(**tiny_kwargs)
    bottles = SafePredictFolder(images, category="bottle")
    cpu_engine(tmp_path / "category").predict(model, datamodule=bottles, ckpt_path=checkpoint)
    assert set(prompt_names) == {"bottle"} == {model.model.class_name}
    prompt_names.clear()
    model = BayesPFL(**tiny_kwargs, class_name="screw")
    cpu_engine(tmp_path / "explicit").predict(model, datamodule=bottles, ckpt_path=checkpoint)
    assert set(prompt_names) == {"screw"} == {model.model.class_name}
    prompt_names.clear()
    model = BayesPFL(**tiny_kwargs)
    cpu_engine(tmp_path / "stored").predict(model, datamodule=SafePredictFolder(images), ckpt_path=checkpoint)
    assert set(prompt_names) == {"cable"}


def test_cli_names_the_head_settings_first(head: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """Case 9: `anomalib predict` with a head and the paper defaults says first, plainly, which settings to pass."""
    anomalib = str(Path(sys.executable).with_name("anomalib"))
    command = [
        anomalib, "predict", "--model", "BayesPFL", "--model.backbone", "bayes-pfl-tiny", "--model.pretrained", "null",
        "--model.prompt_weights", str(head), "--data", "anomalib_bayes_pfl.SafePredictFolder",
        "--data.path", str(synthetic_root / "ring" / "test" / "good"), "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    environment = os.environ | {"PYTHONWARNINGS": "ignore", "COLUMNS": "400"}
    failed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    fix = '--model.image_size 64 --model.feature_layers "[1, 2, 3, 4]" --model.num_samples 3'
    assert fix in output
    assert output.index("was trained with other settings") < output.index("Does not validate against any")
    fixed = command + shlex.split(fix)
    completed = subprocess.run(fixed, capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
