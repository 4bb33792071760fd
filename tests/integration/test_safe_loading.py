"""Loading untrusted files fails fast with short messages that name the file and the fix.

Covers crafted extra state (a memoised nested list that explodes when turned into text), TorchScript archives
(gated on ``TRUST_REMOTE_CODE`` like anomalib's pickled exports, with a one-time conversion to a safe file), files
that are not BayesPFL checkpoints (empty, text, a tensor, a list, PatchCore's checkpoint), broken auxiliary data
layouts, out-of-range seeds and non-finite or non-integer scoring settings.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from anomalib_bayes_pfl import BayesPFL, load_prompt_weights, save_prompt_weights
from anomalib_bayes_pfl.anomaly_map import AnomalyMapGenerator
from anomalib_bayes_pfl.backbone import ClipBackbone, WeightsUnavailableError
from anomalib_bayes_pfl.convert_clip import main as convert_clip
from anomalib_bayes_pfl.data import AuxiliaryTrain
from anomalib_bayes_pfl.safe_loading import (
    MAX_CLASS_NAME_LENGTH,
    _quote,
    check_checkpoint_file,
    guard_checkpoint_loading,
    validate_extra_state,
    validate_stage_switch_state,
)
from anomalib_bayes_pfl.torch_model import BayesPFLModel

pytestmark = pytest.mark.integration

FAST_SECONDS = 5.0
"""A crafted file must be refused within this time (the unchecked path took 124 s)."""

SHORT_MESSAGE = 1000
"""A refusal fits in this many characters (the unchecked path printed 37.7 M)."""


def _memo_bomb(depth: int = 25) -> list:
    """A list nested ``depth`` times, sharing each level: pickle memoises it (tiny), ``str`` is 2**depth long."""
    value: list = []
    for _ in range(depth):
        value = [value, value]
    return value


def _save_lightning_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model``'s checkpoint exactly as Lightning does (hooks included), without training."""
    warnings.filterwarnings("ignore")
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def model_kwargs(tiny_kwargs: dict, tiny_clip_weights: str) -> dict:
    return tiny_kwargs | {"pretrained": tiny_clip_weights}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, model_kwargs: dict) -> dict[str, Path]:
    """Our own head and checkpoint, and the wrong files users pass in their place."""
    from anomalib.models import Patchcore  # noqa: PLC0415 - only this fixture needs it

    root = tmp_path_factory.mktemp("files")
    model = BayesPFL(**model_kwargs)
    paths = {
        "head": save_prompt_weights(model.model, root / "head.pt"),
        "ckpt": _save_lightning_checkpoint(model, root / "bayes_pfl.ckpt"),
        "patchcore": _save_lightning_checkpoint(
            Patchcore(backbone="resnet18", layers=("layer2",), pre_trained=False), root / "patchcore.ckpt"
        ),
        "empty": root / "empty.ckpt",
        "text": root / "text.ckpt",
        "tensor": root / "tensor.pt",
        "list": root / "list.pt",
        "zip": root / "other.zip",
        "clip": root / "clip.pt",
    }
    paths["empty"].touch()
    paths["text"].write_text("epoch=3 step=100\n")
    torch.save(torch.zeros(3), paths["tensor"])
    torch.save([torch.zeros(3)], paths["list"])
    with zipfile.ZipFile(paths["zip"], "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    torch.save(model.model.backbone.clip.state_dict(), paths["clip"])
    return paths


# ------------------------------------------------------------------------------ case 9: crafted extra state


class TestCraftedExtraState:
    """The head's extra state (stage, class name) is type- and size-checked before anything uses it."""

    @staticmethod
    @pytest.mark.parametrize("kind", ["head", "ckpt"])
    def test_memo_bomb_class_name_is_refused_fast(
        tmp_path: Path, files: dict[str, Path], model_kwargs: dict, kind: str
    ) -> None:
        """A 2**25-element class name is refused in seconds with a short message naming the file."""
        if kind == "head":
            content = torch.load(files["head"], weights_only=True)
            content["_extra_state"] = {"stage": 2, "class_name": _memo_bomb()}
        else:
            content = torch.load(files["ckpt"], weights_only=True)
            content["state_dict"]["model._extra_state"] = {"stage": 2, "class_name": _memo_bomb()}
        path = tmp_path / f"crafted.{'pt' if kind == 'head' else 'ckpt'}"
        torch.save(content, path)
        assert path.stat().st_size < 2_000_000
        model = BayesPFLModel(**model_kwargs)
        start = time.perf_counter()
        with pytest.raises(ValueError, match="class_name must be a string") as info:
            load_prompt_weights(model, path)
        assert time.perf_counter() - start < FAST_SECONDS
        assert len(str(info.value)) < SHORT_MESSAGE
        assert str(path) in str(info.value)
        start = time.perf_counter()
        with pytest.raises(ValueError, match="class_name must be a string") as info:
            BayesPFL(**model_kwargs, prompt_weights=str(path))
        assert time.perf_counter() - start < FAST_SECONDS
        assert len(str(info.value)) < SHORT_MESSAGE

    @staticmethod
    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            ([1, "bottle"], "must be a dict"),
            ({"stage": 1}, "missing 'class_name'"),
            ({"stage": 1, "class_name": "bottle", "code": "x"}, "unexpected 'code'"),
            ({"stage": 3, "class_name": "bottle"}, "stage must be 1 or 2"),
            ({"stage": True, "class_name": "bottle"}, "stage must be 1 or 2"),
            ({"stage": "2", "class_name": "bottle"}, "stage must be 1 or 2"),
            ({"stage": 2.0, "class_name": "bottle"}, "stage must be 1 or 2"),
            ({"stage": 10**5000, "class_name": "bottle"}, "stage must be 1 or 2"),
            ({"stage": 1, "class_name": 7}, "class_name must be a string"),
            ({"stage": 1, "class_name": "x" * (MAX_CLASS_NAME_LENGTH + 1)}, "at most 256 characters"),
            ({"stage": 1, "class_name": _memo_bomb()}, "class_name must be a string"),
            ({"stage": _memo_bomb(), "class_name": "bottle"}, "stage must be 1 or 2"),
        ],
    )
    def test_invalid_extra_state(state: object, expected: str) -> None:
        """Each wrong type or size is named, briefly."""
        start = time.perf_counter()
        with pytest.raises(ValueError, match=expected) as info:
            validate_extra_state(state)
        assert time.perf_counter() - start < 1.0
        assert len(str(info.value)) < SHORT_MESSAGE

    @staticmethod
    def test_set_extra_state_validates(model_kwargs: dict) -> None:
        """Lightning's checkpoint restore goes through ``set_extra_state``: it checks too and changes nothing."""
        model = BayesPFLModel(**model_kwargs)
        with pytest.raises(ValueError, match="class_name must be a string"):
            model.set_extra_state({"stage": 2, "class_name": _memo_bomb()})
        assert (model.stage, model.class_name) == (1, "object")
        model.set_extra_state({"stage": 2, "class_name": "metal_nut"})
        assert (model.stage, model.class_name) == (2, "metal_nut")

    @staticmethod
    def test_quote_is_bounded() -> None:
        """Quoting never renders a whole nested structure, a long string or a huge number."""
        start = time.perf_counter()
        quoted = [_quote(value) for value in (_memo_bomb(40), "y" * 10**6, 10**5000, torch.zeros(4, 5), b"x" * 10**6)]
        assert time.perf_counter() - start < 0.5
        assert all(len(text) <= 200 for text in quoted)
        assert quoted[0] == "a list of 2 items"
        assert quoted[3] == "a tensor of shape (4, 5), dtype torch.float32"
        assert _quote("bottle") == "'bottle'"
        assert _quote(2) == "2"


