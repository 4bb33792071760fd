"""Every user-facing argument of BayesPFL, tested where the user sets it: its default and where it arrives.

A default or a setting that is lost between the constructor and the code that consumes it (constructor -> torch
model -> anomaly map / loss / optimisers) is a silent wrong answer; these tests build the model as a user does.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_files import reference_file
from scipy.ndimage import gaussian_filter

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.anomaly_map import AnomalyMapGenerator
from anomalib_bayes_pfl.backbone import ClipBackbone
from anomalib_bayes_pfl.checkpoints import head_state_dict, save_prompt_weights
from anomalib_bayes_pfl.loss import BayesPFLLoss, balanced_focal_loss
from anomalib_bayes_pfl.prompt_flow import PromptFlow
from anomalib_bayes_pfl.prompting import PromptBank
from anomalib_bayes_pfl.torch_model import BayesPFLModel

PAPER_DEFAULTS = {
    "backbone": "ViT-L-14-336",
    "pretrained": "openai",
    "image_size": 518,
    "feature_layers": (6, 12, 18, 24),
    "activation": "auto",
    "context_length": 5,
    "state_length": 5,
    "num_samples": 10,
    "gaussian_sigma": 8.0,
    "score_alpha": 0.5,
    "top_k": 2000,
    "focal_gamma": 2.0,
    "kl_weight": 0.01,
    "orthogonal_weight": 1.0,
    "lr_temperature": 1e-2,
    "betas": (0.5, 0.999),
    "warmup_ratio": 0.1,
    "stage_patience": 4,
    "prompt_weights": None,
    "synthetic_anomalies": None,
    "meta_guidance": False,
    "locality_window": None,
}
"""The paper's settings (Sec. 4.1 and the reference's test.py / loss.py / train.py)."""

OFFICIAL_TRAIN_DEFAULTS = {  # name in the official train.py -> our argument
    "learning_rate": "lr",
    "learning_rate_prompt": "lr_prompt",
    "learning_rate_PFL": "lr_flow",
    "prompt_num": "num_prompts",
    "num_flows": "num_flows",
}


def test_defaults_are_the_papers() -> None:
    """The constructor's defaults, as a user gets them, equal the paper's and the official train.py's."""
    signature = inspect.signature(BayesPFL).parameters
    defaults = {name: parameter.default for name, parameter in signature.items()}
    assert {name: defaults[name] for name in PAPER_DEFAULTS} == PAPER_DEFAULTS
    official = torch.load(reference_file("training.pt"), weights_only=True)["train_py_defaults"]
    for official_name, ours in OFFICIAL_TRAIN_DEFAULTS.items():
        assert defaults[ours] == official[official_name], ours


LAYERS = {  # each layer that takes a setting of BayesPFL: {its argument: BayesPFL's argument}
    BayesPFLModel: {name: name for name in inspect.signature(BayesPFLModel).parameters},
    ClipBackbone: {"name": "backbone", "pretrained": "pretrained", "image_size": "image_size",
                   "feature_layers": "feature_layers", "activation": "activation"},
    AnomalyMapGenerator: {"sigma": "gaussian_sigma", "alpha": "score_alpha", "top_k": "top_k"},
    BayesPFLLoss: {"focal_gamma": "focal_gamma", "kl_weight": "kl_weight", "orthogonal_weight": "orthogonal_weight"},
    balanced_focal_loss: {"gamma": "focal_gamma"},
    PromptFlow: {"num_flows": "num_flows", "num_samples": "num_samples"},
    PromptBank: {"num_prompts": "num_prompts", "context_length": "context_length", "state_length": "state_length"},
}  # fmt: skip


@pytest.mark.parametrize("layer", list(LAYERS), ids=lambda layer: layer.__name__)
def test_every_layer_defaults_to_the_users_default(layer: object) -> None:
    """A layer built on its own (tests, benchmarks, other code) behaves as BayesPFL's defaults say."""
    user = {name: parameter.default for name, parameter in inspect.signature(BayesPFL).parameters.items()}
    own = {name: parameter.default for name, parameter in inspect.signature(layer).parameters.items()}
    expected = {ours: user[theirs] for ours, theirs in LAYERS[layer].items()}
    expected |= {"class_name": None} if layer is BayesPFLModel else {}
    assert {name: own[name] for name in expected} == expected


def test_every_setting_is_covered_here() -> None:
    """Each constructor argument is tested in this file (or by the golden fixtures: backbone, pretrained)."""
    covered = set(SETTINGS) | set(PAPER_DEFAULTS) | {"lr", "lr_prompt", "lr_flow", "lr_temperature", "betas"}
    components = {"pre_processor", "post_processor", "evaluator", "visualizer"}
    assert set(inspect.signature(BayesPFL).parameters) - components <= covered


