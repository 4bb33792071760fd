"""Faithfulness to the official Bayes-PFL code, checked against its golden outputs.

The files in ``shared/fixtures/reference`` (found by ``tests/reference_files.py``) were computed by the authors' code
on a tiny random CLIP and head (see the README there). They are loaded here the way a user loads the authors'
weights: ``BayesPFL(backbone=<open_clip config file>, pretrained=<CLIP file>, prompt_weights=<head file>)``. Gates
follow the README's "Expected tolerance" table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from reference_files import REFERENCE
from torch import nn

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl import loss as loss_module
from anomalib_bayes_pfl import prompt_flow as prompt_flow_module
from anomalib_bayes_pfl.checkpoints import convert_reference_state_dict
from anomalib_bayes_pfl.torch_model import BayesPFLModel

FIXTURES = REFERENCE
CONFIG_FILE = FIXTURES / "bayes-pfl-ref-tiny.json"
CLIP_FILE = FIXTURES / "clip_ref_tiny.pt"
HEAD_FILE = FIXTURES / "head_ref_tiny.pth"
FIXTURE_FILES = ("bayes-pfl-ref-tiny.json", "clip_ref_tiny.pt", "head_ref_tiny.pth", "inference.pt", "training.pt")
FEATURE_LAYERS = (3, 6, 9, 12)

ABS = 1e-5
"""Scores, maps, normalised embeddings, RCA outputs and loss terms: absolute gate."""
REL = 1e-5
"""Features, taps, samples and logits: gate relative to the golden tensor's largest magnitude."""
GRAD_REL = 1e-4
"""Gradients: gate relative to each golden tensor's largest magnitude."""
LOGDET_ABS = 1e-4
"""Summed log-determinant of the 10 flows (not in the README's table): a sum of logs on samples of size ~10,
measured up to 5e-6 off; 1e-4 is still 10x tighter than what the (0.01-weighted) KL gate lets through."""
ZERO_GRAD_ABS = 1e-6
"""``fuse.compress.bias`` in stage 2: zero in exact arithmetic (softmax ignores a shift), rounding on both sides."""

STAGES = {"S64_R10": (2, 1), "S64_R2": (2, 1), "S96_R10": (2,)}
"""Stages with goldens per inference case (README, ``inference.pt``)."""
CASE_STAGES = [(case, stage) for case, stages in STAGES.items() for stage in stages]
INFERENCE_QUANTITIES = (
    "global_feature",
    "patch_taps",
    "z_isd",
    "z_iad_normal",
    "z_iad_abnormal",
    "text_embeddings",
    "rca_text",
    "rca_patch",
    "pixel_logits",
    "image_logits",
)
ABS_QUANTITIES = {"text_embeddings", "rca_text", "rca_patch"}
TRAINING_STEPS = {"stage1_pair1": "project_convention", "stage2_pair2": "reference"}
"""Training step -> golden variant the project must match (the README's IAD-KL convention)."""
TERM_NAMES = {"cls": "loss_class", "seg": "loss_seg", "kl": "loss_dist_reg", "orth": "loss_text", "loss": "loss"}
"""The project's loss terms -> the golden names."""
TRAINING_QUANTITIES = (
    "global_feature",
    "patch_taps",
    "text_embeddings",
    "image_logits",
    "image_logits_pair",
    "pixel_logits",
    "flows",
)
FLOWS = ("isd", "iad_normal", "iad_abnormal")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def altered_fixtures() -> list[str]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    return [
        name
        for name in FIXTURE_FILES
        if not (FIXTURES / name).is_file() or sha256(FIXTURES / name) != manifest["files"][name]["sha256"]
    ]


def max_diff(ours: torch.Tensor, gold: torch.Tensor) -> float:
    return (ours.detach().double() - gold.double()).abs().max().item()


def assert_abs(name: str, ours: torch.Tensor, gold: torch.Tensor, atol: float = ABS) -> None:
    assert ours.shape == gold.shape, f"{name}: shape {tuple(ours.shape)}, golden {tuple(gold.shape)}"
    diff = max_diff(ours, gold)
    assert diff <= atol, f"{name}: max |ours - golden| = {diff:.3g} > {atol:g}"


def assert_rel(name: str, ours: torch.Tensor, gold: torch.Tensor, rel: float = REL) -> None:
    assert ours.shape == gold.shape, f"{name}: shape {tuple(ours.shape)}, golden {tuple(gold.shape)}"
    diff, scale = max_diff(ours, gold), gold.abs().max().item()
    assert diff <= rel * scale, f"{name}: max |ours - golden| = {diff:.3g} > {rel:g} x max |golden| ({scale:.3g})"