class TestStageSwitchState:
    """``validate_stage_switch_state`` checks the ``bayes_pfl_stage_tracker`` entry of a Lightning checkpoint."""

    @staticmethod
    def test_valid_states(model_kwargs: dict) -> None:
        from anomalib_bayes_pfl.checkpoints import head_state_dict  # noqa: PLC0415

        head = head_state_dict(BayesPFLModel(**model_kwargs))
        assert validate_stage_switch_state({"best": None, "stale": 0, "best_head": None}) == {
            "best": None,
            "stale": 0,
            "best_head": None,
        }
        state = validate_stage_switch_state({"best": 0.5, "stale": 3, "best_head": head})
        assert state["best"] == 0.5 and state["stale"] == 3 and state["best_head"].keys() == head.keys()
        assert validate_stage_switch_state({"best": 1, "stale": 0, "best_head": None})["best"] == 1.0
        assert math.isnan(validate_stage_switch_state({"best": float("nan"), "stale": 1, "best_head": None})["best"])

    @staticmethod
    @pytest.mark.parametrize(
        ("state", "expected"),
        [
            ("best", "must be a dict"),
            ({"best": None, "stale": 0}, "missing 'best_head'"),
            ({"best": None, "stale": 0, "best_head": None, "x": 1}, "unexpected 'x'"),
            ({"best": "0.5", "stale": 0, "best_head": None}, "best must be a number or None"),
            ({"best": True, "stale": 0, "best_head": None}, "best must be a number or None"),
            ({"best": None, "stale": -1, "best_head": None}, "stale must be an integer >= 0"),
            ({"best": None, "stale": 1.5, "best_head": None}, "stale must be an integer >= 0"),
            ({"best": None, "stale": 0, "best_head": [torch.zeros(1)]}, "best_head must be a dict"),
            ({"best": None, "stale": 0, "best_head": {"a": [1]}}, "best_head\\['a'\\] must be a tensor"),
            ({"best": None, "stale": 0, "best_head": {1: torch.zeros(1)}}, "keys must be strings"),
            (
                {"best": None, "stale": 0, "best_head": {"_extra_state": {"stage": 1, "class_name": _memo_bomb()}}},
                "class_name must be a string",
            ),
        ],
    )
    def test_invalid_states(state: object, expected: str) -> None:
        with pytest.raises(ValueError, match=expected) as info:
            validate_stage_switch_state(state)
        assert "bayes_pfl_stage_tracker" in str(info.value)
        assert len(str(info.value)) < SHORT_MESSAGE


