"""Our model against the reference procedure, computed the reference's way, with the same weights and input.

The reference (github.com/xiaozhen228/Bayes-PFL, ``models/VPB.py``, ``models/PFL.py``, ``test.py``) encodes each
sample's prompts in a separate 77-token pass, runs flows with batched matrix products, applies RCA with einsums,
upsamples *logits* and takes each pair's softmax. Our model cuts the text after the longest prompt, batches all
prompts, and upsamples logit differences. This test rebuilds the reference order step by step (with our evaluation
noise in place of fresh draws) and checks both give the same score and map. Deliberate differences (test-set
min-max normalisation, SciPy smoothing) are left out by comparing before smoothing.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bayes_pfl.torch_model import BayesPFLModel

R, TOP_K, SIZE = 2, 20, 64


def _reference_flows(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Planar flows as the reference applies them: ``u (1,K,D,1)``, ``w (1,K,1,D)``, ``b (1,K,1,1)``, ``z (1,D)``."""
    for k in range(u.shape[1]):
        z = z.unsqueeze(2)
        z = (z + u[:, k] * torch.tanh(torch.bmm(w[:, k], z) + b[:, k])).squeeze(2)
    return z


def _reference_text(
    model: BayesPFLModel, z_context: torch.Tensor, z_state: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """One sample's B prompts through the full 77-token text tower, read out at EOS + 9 (``TextEncoder.forward``)."""
    clip = model.backbone.clip
    tokens = open_clip.tokenize(["X bottle"])
    embedded = clip.token_embedding(tokens)[0]
    bank = model.prompt_bank
    learned = torch.cat([bank.prompt_context + z_context, state + z_state], dim=1)  # (B, P + Q, D)
    count = learned.shape[1]
    x = torch.cat([embedded[:1].expand(3, -1, -1), learned, embedded[2 : 77 - count + 1].expand(3, -1, -1)], dim=1)
    x = x + clip.positional_embedding
    x = clip.transformer(x.transpose(0, 1), attn_mask=clip.attn_mask).transpose(0, 1)
    x = clip.ln_final(x)
    eos = int(tokens.argmax()) + count - 1
    return x[:, eos] @ clip.text_projection


def reference_output(model: BayesPFLModel, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image score and unsmoothed map of one image, the reference's way."""
    flow, noise = model.prompt_flow, model.prompt_flow.eval_noise
    global_feature, patches = model.backbone(image)
    isd = flow.image_specific
    mean, var = isd.encoder(global_feature)
    u = isd.amortised_u(global_feature).view(1, -1, flow.latent_dim, 1)
    w = isd.amortised_w(global_feature).view(1, -1, 1, flow.latent_dim)
    b = isd.amortised_b(global_feature).view(1, -1, 1, 1)
    states = []
    for iad in (flow.normal, flow.abnormal):
        states.append((iad, *flow.state_encoder(iad.state.view(1, -1))))
    normal, abnormal = [], []
    for j in range(R):
        z_context = _reference_flows(mean + var.sqrt() * noise[0, j], u, w, b)
        for index, (iad, state_mean, state_var) in enumerate(states):
            z = _reference_flows(
                state_mean + state_var.sqrt() * noise[index + 1, j],
                iad.u.view(1, -1, flow.latent_dim, 1),
                iad.w.view(1, -1, 1, flow.latent_dim),
                iad.b.view(1, -1, 1, 1),
            )
            bank_state = (
                model.prompt_bank.prompt_state_normal if index == 0 else model.prompt_bank.prompt_state_abnormal
            )
            (normal if index == 0 else abnormal).append(_reference_text(model, z_context, z, bank_state))
    text = F.normalize(torch.cat([*normal, *abnormal]), dim=-1).unsqueeze(0)  # (1, 2RB, E)
    pairs = text.shape[1] // 2
    branch = model.image_branch
    image_side = F.normalize(branch.image_mapping(global_feature + branch.pooling(patches)), dim=-1)
    logits = model.temperature_image.exp() * F.normalize(branch.class_mapping(text), dim=-1) @ image_side.unsqueeze(2)
    logits = logits.squeeze(2)
    text_score = torch.stack([torch.softmax(logits[:, [i, i + pairs]], dim=-1)[0, 1] for i in range(pairs)]).mean()
    maps = []
    rca = model.rca
    for layer, tokens in enumerate(patches):
        features = F.normalize(rca.patch_projections[layer](tokens), dim=-1)
        query = rca.query(text).reshape(1, text.shape[1], 4, -1)
        keys = features.reshape(1, features.shape[1], 4, -1)
        attention = torch.einsum("bnkc,bmkc->bknm", query, keys).mul(rca.scale).softmax(dim=-1)
        refined = torch.einsum("bknm,bmkc->bnkc", attention, keys).reshape(text.shape) + text
        refined = F.normalize(refined, dim=-1)
        pixel = model.temperature_pixel.exp() * features @ refined.transpose(1, 2)
        grid = int(pixel.shape[1] ** 0.5)
        pixel = F.interpolate(
            pixel.transpose(1, 2).view(1, -1, grid, grid), size=SIZE, mode="bilinear", align_corners=True
        )
        maps += [
            torch.softmax(torch.stack([pixel[:, i], pixel[:, i + pairs]], dim=1), dim=1)[:, 1] for i in range(pairs)
        ]
    anomaly_map = torch.stack(maps).mean(0)
    top = anomaly_map.flatten().topk(TOP_K).values.mean()
    return 0.5 * text_score + 0.5 * top, anomaly_map


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_same_score_and_map_as_the_reference_procedure(activation: str) -> None:
    """Stage-2 model, R = 2 samples: score and unsmoothed map equal within 1e-5."""
    torch.manual_seed(0)
    model = BayesPFLModel(
        "bayes-pfl-tiny", None, SIZE, (1, 2, 3, 4), activation=activation, num_samples=R, class_name="bottle",
        gaussian_sigma=0.0, top_k=TOP_K,
    ).eval()  # fmt: skip
    model.stage = 2
    for parameter in model.parameters():  # move off the reference's tiny initial values, so differences show
        parameter.data.add_(torch.randn_like(parameter) * 0.05)
    image = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(image)
        score, anomaly_map = reference_output(model, image)
    assert torch.allclose(ours.pred_score, score.view(1), atol=1e-5)
    assert torch.allclose(ours.anomaly_map, anomaly_map, atol=1e-5)