# -- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verified() -> None:
    """Every golden file is the one the manifest describes; anything else makes every comparison meaningless."""
    altered = altered_fixtures()
    if altered:
        pytest.fail(
            f"Golden reference fixtures altered or missing: {altered} (sha256 differs from manifest.json). "
            f"Restore them in {FIXTURES} (they are made by the official code, never by this project).",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def inference_gold(verified: None) -> dict:
    return torch.load(FIXTURES / "inference.pt", weights_only=True)


@pytest.fixture(scope="module")
def training_gold(verified: None) -> dict:
    return torch.load(FIXTURES / "training.pt", weights_only=True)


def build(image_size: int, num_samples: int, **options: object) -> BayesPFL:
    """What a user writes to run the authors' head on their CLIP (here the tiny architecture of the goldens)."""
    return BayesPFL(
        backbone=str(CONFIG_FILE),
        pretrained=str(CLIP_FILE),
        activation="gelu",
        image_size=image_size,
        feature_layers=FEATURE_LAYERS,
        prompt_weights=str(HEAD_FILE),
        num_samples=num_samples,
        gaussian_sigma=0,
        score_alpha=1.0,
        **options,
    )


@pytest.fixture(scope="module")
def inference_models(inference_gold: dict) -> Callable[[str], BayesPFLModel]:
    """One model per inference case, built on first use."""
    models: dict[str, BayesPFLModel] = {}

    def get(case: str) -> BayesPFLModel:
        if case not in models:
            settings = inference_gold["cases"][case]
            models[case] = build(settings["image_size"], settings["sample_num"]).model.eval()
        return models[case]

    return get


@contextmanager
def hooks(*handles: torch.utils.hooks.RemovableHandle) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_inference(model: BayesPFLModel, images: torch.Tensor, class_names: list[str]) -> dict[str, torch.Tensor]:
    """Run the model once, reading the reference's intermediates off the project's modules, in its layout."""
    seen: dict[str, object] = {"rca": []}

    def store(key: str, read: Callable) -> Callable:
        def hook(module: nn.Module, *arguments: object) -> None:
            seen[key] = read(*arguments)

        return hook

    with (
        hooks(
            model.backbone.clip.token_embedding.register_forward_pre_hook(
                store("tokens", lambda args: args[0].clone())
            ),
            model.backbone.register_forward_hook(store("backbone", lambda args, out: out)),
            model.prompt_flow.image_specific.register_forward_hook(store("z_isd", lambda args, out: out.z)),
            model.prompt_flow.normal.register_forward_hook(store("z_iad_normal", lambda args, out: out.z)),
            model.prompt_flow.abnormal.register_forward_hook(store("z_iad_abnormal", lambda args, out: out.z)),
            model.rca.register_forward_hook(lambda module, args, out: seen["rca"].append(out)),
            model.image_branch.register_forward_pre_hook(store("text_embeddings", lambda args: args[0])),
            model.image_branch.register_forward_hook(store("image_logits", lambda args, out: out)),
            model.anomaly_map.register_forward_pre_hook(store("pixel_logits", lambda args: torch.stack(args[1], 1))),
        ),
        torch.no_grad(),
    ):
        output = model(images, class_names)
    global_feature, taps = seen.pop("backbone")
    rca = seen.pop("rca")
    return seen | {
        "pred_score": output.pred_score,
        "anomaly_map": output.anomaly_map,
        "global_feature": global_feature,
        "patch_taps": torch.stack(taps, 1),
        "rca_text": torch.stack([text for text, _ in rca], 1),
        "rca_patch": torch.stack([patches for _, patches in rca], 1),
    }


@pytest.fixture(scope="module")
def inference_captures(
    inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]
) -> Callable[[str], dict[str, torch.Tensor]]:
    """Stage-2 intermediates of each case, computed on first use."""
    captures: dict[str, dict[str, torch.Tensor]] = {}

    def get(case: str) -> dict[str, torch.Tensor]:
        if case not in captures:
            settings = inference_gold["cases"][case]
            model = inference_models(case)
            model.stage = 2
            captures[case] = capture_inference(model, inference_gold[settings["images"]], settings["class_names"])
        return captures[case]

    return get


@pytest.fixture(scope="module")
def training_model() -> BayesPFL:
    return build(64, 10)


def record_calls(target: Callable, calls: list[torch.Tensor]) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        result = target(*args, **kwargs)
        calls.append(result)
        return result

    return wrapper