# ------------------------------------------------------------------------------ case 10: TorchScript archives


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An OpenAI-style TorchScript archive of the tiny CLIP (with OpenAI's ``input_resolution`` entry), and its
    weights."""
    source = ClipBackbone("bayes-pfl-tiny", None, 64, (1,), activation="quick_gelu").clip
    source.register_buffer("input_resolution", torch.tensor(64))
    path = tmp_path_factory.mktemp("archive") / "tiny-openai.pt"
    torch.jit.save(torch.jit.script(source), str(path))
    return path, {key: value.clone() for key, value in source.state_dict().items()}


class TestTorchScriptArchives:
    """Archives run code when loaded: only with TRUST_REMOTE_CODE=1, or after a one-time conversion."""

    @staticmethod
    @pytest.mark.parametrize("value", [None, "0", "false", "yes"])
    def test_refused_without_opt_in(
        archive: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        """Without the opt-in the archive is never opened by TorchScript, and the error says what to do."""
        if value is None:
            monkeypatch.delenv("TRUST_REMOTE_CODE", raising=False)
        else:
            monkeypatch.setenv("TRUST_REMOTE_CODE", value)

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("torch.jit.load ran without the opt-in")

        monkeypatch.setattr(torch.jit, "load", forbidden)
        with pytest.raises(WeightsUnavailableError, match="TRUST_REMOTE_CODE=1") as info:
            ClipBackbone("bayes-pfl-tiny", str(archive[0]), image_size=64, feature_layers=(1,))
        message = str(info.value)
        assert str(archive[0]) in message
        assert "python -m anomalib_bayes_pfl.convert_clip" in message

    @staticmethod
    @pytest.mark.parametrize("value", ["1", "true", "True"])
    def test_loads_with_opt_in(archive: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        monkeypatch.setenv("TRUST_REMOTE_CODE", value)
        loaded = ClipBackbone("bayes-pfl-tiny", str(archive[0]), image_size=64, feature_layers=(1,))
        assert torch.equal(loaded.clip.token_embedding.weight, archive[1]["token_embedding.weight"])

    @staticmethod
    def test_converted_file_loads_without_opt_in(
        archive: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The converted file is a plain state dict: weights_only reads it and the backbone is identical."""
        monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
        from_archive = ClipBackbone("bayes-pfl-tiny", str(archive[0]), image_size=64, feature_layers=(1,))
        monkeypatch.delenv("TRUST_REMOTE_CODE")
        out = tmp_path / "converted" / "tiny-openai-state-dict.pt"
        assert convert_clip([str(archive[0]), str(out)]) == 0
        state_dict = torch.load(out, map_location="cpu", weights_only=True)
        assert all(torch.equal(state_dict[key], value) for key, value in archive[1].items() if key in state_dict)
        converted = ClipBackbone("bayes-pfl-tiny", str(out), image_size=64, feature_layers=(1,))
        expected = from_archive.clip.state_dict()
        assert converted.clip.state_dict().keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in converted.clip.state_dict().items())
        assert type(converted.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"

    @staticmethod
    def test_convert_command_line(archive: tuple[Path, dict], tmp_path: Path) -> None:
        """``python -m anomalib_bayes_pfl.convert_clip ARCHIVE OUT.pt`` is itself the consent: no variable needed."""
        out = tmp_path / "out.pt"
        environment = {key: value for key, value in __import__("os").environ.items() if key != "TRUST_REMOTE_CODE"}
        result = subprocess.run(  # noqa: S603 - our own module
            [sys.executable, "-m", "anomalib_bayes_pfl.convert_clip", str(archive[0]), str(out)],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert str(out) in result.stdout
        assert torch.load(out, weights_only=True).keys() >= {"token_embedding.weight"}

    @staticmethod
    def test_convert_refuses_other_files(files: dict[str, Path], tmp_path: Path, capsys) -> None:
        """A file that is not an archive is named, with why it needs no conversion; nothing is written."""
        out = tmp_path / "out.pt"
        assert convert_clip([str(files["clip"]), str(out)]) == 2
        assert "not a TorchScript archive" in capsys.readouterr().err
        assert convert_clip([str(tmp_path / "missing.pt"), str(out)]) == 2
        assert "not found" in capsys.readouterr().err
        assert not out.exists()


# ------------------------------------------------------------------------------ case 11: wrong files


class TestCheckpointFile:
    """``check_checkpoint_file`` names the file, what it is and what to pass instead."""

    @staticmethod
    def test_own_checkpoint_passes(files: dict[str, Path]) -> None:
        check_checkpoint_file(files["ckpt"])

    @staticmethod
    def test_missing(tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"missing\.ckpt.*not found"):
            check_checkpoint_file(tmp_path / "missing.ckpt")

    @staticmethod
    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("empty", "is empty"),
            ("text", "not a PyTorch checkpoint"),
            ("zip", "not a PyTorch checkpoint"),
            ("tensor", "holds a tensor, not a Lightning checkpoint"),
            ("list", "holds a list, not a Lightning checkpoint"),
            ("head", "prompt weights.*--model.prompt_weights"),
            ("clip", "CLIP weights.*--model.pretrained"),
            ("patchcore", "checkpoint of another anomalib model \\(Patchcore\\), not BayesPFL"),
        ],
    )
    def test_wrong_files(files: dict[str, Path], kind: str, expected: str) -> None:
        with pytest.raises(ValueError, match=expected) as info:
            check_checkpoint_file(files[kind])
        assert str(files[kind]) in str(info.value)
        assert len(str(info.value)) < SHORT_MESSAGE

    @staticmethod
    def test_archive_is_named(archive: tuple[Path, dict], model_kwargs: dict) -> None:
        """A CLIP archive passed as checkpoint or prompt weights is never opened by TorchScript, and is named."""
        with pytest.raises(ValueError, match="TorchScript archive.*--model.pretrained"):
            check_checkpoint_file(archive[0])
        with pytest.raises(ValueError, match="TorchScript archive.*--model.pretrained"):
            load_prompt_weights(BayesPFLModel(**model_kwargs), archive[0])

    @staticmethod
    @pytest.mark.parametrize("where", ["extra_state", "hyper_parameters", "stage_switch", "int_key"])
    def test_crafted_checkpoint(files: dict[str, Path], tmp_path: Path, where: str) -> None:
        """Plain data in our own checkpoint is checked too, fast and briefly (a shared nested list anywhere)."""
        content = torch.load(files["ckpt"], weights_only=True)
        if where == "extra_state":
            content["state_dict"]["model._extra_state"]["class_name"] = _memo_bomb()
        elif where == "hyper_parameters":
            content["hyper_parameters"]["feature_layers"] = _memo_bomb()
        elif where == "stage_switch":
            content["bayes_pfl_stage_tracker"] = {"best": _memo_bomb(), "stale": 0, "best_head": None}
        else:
            content["state_dict"][3] = torch.zeros(1)
        path = tmp_path / "crafted.ckpt"
        torch.save(content, path)
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"crafted\.ckpt is not a usable BayesPFL checkpoint") as info:
            check_checkpoint_file(path)
        assert time.perf_counter() - start < FAST_SECONDS
        assert len(str(info.value)) < SHORT_MESSAGE

    @staticmethod
    def test_engine_ckpt_path_is_checked(
        files: dict[str, Path], tmp_path: Path, model_kwargs: dict, synthetic_root: Path
    ) -> None:
        """Through anomalib's Engine (AnomalibCheckpointIO): a wrong file is named, our checkpoint still restores."""
        from anomalib.engine import Engine  # noqa: PLC0415

        from anomalib_bayes_pfl.data import SafePredictFolder  # noqa: PLC0415

        class Guarded(BayesPFL):
            def setup(self, stage: str) -> None:
                guard_checkpoint_loading(self)
                super().setup(stage)

        warnings.filterwarnings("ignore")
        folder = SafePredictFolder(synthetic_root / "ring" / "test" / "good")
        arguments = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
        with pytest.raises(ValueError, match=r"checkpoint of another anomalib model \(Patchcore\)"):
            Engine(default_root_dir=tmp_path, **arguments).predict(
                Guarded(**model_kwargs), datamodule=folder, ckpt_path=files["patchcore"]
            )
        predictions = Engine(default_root_dir=tmp_path, **arguments).predict(
            Guarded(**model_kwargs), datamodule=folder, ckpt_path=files["ckpt"]
        )
        assert predictions

    @staticmethod
    def test_trainer_ckpt_path_is_checked(files: dict[str, Path], tmp_path: Path) -> None:
        """Installed from ``setup``, the guard checks the file Lightning is about to restore (not only BayesPFL's)."""
        from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: PLC0415

        class Guarded(BoringModel):
            def setup(self, stage: str) -> None:
                guard_checkpoint_loading(self)

        warnings.filterwarnings("ignore")
        trainer = Trainer(
            default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=1
        )
        with pytest.raises(ValueError, match=r"empty\.ckpt is empty"):
            trainer.fit(Guarded(), ckpt_path=files["empty"])
        guard_checkpoint_loading(Guarded())  # a module without trainer: nothing to guard, no error


