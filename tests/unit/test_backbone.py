"""Tests of the frozen CLIP backbone: taps, geometry checks, weight loading and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import resize_pos_embed
from torch import nn

from anomalib_bayes_pfl.backbone import ClipBackbone, WeightsUnavailableError, model_name, vision_depth

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
"""A config of its own (not packaged, not in open_clip), so the file is the only way to know it."""


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    """Tiny random backbone tapping two blocks."""
    return ClipBackbone("bayes-pfl-tiny", pretrained=None, image_size=64, feature_layers=(2, 4))


class TestForward:
    """Global feature and patch taps."""

    @staticmethod
    def test_taps_are_raw_block_outputs(backbone: ClipBackbone) -> None:
        """Tapped tokens equal the outputs of the chosen residual blocks, class token dropped."""
        images = torch.randn(2, 3, 64, 64)
        outputs = []
        hooks = [
            block.register_forward_hook(lambda m, i, o: outputs.append(o))
            for block in backbone.clip.visual.transformer.resblocks
        ]
        global_feature, taps = backbone(images)
        for hook in hooks:
            hook.remove()

        def to_nld(x: torch.Tensor) -> torch.Tensor:
            return x if getattr(backbone.clip.visual.transformer, "batch_first", False) else x.transpose(0, 1)

        assert torch.equal(taps[0], to_nld(outputs[1])[:, 1:])
        assert torch.equal(taps[1], to_nld(outputs[3])[:, 1:])
        assert taps[0].shape == (2, backbone.grid_size[0] * backbone.grid_size[1], backbone.vision_width)

    @staticmethod
    def test_global_feature_is_clip_image_embedding(backbone: ClipBackbone) -> None:
        """The global feature is open_clip's own (unnormalised) image embedding."""
        images = torch.randn(2, 3, 64, 64)
        expected = backbone.clip.encode_image(images)
        assert torch.allclose(backbone(images)[0], expected, atol=1e-5)

    @staticmethod
    def test_text_encoding_matches_open_clip(backbone: ClipBackbone) -> None:
        """Cut sequences give open_clip's full-length text features (the causal mask at work)."""
        tokens = open_clip.tokenize(["a photo of a bottle", "a cat"])
        eos = tokens.argmax(-1)
        cut = backbone.token_embedding(tokens)[:, : int(eos.max()) + 1]
        ours = backbone.encode_text_embeddings(cut, eos)
        assert torch.allclose(ours, backbone.clip.encode_text(tokens), atol=1e-5)

    @staticmethod
    def test_frozen_no_gradient(backbone: ClipBackbone) -> None:
        """No CLIP parameter requires a gradient; the module stays in eval mode under train()."""
        backbone.train()
        assert not backbone.clip.training
        assert not any(p.requires_grad for p in backbone.parameters())