def test_every_torch_model_argument_is_a_user_argument() -> None:
    """Nothing the torch model takes is out of the user's reach (each is forwarded by name)."""
    model_arguments = set(inspect.signature(BayesPFLModel).parameters)
    assert model_arguments <= set(inspect.signature(BayesPFL).parameters)


SETTINGS = {  # argument: (value, what the built model must show)
    "num_samples": (4, lambda m: m.model.prompt_flow.num_samples == 4),
    "eval_seed": (
        5,
        lambda m: torch.equal(m.model.prompt_flow.eval_noise, torch.randn(3, 3, 64, generator=_seeded(5))),
    ),
    "class_name": ("metal_nut", lambda m: m.model.class_name == "metal_nut"),
    "score_alpha": (0.25, lambda m: m.model.anomaly_map.alpha == 0.25),
    "top_k": (7, lambda m: m.model.anomaly_map.top_k == 7),
    "gaussian_sigma": (2.0, lambda m: m.model.anomaly_map.blur.kernel.shape[-1] == 17),  # 2 * int(4 sigma + 0.5) + 1
    "focal_gamma": (1.5, lambda m: m.loss.focal_gamma == 1.5),
    "kl_weight": (0.2, lambda m: m.loss.kl_weight == 0.2),
    "orthogonal_weight": (3.0, lambda m: m.loss.orthogonal_weight == 3.0),
    "num_prompts": (2, lambda m: m.model.prompt_bank.num_prompts == 2),
    "context_length": (3, lambda m: m.model.prompt_bank.prompt_context.shape[1] == 3),
    "state_length": (4, lambda m: m.model.prompt_bank.prompt_state_normal.shape[1] == 4),
    "num_flows": (2, lambda m: m.model.prompt_flow.normal.u.shape[0] == 2),
    "feature_layers": ((1, 3), lambda m: m.model.backbone.feature_layers == (1, 3)),
    "image_size": (96, lambda m: m.model.backbone.grid_size == (12, 12)),
    "stage_patience": (2, lambda m: m.stage_switch.patience == 2),
    "stage1_max_epochs": (3, lambda m: m.stage_switch.max_epochs == 3),
    "synthesis_probability": (0.3, lambda m: m.synthesis.probability == 0.3),
    "attention_layer": (3, lambda m: m.attention_layer == 3),
    "meta_strength": (0.5, lambda m: m.meta_guidance.strength == 0.5),
    "locality_window": (3, lambda m: m.model.backbone.locality_layers == (4,)),
    "locality_layers": ((2, 3), lambda m: m.model.backbone.locality_layers == (2, 3)),
    "activation": (
        "quick_gelu",
        lambda m: type(m.model.backbone.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU",
    ),
    "synthetic_anomalies": (True, lambda m: m.synthesis is not None),
    "anomaly_source_path": ("textures", lambda m: str(m.synthesis.anomaly_source_path) == "textures"),
    "meta_guidance": (True, lambda m: m.meta_guidance is not None and m.meta_guidance.strength == 1.0),
    "seed": (3, lambda m: m.hparams.seed == 3 and _same_head(m, 3)),
    "false_alarm_rate": (0.05, lambda m: m.post_processor.false_alarm_rate == 0.05),
    "k_shot": (2, lambda m: m.model.few_shot.k_shot == 2 and m.learning_type.value == "few_shot"),
    "few_shot_weight": (0.25, lambda m: m.model.few_shot.weight == 0.25),
    "few_shot_source": ("references", lambda m: m.hparams.few_shot_source == "references"),
}
NEEDS = {  # settings that only exist with their option switched on
    "attention_layer": {"synthetic_anomalies": True},
    "synthesis_probability": {"synthetic_anomalies": True},
    "anomaly_source_path": {"synthetic_anomalies": True},
    "meta_strength": {"meta_guidance": True},
    "locality_layers": {"locality_window": 3},
    "k_shot": {"prompt_weights": "HEAD"},
    "few_shot_weight": {"k_shot": 1, "prompt_weights": "HEAD"},
    "few_shot_source": {"k_shot": 1, "prompt_weights": "HEAD"},
}
"""``"HEAD"`` stands for a head file of the tiny model (few-shot mode scores with trained prompt weights)."""


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_head(model: BayesPFL, seed: int) -> bool:
    """Whether ``model``'s head is the one ``seed`` initialises, whatever the global generator's state."""
    from anomalib_bayes_pfl.demo import TINY_MODEL_ARGS

    torch.manual_seed(seed + 1)
    again = head_state_dict(BayesPFL(**TINY_MODEL_ARGS, seed=seed).model)
    head = head_state_dict(model.model)
    return all(torch.equal(value, again[key]) for key, value in head.items() if torch.is_tensor(value))


@pytest.mark.parametrize("argument", sorted(SETTINGS))
def test_a_setting_reaches_its_consumer(argument: str, tiny_kwargs: dict, tmp_path: Path) -> None:
    value, arrived = SETTINGS[argument]
    needs = NEEDS.get(argument, {})
    if needs.get("prompt_weights") == "HEAD":
        needs = needs | {"prompt_weights": str(save_prompt_weights(BayesPFLModel(**tiny_kwargs), tmp_path / "h.pt"))}
    model = BayesPFL(**(tiny_kwargs | needs | {argument: value}))
    assert arrived(model)


@pytest.mark.parametrize(
    ("argument", "value", "group", "expected"),
    [
        ("lr", 3e-4, 3, 3e-4),
        ("lr_prompt", 2e-3, 0, 2e-3),
        ("lr_temperature", 5e-2, 1, 5e-2),
        ("lr_flow", 4e-3, 2, 4e-3),
    ],
)
def test_learning_rates_and_schedule_reach_the_optimisers(
    argument: str, value: float, group: int, expected: float, tiny_kwargs: dict
) -> None:
    """Each learning rate lands in its stage-1 group; betas in both optimisers; warm-up in the schedule."""
    model = BayesPFL(**tiny_kwargs, **{argument: value}, betas=(0.6, 0.99), warmup_ratio=0.5)
    model.trainer = type("TrainerStub", (), {"estimated_stepping_batches": 10})()
    (stage1, stage2), (schedule,) = model.configure_optimizers()
    assert schedule["scheduler"].lr_lambdas[0](1) == pytest.approx(1 / 5)  # warm-up over half of 10 steps
    assert stage1.param_groups[group]["initial_lr"] == expected
    assert stage1.param_groups[0]["betas"] == stage2.param_groups[0]["betas"] == (0.6, 0.99)


def _pair(tiny_kwargs: dict, weights: str, **settings: object) -> tuple[BayesPFL, BayesPFL]:
    """A raw model (no smoothing, score = image branch) and a configured one with the same head."""
    torch.manual_seed(0)
    raw = BayesPFL(**(tiny_kwargs | {"pretrained": weights, "gaussian_sigma": 0.0, "score_alpha": 1.0}))
    configured = BayesPFL(**(tiny_kwargs | {"pretrained": weights} | settings))
    configured.model.load_state_dict(head_state_dict(raw.model), strict=False)
    return raw.eval(), configured.eval()


@pytest.mark.parametrize(("sigma", "alpha", "top_k"), [(2.0, 0.5, 20), (1.0, 0.25, 300), (3.0, 0.0, 1)])
def test_score_and_map_follow_sigma_alpha_and_top_k(
    sigma: float, alpha: float, top_k: int, tiny_kwargs: dict, tiny_clip_weights: str
) -> None:
    """map = Gaussian(sigma) of the raw map; score = alpha * image branch + (1 - alpha) * top-k mean of the
    *unsmoothed* map. The blur is checked against SciPy's ``gaussian_filter`` (the official smoothing): exactly in
    the interior, and with mirrored borders (ours; the official mode repeats the edge pixel) everywhere."""
    raw, configured = _pair(tiny_kwargs, tiny_clip_weights, gaussian_sigma=sigma, score_alpha=alpha, top_k=top_k)
    images = torch.randn(3, 3, 64, 64, generator=_seeded(3))
    with torch.no_grad():
        plain, out = raw.model(images), configured.model(images)
    raw_map = plain.anomaly_map.numpy().astype(np.float64)
    top = plain.anomaly_map.flatten(1).topk(top_k, dim=1).values.mean(1)
    torch.testing.assert_close(out.pred_score, alpha * plain.pred_score + (1 - alpha) * top, atol=1e-6, rtol=0)
    mirrored = gaussian_filter(raw_map, sigma, mode="mirror", truncate=4.0, axes=(1, 2))
    np.testing.assert_allclose(out.anomaly_map.numpy(), mirrored, atol=1e-5, rtol=0)
    official = gaussian_filter(raw_map, sigma, truncate=4.0, axes=(1, 2))
    border = int(4 * sigma + 0.5)
    inner = (slice(None), slice(border, -border), slice(border, -border))
    np.testing.assert_allclose(out.anomaly_map.numpy()[inner], official[inner], atol=1e-5, rtol=0)