class TestPromptWeightsFile:
    """``load_prompt_weights`` / ``BayesPFL(prompt_weights=...)`` say what the wrong file is."""

    @staticmethod
    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("tensor", "holds a tensor, not a dict of weights"),
            ("list", "holds a list, not a dict of weights"),
            ("patchcore", "checkpoint of another anomalib model \\(Patchcore\\), not BayesPFL"),
            ("empty", "is empty"),
            ("clip", "CLIP weights.*pretrained"),
        ],
    )
    def test_wrong_files(files: dict[str, Path], model_kwargs: dict, kind: str, expected: str) -> None:
        model = BayesPFLModel(**model_kwargs)
        with pytest.raises(ValueError, match=expected) as info:
            load_prompt_weights(model, files[kind])
        assert str(files[kind]) in str(info.value)
        with pytest.raises(ValueError, match=expected):
            BayesPFL(**model_kwargs, prompt_weights=str(files[kind]))

    @staticmethod
    def test_own_files_still_load(files: dict[str, Path], model_kwargs: dict) -> None:
        for kind in ("head", "ckpt"):
            load_prompt_weights(BayesPFLModel(**model_kwargs), files[kind])

    @staticmethod
    def test_non_string_keys(tmp_path: Path, files: dict[str, Path], model_kwargs: dict) -> None:
        head = torch.load(files["head"], weights_only=True) | {1: torch.zeros(1)}
        torch.save(head, tmp_path / "int-key.pt")
        with pytest.raises(ValueError, match="keys must be strings"):
            load_prompt_weights(BayesPFLModel(**model_kwargs), tmp_path / "int-key.pt")