def run_training_step(module: BayesPFL, step: dict, batch: dict) -> dict:
    """One training step as the README describes: the stored eps injected, the Lightning module's own loss."""
    model = module.model
    model.train()
    model.stage = step["stage"]
    model.zero_grad(set_to_none=True)
    eps = step["eps"]
    drawn: dict[str, torch.Tensor] = {}
    flows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    encoders: list[tuple[torch.Tensor, torch.Tensor]] = []
    focal: list[torch.Tensor] = []
    dice: list[torch.Tensor] = []
    taps: list[torch.Tensor] = []

    def inject(key: str, replacement: Callable[[tuple], tuple]) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            drawn[key] = args[-1].detach().clone()
            return replacement(args)

        return hook

    def record_flows(z0: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, logdet = run_flows(z0, *args)
        flows.append((z0, z, logdet))
        return z, logdet

    run_flows = prompt_flow_module._run_flows  # noqa: SLF001 - read the flow's base sample and log-det
    flow = model.prompt_flow
    with (
        torch.random.fork_rng(),  # the seeding below leaves the session's global RNG as it was
        pytest.MonkeyPatch.context() as patch,
        hooks(
            flow.image_specific.register_forward_pre_hook(inject("isd", lambda a: (a[0], eps["isd"][:, None, :]))),
            flow.normal.register_forward_pre_hook(inject("iad_normal", lambda a: (eps["iad_normal"],))),
            flow.abnormal.register_forward_pre_hook(inject("iad_abnormal", lambda a: (eps["iad_abnormal"],))),
            flow.image_specific.encoder.register_forward_hook(lambda m, a, out: encoders.append(out)),
            flow.state_encoder.register_forward_hook(lambda m, a, out: encoders.append(out)),
            model.backbone.register_forward_hook(lambda m, a, out: taps.extend(out[1])),
        ),
    ):
        patch.setattr(prompt_flow_module, "_run_flows", record_flows)
        patch.setattr(loss_module, "balanced_focal_loss", record_calls(loss_module.balanced_focal_loss, focal))
        patch.setattr(loss_module, "dice_loss", record_calls(loss_module.dice_loss, dice))
        torch.manual_seed(step["noise_seed"])  # the project's own draws, which must equal the stored eps
        outputs = model(batch["images"], batch["class_names"])
        terms = module.loss(
            outputs, batch["labels"], batch["masks"], step["pair"], step["stage"], model.backbone.grid_size
        )
    terms["loss"].backward()
    grads = {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    return {
        "outputs": outputs,
        "terms": {name: value.detach() for name, value in terms.items()},
        "drawn": drawn,
        "flows": dict(zip(FLOWS, flows, strict=True)),
        "encoders": dict(zip(FLOWS, encoders, strict=True)),
        "focal": focal,
        "dice": dice,
        "patch_taps": torch.stack(taps, 1),
        "grads": grads,
    }


@pytest.fixture(scope="module")
def training_runs(training_gold: dict, training_model: BayesPFL) -> Callable[[str], dict]:
    """Each golden training step run once on the same model, on first use."""
    runs: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in runs:
            runs[name] = run_training_step(training_model, training_gold["steps"][name], training_gold["batch"])
        return runs[name]

    return get


# -- files and loading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_file_matches_manifest(name: str) -> None:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    path = FIXTURES / name
    assert path.is_file(), f"Golden fixture {path} is missing; restore it from git."
    expected = manifest["files"][name]
    assert path.stat().st_size == expected["bytes"] and sha256(path) == expected["sha256"], (
        f"Golden fixture {path} was altered (size or sha256 differs from manifest.json). These files come from the "
        "official Bayes-PFL code: restore them from git instead of regenerating them with this project."
    )


@pytest.mark.parametrize("case", STAGES)
def test_loaded_as_a_user_loads_the_authors_head(
    case: str, inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]
) -> None:
    """The head file is read as stage 2 (its name) and the evaluation noise is the project's default."""
    model = inference_models(case)
    assert model.stage == 2
    assert torch.equal(model.prompt_flow.eval_noise, inference_gold["cases"][case]["eval_noise"])
    assert STAGES[case] == tuple(int(key[-1]) for key in ("stage2", "stage1") if key in inference_gold["cases"][case])


# -- inference ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "stage"), CASE_STAGES)
def test_score_and_map_with_class_names(
    case: str, stage: int, inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]
) -> None:
    settings = inference_gold["cases"][case]
    model = inference_models(case)
    model.stage = stage
    with torch.no_grad():
        output = model(inference_gold[settings["images"]], settings["class_names"])
    assert_abs("text score", output.pred_score, settings[f"stage{stage}"]["text_score"])
    assert_abs("anomaly map", output.anomaly_map, settings["stage2"]["anomaly_map"])  # the same in both stages