class TestConfiguration:
    """Errors before anything heavy is built."""

    @staticmethod
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"name": "not-a-model"}, "Unknown backbone"),
            ({"image_size": 65}, "multiple"),
            ({"feature_layers": (1, 9)}, "feature_layers"),
            ({"feature_layers": (4, 4)}, r"feature_layers=\(4, 4\) .*each block once, in increasing order"),
            ({"feature_layers": (4, 2)}, r"feature_layers=\(4, 2\) .*each block once, in increasing order"),
            ({"activation": "relu"}, "activation"),
            ({"pretrained": "no-such-tag"}, "Unknown pretrained tag"),
        ],
    )
    def test_bad_configuration(kwargs: dict, match: str) -> None:
        """Each bad value is named."""
        arguments = {"name": "bayes-pfl-tiny", "pretrained": None, "image_size": 64, "feature_layers": (1,)} | kwargs
        with pytest.raises(ValueError, match=match):
            ClipBackbone(**arguments)

    @staticmethod
    def test_activation_choice() -> None:
        """``quick_gelu`` and ``gelu`` select the MLP activation."""
        quick = ClipBackbone("bayes-pfl-tiny", None, 64, (1,), activation="quick_gelu")
        exact = ClipBackbone("bayes-pfl-tiny", None, 64, (1,), activation="gelu")
        assert type(quick.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
        assert isinstance(exact.clip.visual.transformer.resblocks[0].mlp.gelu, nn.GELU)


class _CodeRunner:
    """Pickles as a call that creates ``marker``: what a malicious weights file would smuggle in."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class TestWeights:
    """Local files, OpenAI-style archives, wrong architectures and offline tags."""

    @staticmethod
    def test_local_checkpoint_round_trip(tmp_path: Path, backbone: ClipBackbone) -> None:
        """A saved open_clip state dict loads back identically, also from a 32 px grid (resized)."""
        path = tmp_path / "tiny.pt"
        torch.save({"state_dict": backbone.clip.state_dict()}, path)
        loaded = ClipBackbone("bayes-pfl-tiny", str(path), image_size=64, feature_layers=(2, 4))
        assert torch.equal(loaded.clip.visual.conv1.weight, backbone.clip.visual.conv1.weight)
        resized = ClipBackbone("bayes-pfl-tiny", str(path), image_size=96, feature_layers=(2, 4))
        assert resized.clip.visual.positional_embedding.shape[0] == resized.grid_size[0] ** 2 + 1

    @staticmethod
    def test_torchscript_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An OpenAI-style TorchScript archive runs code when loaded: refused by default (naming the opt-in and the
        conversion), it loads with ``TRUST_REMOTE_CODE=1``, and ``auto`` then picks QuickGELU as OpenAI trained with.
        """
        source = ClipBackbone("bayes-pfl-tiny", None, 64, (1,), activation="quick_gelu").clip
        path = tmp_path / "archive.pt"
        torch.jit.save(torch.jit.script(source), str(path))
        monkeypatch.delenv("TRUST_REMOTE_CODE", raising=False)
        with pytest.raises(WeightsUnavailableError, match="TRUST_REMOTE_CODE=1") as info:
            ClipBackbone("bayes-pfl-tiny", str(path), image_size=64, feature_layers=(2,))
        assert "python -m anomalib_bayes_pfl.convert_clip" in str(info.value)
        monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
        loaded = ClipBackbone("bayes-pfl-tiny", str(path), image_size=64, feature_layers=(2,))
        assert torch.equal(loaded.clip.token_embedding.weight, source.token_embedding.weight)
        assert type(loaded.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"

    @staticmethod
    def test_wrong_architecture(tmp_path: Path) -> None:
        """Weights of another architecture: one message naming the file and the fix."""
        path = tmp_path / "other.pt"
        torch.save({"visual.conv1.weight": torch.zeros(1)}, path)
        with pytest.raises(WeightsUnavailableError, match="do not fit the 'bayes-pfl-tiny' architecture"):
            ClipBackbone("bayes-pfl-tiny", str(path), image_size=64, feature_layers=(1,))

    @staticmethod
    def test_crafted_weights_file_never_runs(tmp_path: Path, backbone: ClipBackbone) -> None:
        """CLIP weights are read with ``weights_only``: a pickle that calls code is refused without running it."""
        marker = tmp_path / "code-ran"
        path = tmp_path / "crafted.pt"
        torch.save(backbone.clip.state_dict() | {"logit_scale": _CodeRunner(marker)}, path)
        with pytest.raises(WeightsUnavailableError, match="Could not read CLIP weights"):
            ClipBackbone("bayes-pfl-tiny", str(path), image_size=64, feature_layers=(1,))
        assert not marker.exists()

    @staticmethod
    def test_missing_file() -> None:
        """A missing local file is named."""
        with pytest.raises(WeightsUnavailableError, match="not found"):
            ClipBackbone("bayes-pfl-tiny", "/nonexistent/clip.pt", image_size=64, feature_layers=(1,))

    @staticmethod
    def test_offline_tag(monkeypatch: pytest.MonkeyPatch) -> None:
        """A tag that cannot be downloaded ends in an actionable message, not a network traceback."""

        def offline(*args: object, **kwargs: object) -> str:
            raise OSError("<urlopen error [Errno -2] Name or service not known>")

        monkeypatch.setattr(open_clip, "download_pretrained", offline)
        with pytest.raises(WeightsUnavailableError, match="offline.*pass the local file") as info:
            ClipBackbone("ViT-B-16", "openai", image_size=224, feature_layers=(1,))
        assert info.value.__suppress_context__


class TestConfigFile:
    """A backbone given as the path of an open_clip model-config JSON file."""

    @staticmethod
    def test_config_file_is_registered_under_its_stem(tmp_path: Path) -> None:
        """The file's stem becomes the model name, and every resolver (depth, backbone) accepts the path."""
        path = tmp_path / "user-tiny-vit.json"
        path.write_text(json.dumps(TINY_CONFIG))
        assert model_name(str(path)) == "user-tiny-vit"
        assert vision_depth(str(path)) == 3
        backbone = ClipBackbone(str(path), pretrained=None, image_size=32, feature_layers=(1, 3))
        assert backbone.vision_width == 64 and backbone.embed_dim == 32 and backbone.grid_size == (2, 2)
        assert open_clip.get_model_config("user-tiny-vit") == TINY_CONFIG
        registrations = len(open_clip.factory._MODEL_CONFIG_PATHS)
        model_name(str(path))
        assert len(open_clip.factory._MODEL_CONFIG_PATHS) == registrations  # the same file is registered once

    @staticmethod
    @pytest.mark.parametrize(
        ("name", "content", "match"),
        [
            ("missing.json", None, "not found"),
            ("broken.json", "{not json", "not valid JSON"),
            ("partial.json", json.dumps({"embed_dim": 8}), "lacks vision_cfg, text_cfg"),
            ("list.json", "[]", "lacks embed_dim"),
        ],
    )
    def test_bad_config_file(tmp_path: Path, name: str, content: str | None, match: str) -> None:
        """A missing or invalid file is named, with the fix."""
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        with pytest.raises(ValueError, match=match) as info:
            ClipBackbone(str(path), pretrained=None, image_size=32, feature_layers=(1,))
        assert str(path) in str(info.value) and "open_clip model name" in str(info.value)


def test_fp16_weights_at_a_resized_grid(tmp_path: Path, backbone: ClipBackbone) -> None:
    """fp16 weights (OpenAI's released precision) load at another grid: upcast to fp32, then resized."""
    path = tmp_path / "tiny-fp16.pt"
    torch.save({key: value.half() for key, value in backbone.clip.state_dict().items()}, path)
    resized = ClipBackbone("bayes-pfl-tiny", str(path), image_size=96, feature_layers=(2, 4))
    assert resized.clip.visual.positional_embedding.dtype == torch.float32
    original = backbone.clip.visual.positional_embedding.detach().half().float()
    state_dict = {"visual.positional_embedding": original}
    resize_pos_embed(state_dict, resized.clip)
    assert torch.equal(resized.clip.visual.positional_embedding, state_dict["visual.positional_embedding"])