# ------------------------------------------------------------------------------ case 11: auxiliary data


@pytest.fixture
def one_category(tmp_path: Path, synthetic_root: Path) -> Path:
    """A writable copy of one generated category."""
    shutil.copytree(synthetic_root / "disc", tmp_path / "data" / "disc")
    return tmp_path / "data"


class TestAuxiliaryData:
    @staticmethod
    def test_missing_ground_truth_folder(one_category: Path) -> None:
        shutil.rmtree(one_category / "disc" / "ground_truth")
        datamodule = AuxiliaryTrain(one_category, ["disc"], num_workers=0)
        with pytest.raises(FileNotFoundError, match=r"no ground_truth folder.*disc[/\\]ground_truth") as info:
            datamodule.setup()
        assert "Must have equal len" not in str(info.value)

    @staticmethod
    def test_one_mask_missing(one_category: Path) -> None:
        defect = sorted(path for path in (one_category / "disc" / "ground_truth").iterdir())[0]
        mask = sorted(defect.iterdir())[-1]
        mask.unlink()
        image = one_category / "disc" / "test" / defect.name / mask.name.replace("_mask", "")
        datamodule = AuxiliaryTrain(one_category, ["disc"], num_workers=0)
        with pytest.raises(FileNotFoundError, match="has no mask") as info:
            datamodule.setup()
        assert str(image) in str(info.value)
        assert str(defect) in str(info.value)

    @staticmethod
    def test_orphan_mask(one_category: Path) -> None:
        defect = sorted(path for path in (one_category / "disc" / "test").iterdir() if path.name != "good")[0]
        image = sorted(defect.iterdir())[-1]
        image.unlink()
        datamodule = AuxiliaryTrain(one_category, ["disc"], num_workers=0)
        with pytest.raises(FileNotFoundError, match="has no image"):
            datamodule.setup()

    @staticmethod
    @pytest.mark.parametrize("seed", [2**50, 2**32, -1, True, 1.5, "0"])
    def test_seed_range(one_category: Path, seed: object) -> None:
        with pytest.raises(ValueError, match=r"seed=.* must be None or an integer in \[0, 4294967295\]"):
            AuxiliaryTrain(one_category, ["disc"], num_workers=0, seed=seed)

    @staticmethod
    def test_largest_seed_trains(one_category: Path) -> None:
        datamodule = AuxiliaryTrain(one_category, ["disc"], num_workers=0, seed=2**32 - 1)
        datamodule.setup()
        assert next(iter(datamodule.train_dataloader())).image.shape[0] > 0