@pytest.mark.parametrize(("case", "stage"), CASE_STAGES)
def test_score_and_map_image_by_image(
    case: str, stage: int, inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]
) -> None:
    settings = inference_gold["cases"][case]
    model = inference_models(case)
    model.stage = stage
    images, gold = inference_gold[settings["images"]], settings[f"stage{stage}"]
    try:
        for index, name in enumerate(settings["class_names"]):
            model.set_class_name(name)
            with torch.no_grad():
                output = model(images[index : index + 1])
            assert_abs(f"text score of image {index}", output.pred_score, gold["text_score"][index : index + 1])
            assert_abs(
                f"map of image {index}", output.anomaly_map, settings["stage2"]["anomaly_map"][index : index + 1]
            )
    finally:
        model.set_class_name("object")


def test_few_shot_on_the_authors_head(inference_gold: dict) -> None:
    """k_shot on the authors' head: weight 0 gives their zero-shot output; a reference's own patches are normal."""
    settings = inference_gold["cases"]["S64_R10"]
    images, gold = inference_gold[settings["images"]], settings["stage2"]
    model = build(settings["image_size"], settings["sample_num"], k_shot=1, few_shot_weight=0.0).model.eval()
    model.fill_few_shot_memory(images[:1])
    with torch.no_grad():
        zero_shot = model(images, settings["class_names"])
        model.few_shot.weight = 1.0
        memory_only = model(images, settings["class_names"])
    assert_abs("text score", zero_shot.pred_score, gold["text_score"])
    assert_abs("anomaly map", zero_shot.anomaly_map, gold["anomaly_map"])
    assert memory_only.anomaly_map[0].abs().max() < 1e-3  # the reference itself
    assert (memory_only.pred_score[1:] > 10 * memory_only.pred_score[0].abs()).all()


@pytest.mark.parametrize("case", [case for case, stages in STAGES.items() if 1 in stages])
def test_stage1_image_logits(case: str, inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]) -> None:
    """Stage 1 compares the mapped text with the global feature itself (no ``image_mapping``, no pooling)."""
    settings = inference_gold["cases"][case]
    model = inference_models(case)
    model.stage = 1
    logits = capture_inference(model, inference_gold[settings["images"]], settings["class_names"])["image_logits"]
    assert_rel("stage-1 image logits", logits, settings["stage1"]["image_logits"])


@pytest.mark.parametrize("case", STAGES)
def test_tokens(case: str, inference_gold: dict, inference_captures: Callable[[str], dict]) -> None:
    assert torch.equal(inference_captures(case)["tokens"], inference_gold["cases"][case]["stage2"]["tokens"])


@pytest.mark.parametrize("quantity", INFERENCE_QUANTITIES)
@pytest.mark.parametrize("case", STAGES)
def test_inference_intermediate(
    case: str, quantity: str, inference_gold: dict, inference_captures: Callable[[str], dict]
) -> None:
    """Prompts axis: index h * B * R + j * B + b, the order of the project's ``text.flatten(1, 3)``."""
    ours, gold = inference_captures(case)[quantity], inference_gold["cases"][case]["stage2"][quantity]
    if quantity in ABS_QUANTITIES:
        assert_abs(quantity, ours, gold)
    else:
        assert_rel(quantity, ours, gold)


@pytest.mark.parametrize("case", STAGES)
def test_temperatures(case: str, inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]) -> None:
    model, gold = inference_models(case), inference_gold["cases"][case]["stage2"]
    for name in ("temperature_pixel", "temperature_image"):
        assert_rel(name, getattr(model, name).detach(), torch.tensor(gold[name]))


def test_resized_positional_embedding(inference_gold: dict, inference_models: Callable[[str], BayesPFLModel]) -> None:
    """The fp16 CLIP file at 96 px: the grid is resized in fp32, as the reference's loader does."""
    ours = inference_models("S96_R10").backbone.clip.visual.positional_embedding
    assert_rel("positional embedding", ours.detach(), inference_gold["cases"]["S96_R10"]["visual_positional_embedding"])


# -- training -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINING_STEPS)
def test_training_noise_is_the_project_draw(name: str, training_gold: dict, training_runs: Callable) -> None:
    """After seeding the global RNG, the project draws exactly the stored eps (which the hooks then inject)."""
    eps, drawn = training_gold["steps"][name]["eps"], training_runs(name)["drawn"]
    assert torch.equal(drawn["isd"][:, 0], eps["isd"])
    assert torch.equal(drawn["iad_normal"], eps["iad_normal"])
    assert torch.equal(drawn["iad_abnormal"], eps["iad_abnormal"])


