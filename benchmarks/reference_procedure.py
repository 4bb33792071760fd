"""The reference implementation's inference procedure, rebuilt step by step on a :class:`BayesPFLModel`'s weights.

The reference (github.com/xiaozhen228/Bayes-PFL, ``models/VPB.py``, ``models/PFL.py``, ``test.py``) scores one
image at a time: each of the R samples runs two full-length (77-token) text passes of the B prompts, flows run as
batched matrix products, RCA uses einsums, every pair's *logits* are upsampled before the pairwise softmax, and
the maps are averaged afterwards. Our model cuts the text after the longest prompt, encodes every prompt of a
batch in one pass and upsamples logit differences. This module is the unoptimised procedure that the latency
harness (``latency.py``) times against the model. It is a re-implementation, not the reference itself, so it is no
evidence of faithfulness: that is checked against outputs of the official code
(``tests/unit/test_reference_fixtures.py`` with ``shared/fixtures/reference``). The evaluation noise of the model
replaces the reference's fresh draws; test-set min-max normalisation and SciPy smoothing are left out.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bayes_pfl.prompting import TEMPLATE, clean_class_name
from anomalib_bayes_pfl.torch_model import BayesPFLModel


def _flows(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Planar flows as the reference applies them: ``u (1,K,D,1)``, ``w (1,K,1,D)``, ``b (1,K,1,1)``, ``z (1,D)``."""
    for k in range(u.shape[1]):
        z = z.unsqueeze(2)
        z = (z + u[:, k] * torch.tanh(torch.bmm(w[:, k], z) + b[:, k])).squeeze(2)
    return z


def _text(model: BayesPFLModel, z_context: torch.Tensor, z_state: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One sample's B prompts through the full-length text tower, read out at EOS + P + Q - 1."""
    clip = model.backbone.clip
    length = model.backbone.context_length
    tokens = open_clip.tokenize([TEMPLATE.format(clean_class_name(model.class_name))], context_length=length)
    embedded = clip.token_embedding(tokens)[0]
    learned = torch.cat([model.prompt_bank.prompt_context + z_context, state + z_state], dim=1)  # (B, P + Q, D)
    bank, count = learned.shape[:2]
    x = torch.cat(
        [embedded[:1].expand(bank, -1, -1), learned, embedded[2 : length - count + 1].expand(bank, -1, -1)], 1
    )
    x = clip.transformer((x + clip.positional_embedding).transpose(0, 1), attn_mask=clip.attn_mask).transpose(0, 1)
    return clip.ln_final(x)[:, int(tokens.argmax()) + count - 1] @ clip.text_projection


def _text_embeddings(model: BayesPFLModel, global_feature: torch.Tensor) -> torch.Tensor:
    """All ``2 * R * B`` normalised text embeddings of one image: normal (sample-major), then abnormal."""
    flow, noise = model.prompt_flow, model.prompt_flow.eval_noise
    isd, dim = flow.image_specific, flow.latent_dim
    mean, var = isd.encoder(global_feature)
    u = isd.amortised_u(global_feature).view(1, -1, dim, 1)
    w = isd.amortised_w(global_feature).view(1, -1, 1, dim)
    b = isd.amortised_b(global_feature).view(1, -1, 1, 1)
    banks = (model.prompt_bank.prompt_state_normal, model.prompt_bank.prompt_state_abnormal)
    blocks: list[list[torch.Tensor]] = [[], []]
    for j in range(noise.shape[1]):
        z_context = _flows(mean + var.sqrt() * noise[0, j], u, w, b)
        for index, iad in enumerate((flow.normal, flow.abnormal)):
            state_mean, state_var = flow.state_encoder(iad.state.view(1, -1))
            z0 = state_mean + state_var.sqrt() * noise[index + 1, j]
            z = _flows(z0, iad.u.view(1, -1, dim, 1), iad.w.view(1, -1, 1, dim), iad.b.view(1, -1, 1, 1))
            blocks[index].append(_text(model, z_context, z, banks[index]))
    return F.normalize(torch.cat([*blocks[0], *blocks[1]]), dim=-1).unsqueeze(0)


def reference_output(model: BayesPFLModel, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image score and unsmoothed anomaly map ``(1, S, S)`` of one image ``(1, 3, S, S)``, the reference's way."""
    size = image.shape[-1]
    global_feature, patches = model.backbone(image)
    text = _text_embeddings(model, global_feature)
    pairs = text.shape[1] // 2
    branch = model.image_branch
    if model.stage == 1:
        image_side = F.normalize(global_feature, dim=-1)
    else:
        image_side = F.normalize(branch.image_mapping(global_feature + branch.pooling(patches)), dim=-1)
    text_side = F.normalize(branch.class_mapping(text), dim=-1)
    logits = (model.temperature_image.exp() * text_side @ image_side.unsqueeze(2)).squeeze(2)
    text_score = torch.stack([torch.softmax(logits[:, [i, i + pairs]], dim=-1)[0, 1] for i in range(pairs)]).mean()
    rca, heads, maps = model.rca, model.rca.num_heads, []
    for layer, tokens in enumerate(patches):
        features = F.normalize(rca.patch_projections[layer](tokens), dim=-1)
        query = rca.query(text).reshape(1, text.shape[1], heads, -1)
        keys = features.reshape(1, features.shape[1], heads, -1)
        attention = torch.einsum("bnkc,bmkc->bknm", query, keys).mul(rca.scale).softmax(dim=-1)
        refined = F.normalize(torch.einsum("bknm,bmkc->bnkc", attention, keys).reshape(text.shape) + text, dim=-1)
        pixel = model.temperature_pixel.exp() * features @ refined.transpose(1, 2)
        grid = int(pixel.shape[1] ** 0.5)
        pixel = F.interpolate(
            pixel.transpose(1, 2).reshape(1, -1, grid, grid), size=size, mode="bilinear", align_corners=True
        )
        maps += [
            torch.softmax(torch.stack([pixel[:, i], pixel[:, i + pairs]], dim=1), dim=1)[:, 1] for i in range(pairs)
        ]
    anomaly_map = torch.stack(maps).mean(0)
    alpha, top_k = model.anomaly_map.alpha, model.anomaly_map.top_k
    top = anomaly_map.flatten().topk(min(top_k, anomaly_map.numel())).values.mean()
    return alpha * text_score + (1 - alpha) * top, anomaly_map