# ------------------------------------------------------------------------------ case 11: scoring settings


class TestScoringSettings:
    @staticmethod
    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"sigma": float("nan")}, "gaussian_sigma=nan must be a finite number >= 0"),
            ({"sigma": float("inf")}, "gaussian_sigma=inf must be a finite number >= 0"),
            ({"sigma": -1.0}, "gaussian_sigma=-1.0 must be a finite number >= 0"),
            ({"sigma": "8"}, "gaussian_sigma='8' must be a finite number >= 0"),
            ({"sigma": True}, "gaussian_sigma=True must be a finite number >= 0"),
            ({"top_k": 2.5}, "top_k=2.5 must be an integer >= 1"),
            ({"top_k": 3.0}, "top_k=3.0 must be an integer >= 1"),
            ({"top_k": True}, "top_k=True must be an integer >= 1"),
            ({"top_k": 0}, "top_k=0 must be an integer >= 1"),
            ({"alpha": float("nan")}, "score_alpha=nan must be a number in \\[0, 1\\]"),
            ({"alpha": "0.5"}, "score_alpha='0.5' must be a number in \\[0, 1\\]"),
            ({"alpha": 1.5}, "score_alpha=1.5 must be a number in \\[0, 1\\]"),
        ],
    )
    def test_rejected_at_construction(kwargs: dict, expected: str) -> None:
        with pytest.raises(ValueError, match=expected):
            AnomalyMapGenerator(64, **kwargs)

    @staticmethod
    def test_valid_settings() -> None:
        import numpy as np  # noqa: PLC0415

        generator = AnomalyMapGenerator(64, sigma=0, alpha=1, top_k=np.int64(5))
        assert generator.top_k == 5 and type(generator.top_k) is int
        score, anomaly_map = generator(torch.zeros(2, 4), [torch.zeros(2, 64, 4)], (8, 8), (64, 64))
        assert score.shape == (2,) and anomaly_map.shape == (2, 64, 64)