def training_quantity(run: dict, quantity: str, pair: int) -> torch.Tensor:
    """The project's training value of ``quantity`` in the golden layout."""
    outputs = run["outputs"]
    if quantity == "global_feature":
        return outputs["global_feature"]
    if quantity == "patch_taps":
        return run["patch_taps"]
    if quantity == "text_embeddings":
        return outputs["text_embeddings"].flatten(1, 2)  # (N, 2, B, E) -> (N, h * B + b, E)
    if quantity == "image_logits_pair":
        half = outputs["image_logits"].shape[-1] // 2
        return outputs["image_logits"][:, [pair, half + pair]]
    if quantity == "pixel_logits":
        return torch.stack(outputs["pixel_logits"], 1)
    return outputs[quantity]


@pytest.mark.parametrize("quantity", TRAINING_QUANTITIES)
@pytest.mark.parametrize("name", TRAINING_STEPS)
def test_training_intermediate(name: str, quantity: str, training_gold: dict, training_runs: Callable) -> None:
    step, run = training_gold["steps"][name], training_runs(name)
    gold = step["intermediates"]
    if quantity == "pixel_logits" and step["stage"] == 2:
        assert run["outputs"]["pixel_logits"] == []  # stage 2 trains the image branch alone; no maps are computed
        return
    if quantity == "flows":
        for flow in FLOWS:
            z0, z, logdet = run["flows"][flow]
            mean, var = run["encoders"][flow]
            expected = gold["flows"][flow]
            for key, ours in (("mu", mean), ("var", var), ("z0", z0), ("z", z)):
                assert_rel(f"{flow}.{key}", ours.reshape(expected[key].shape), expected[key])
            assert_abs(f"{flow}.logdet", logdet.reshape(expected["logdet"].shape), expected["logdet"], LOGDET_ABS)
        return
    ours = training_quantity(run, quantity, step["pair"])
    if quantity == "text_embeddings":
        assert_abs(quantity, ours, gold[quantity])
    else:
        assert_rel(quantity, ours, gold[quantity])


@pytest.mark.parametrize("name", TRAINING_STEPS)
def test_training_loss_terms(name: str, training_gold: dict, training_runs: Callable) -> None:
    """The Lightning module's own loss object, with its default weights, gives the reference's terms."""
    step, terms = training_gold["steps"][name], training_runs(name)["terms"]
    gold = step[TRAINING_STEPS[name]]
    expected = {"cls", "loss"} | ({"seg", "kl", "orth"} if step["stage"] == 1 else set())
    assert set(terms) == expected
    for term, value in terms.items():
        assert_abs(TERM_NAMES[term], value, gold[TERM_NAMES[term]])


def test_training_kl_per_distribution(training_gold: dict, training_runs: Callable) -> None:
    """Each prompt distribution's KL, weighted as the reference returns it (project convention for the IAD)."""
    gold = training_gold["steps"]["stage1_pair1"]["project_convention"]
    kl = training_gold["meta"]["kl_weight"] * training_runs("stage1_pair1")["outputs"]["kl"].detach()
    for index, key in enumerate(("kl_isd", "kl_iad_normal", "kl_iad_abnormal")):
        assert_abs(key, kl[index], gold[key])


def test_training_focal_and_dice_per_layer(training_gold: dict, training_runs: Callable) -> None:
    """The per-layer terms the loss object computed (recorded around its calls), in the reference's layer order."""
    gold, run = training_gold["steps"]["stage1_pair1"]["project_convention"], training_runs("stage1_pair1")
    assert_abs("focal per layer", torch.stack(run["focal"]), gold["focal"])
    assert_abs("dice per layer", torch.stack(run["dice"]), gold["dice"])


@pytest.mark.parametrize("name", TRAINING_STEPS)
def test_training_gradients(name: str, training_gold: dict, training_runs: Callable) -> None:
    """Every head parameter the reference trains gets the reference's gradient, and no other one gets any."""
    step, grads = training_gold["steps"][name], training_runs(name)["grads"]
    gold = convert_reference_state_dict(step[TRAINING_STEPS[name]]["grads"])
    assert set(grads) == set(gold), (
        f"gradient only here: {set(grads) - set(gold)}, only in golden: {set(gold) - set(grads)}"
    )
    for key, expected in gold.items():
        if step["stage"] == 2 and key == "image_branch.pooling.score.bias":  # the reference's fuse.compress.bias
            assert_abs(f"grad {key}", grads[key], expected, ZERO_GRAD_ABS)
        else:
            assert_rel(f"grad {key}", grads[key], expected, GRAD_REL)
