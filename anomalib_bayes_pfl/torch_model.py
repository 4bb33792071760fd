# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""PyTorch model of Bayes-PFL: frozen CLIP, prompt bank, prompt flow, RCA, image branch and anomaly maps.

Example:
    >>> model = BayesPFLModel("bayes-pfl-tiny", pretrained=None, image_size=64, feature_layers=(2, 4),
    ...                       num_samples=2, gaussian_sigma=1.0).eval()
    >>> output = model(torch.rand(2, 3, 64, 64))
    >>> output.pred_score.shape, output.anomaly_map.shape
    (torch.Size([2]), torch.Size([2, 64, 64]))

Paper:
    Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025.
    Reference code: https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from open_clip.transformer import QuickGELU
from torch import nn

from . import defaults
from .anomaly_map import AnomalyMapGenerator
from .backbone import ClipBackbone
from .few_shot import PatchMemory
from .finite import flag_non_finite_images
from .head_settings import check_settings, requested_settings
from .image_branch import ImageBranch
from .prompt_flow import PromptFlow
from .prompting import PromptBank, check_class_names, inject_prompts, tokenize_class_names
from .rca import ResidualCrossModalAttention
from .safe_loading import validate_extra_state
from .uncertainty import UncertainInferenceBatch, with_uncertainty

INITIAL_TEMPERATURE = math.log(1 / 0.07)
"""Initial log logit scale of the image and pixel branches (CLIP's 1/0.07)."""

HEAD_INIT_STD = 0.02
"""All linear layers of the trainable head start from N(0, 0.02) with zero bias (reference ``_initialize_weights``)."""

DEFAULT_CLASS_NAME = "object"
"""Class name used when none is given and none can be read from the data."""


def _require_positive(**sizes: int) -> None:
    """Reject zero or negative sizes before any weights are built."""
    for name, value in sizes.items():
        if value < 1:
            msg = f"{name}={value} must be at least 1."
            raise ValueError(msg)


def _keep_own_smoothing_kernel(model: BayesPFLModel, state_dict: dict, prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: the smoothing kernel follows this model's ``gaussian_sigma``, never a file's.

    Checkpoints hold the kernel (anomalib's ``GaussianBlur2d`` keeps it as a buffer); a stored one of the same size
    would otherwise replace the model's sigma silently. The file's entries are swapped for this model's own.
    """
    del args
    scoring = prefix + "anomaly_map."
    for key in [key for key in state_dict if key.startswith(scoring)]:
        del state_dict[key]
    state_dict.update(model.anomaly_map.state_dict(prefix=scoring))


class BayesPFLModel(nn.Module):
    """Bayes-PFL on a frozen open_clip ViT.

    Args:
        backbone (str): open_clip model name, or the path of an open_clip model-config JSON file (registered under the
            file's stem). Defaults to ``"ViT-L-14-336"``.
        pretrained (str | None): open_clip tag, local weights file, or ``None`` (random). Defaults to ``"openai"``.
        image_size (int): Input side. Defaults to ``518``.
        feature_layers (Sequence[int]): 1-indexed blocks whose patch tokens are used. Defaults to ``(6, 12, 18, 24)``.
        activation (str): ``"auto"``, ``"gelu"`` (reference re-implementation) or ``"quick_gelu"``.
            Defaults to ``"auto"``.
        num_prompts (int): Prompt pairs in the bank ``B``. Defaults to ``3``.
        context_length (int): Context vectors per prompt ``P``. Defaults to ``5``.
        state_length (int): State vectors per prompt ``Q``. Defaults to ``5``.
        num_flows (int): Planar flows per distribution ``K``. Defaults to ``10``.
        num_samples (int): Prompt samples per image at evaluation ``R``. Defaults to ``10``.
        eval_seed (int): Seed of the fixed evaluation noise. Defaults to ``0``.
        class_name (str | None): Class name written into the prompts at inference; ``None``: the name stored with
            loaded weights, else ``"object"``. A given name is never replaced by a stored one.
            Defaults to ``None``.
        gaussian_sigma (float): Smoothing of the anomaly map. Defaults to ``8``.
        score_alpha (float): Weight of the image branch in the image score. Defaults to ``0.5``.
        top_k (int): Map pixels averaged into the image score. Defaults to ``2000``.
        locality_window (int | None): Window side (patches) of locality-aware attention; ``None`` disables it.
            Defaults to ``None``.
        locality_layers (Sequence[int] | None): 1-indexed blocks with locality-aware attention; ``None``: the
            last block. Defaults to ``None``.
    """

    def __init__(
        self,
        backbone: str = defaults.BACKBONE,
        pretrained: str | None = defaults.PRETRAINED,
        image_size: int = defaults.IMAGE_SIZE,
        feature_layers: Sequence[int] = defaults.FEATURE_LAYERS,
        activation: str = "auto",
        num_prompts: int = defaults.NUM_PROMPTS,
        context_length: int = defaults.CONTEXT_LENGTH,
        state_length: int = defaults.STATE_LENGTH,
        num_flows: int = defaults.NUM_FLOWS,
        num_samples: int = defaults.NUM_SAMPLES,
        eval_seed: int = 0,
        class_name: str | None = None,
        gaussian_sigma: float = defaults.GAUSSIAN_SIGMA,
        score_alpha: float = defaults.SCORE_ALPHA,
        top_k: int = defaults.TOP_K,
        locality_window: int | None = None,
        locality_layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _require_positive(
            num_prompts=num_prompts,
            context_length=context_length,
            state_length=state_length,
            num_flows=num_flows,
            num_samples=num_samples,
        )
        check_class_names([DEFAULT_CLASS_NAME if class_name is None else class_name])
        self.anomaly_map = AnomalyMapGenerator(image_size, gaussian_sigma, score_alpha, top_k)
        self.backbone = ClipBackbone(
            backbone, pretrained, image_size, tuple(feature_layers), activation, locality_window, locality_layers
        )
        embed_dim, vision_width = self.backbone.embed_dim, self.backbone.vision_width
        text_width = self.backbone.text_width
        self.prompt_bank = PromptBank(text_width, num_prompts, context_length, state_length)
        self.prompt_flow = PromptFlow(embed_dim, text_width, vision_width // 2, num_flows, num_samples, eval_seed)
        self.rca = ResidualCrossModalAttention(vision_width, embed_dim, len(feature_layers))
        self.image_branch = ImageBranch(embed_dim, vision_width, len(feature_layers))
        self.temperature_image = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))
        self.temperature_pixel = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))
        self._init_head()
        self.stage = 1
        self._use_class_name(DEFAULT_CLASS_NAME if class_name is None else class_name)
        self.class_name_given = class_name is not None
        arguments = {"backbone": backbone, "image_size": image_size, "feature_layers": feature_layers}
        arguments |= {"num_prompts": num_prompts, "context_length": context_length, "state_length": state_length}
        arguments |= {"num_flows": num_flows, "num_samples": num_samples, "eval_seed": eval_seed}
        self.settings = requested_settings(arguments | {"locality_window": locality_window}) | {
            "activation": "quick_gelu" if self._uses_quick_gelu() else "gelu",
            "locality_layers": list(self.backbone.locality_layers),
        }
        self.register_load_state_dict_pre_hook(_keep_own_smoothing_kernel)
        self.few_shot: PatchMemory | None = None  # added by add_few_shot_memory, after a head is loaded

    def add_few_shot_memory(self, k_shot: int, weight: float) -> None:
        """Add an empty memory of ``k_shot`` reference images fused with ``weight`` (see :mod:`.few_shot`).

        Added after the head is loaded: the memory belongs to one category's references, not to a head.
        """
        layers, grid = len(self.backbone.feature_layers), self.backbone.grid_size
        memory = PatchMemory(k_shot, layers, grid, self.backbone.vision_width, weight)
        self.few_shot = memory.to(self.temperature_image.device)

    @torch.no_grad()
    def fill_few_shot_memory(self, images: torch.Tensor) -> None:
        """Store the patch tokens of normalised reference images ``(k_shot, 3, S, S)`` in the memory."""
        if self.few_shot is None:
            msg = "This model has no few-shot memory; build it with k_shot > 0."
            raise ValueError(msg)
        self.few_shot.fill(self.backbone(images.to(self.temperature_image.device))[1])

    def _init_head(self) -> None:
        """Re-initialise every linear layer of the trainable head as the reference does."""
        for module in (self.prompt_flow, self.rca, self.image_branch):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=HEAD_INIT_STD)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def _uses_quick_gelu(self) -> bool:
        """Whether CLIP's MLPs run QuickGELU (what ``activation="auto"`` resolved to)."""
        return any(isinstance(module, QuickGELU) for module in self.backbone.clip.visual.modules())

    # -- class name, stage and settings: plain Python state, carried in the state dict as extra state -----------

    def set_class_name(self, class_name: str) -> None:
        """Set the class name written into the prompts at inference (exported with the model).

        A name set here (or given to the constructor) is the user's: weights loaded later keep it, their stored
        name is only used when none was given.
        """
        self._use_class_name(class_name)
        self.class_name_given = True

    def _use_class_name(self, class_name: str) -> None:
        """Tokenise ``class_name`` into the prompt template buffer."""
        tokens, self._class_eos = self._tokenize([class_name])
        self.register_buffer("class_tokens", tokens.to(self.temperature_image.device), persistent=False)
        self.class_name = class_name

    def get_extra_state(self) -> dict[str, object]:
        """Store the training stage, the class name and the settings that shape the outputs with the weights."""
        return {"stage": self.stage, "class_name": self.class_name, "settings": dict(self.settings)}

    def set_extra_state(self, state: object) -> None:
        """Restore the stage (and the class name, unless one was given) saved by :meth:`get_extra_state`.

        The state comes from a file (a head, a checkpoint), so its types and sizes are checked before use (see
        :func:`~anomalib_bayes_pfl.safe_loading.validate_extra_state`), and its recorded settings must be this
        model's (see :mod:`~anomalib_bayes_pfl.head_settings`); on an error nothing changes.

        Raises:
            ValueError: If ``state`` is not ``{"stage": 1 | 2, "class_name": str, "settings": dict}`` with a short
                class name, or the recorded settings differ from this model's (each difference is named).
        """
        state = validate_extra_state(state)
        check_settings(state.get("settings"), self.settings, "The loaded head")
        if not self.class_name_given:
            self._use_class_name(state["class_name"])
        self.stage = state["stage"]

    # -- parameter groups (learning rates differ per group) ----------------------------------------------------

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: ``prompt``, ``temperature``, ``flow``, ``other`` (stage 1), ``image_branch``.

        ``flow`` holds the flow parameters proper (amortised u/w/b layers, the image-agnostic u/w/b and state
        vectors); the Gaussian encoders go to ``other``, as in the reference's grouping.
        """
        flow = self.prompt_flow
        flow_parameters = [
            *flow.image_specific.amortised_u.parameters(),
            *flow.image_specific.amortised_w.parameters(),
            *flow.image_specific.amortised_b.parameters(),
            *flow.normal.parameters(),
            *flow.abnormal.parameters(),
        ]
        encoders = [*flow.image_specific.encoder.parameters(), *flow.state_encoder.parameters()]
        return {
            "prompt": list(self.prompt_bank.parameters()),
            "temperature": [self.temperature_image, self.temperature_pixel],
            "flow": flow_parameters,
            "other": encoders + list(self.rca.parameters()) + list(self.image_branch.class_mapping.parameters()),
            "image_branch": list(self.image_branch.parameters()),
        }

    def prompt_parameters(self) -> list[nn.Parameter]:
        """Everything that shapes the text prompts: the bank and the prompt distributions (meta guidance acts here)."""
        return [*self.prompt_bank.parameters(), *self.prompt_flow.parameters()]

    # -- forward ------------------------------------------------------------------------------------------------

    def _tokenize(self, names: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Template token ids of ``names`` for this text tower and bank, with the longest end-of-text position."""
        return tokenize_class_names(names, self.backbone.context_length, self.prompt_bank.num_learned_tokens)

    def _prompt_tokens(self, class_names: Sequence[str] | None, batch: int) -> tuple[torch.Tensor, int]:
        """Token ids ``(N, L)`` of each image's template and the longest end-of-text position."""
        if class_names is None:
            return self.class_tokens.expand(batch, -1), self._class_eos
        if len(class_names) != batch:
            msg = f"Got {len(class_names)} class names for {batch} images; give one name per image."
            raise ValueError(msg)
        tokens, longest_eos = self._tokenize(class_names)
        return tokens.to(self.class_tokens.device), longest_eos

    def encode_prompts(
        self,
        global_feature: torch.Tensor,
        tokens: torch.Tensor,
        longest_eos: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample prompt biases (training noise from ``generator``) and encode every prompt of every image.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: Normalised text embeddings ``(N, 2, S, B, E)`` (axis 1: normal,
            abnormal; ``S`` samples) and the three KL terms ``(3,)`` (mean over samples).
        """
        context, normal, abnormal = self.prompt_flow(global_feature, generator)
        learned = self.prompt_bank(context.z, normal.z, abnormal.z)  # (N, 2, S, B, P + Q, D)
        sequences, eos = inject_prompts(
            self.backbone.token_embedding(tokens), tokens.argmax(dim=-1), learned, longest_eos
        )
        text = self.backbone.encode_text_embeddings(sequences, eos)
        text = nn.functional.normalize(text, dim=-1).view(*learned.shape[:4], -1)
        return text, torch.stack([context.kl.mean(), normal.kl.mean(), abnormal.kl.mean()])

    def pixel_logits(self, text: torch.Tensor, patches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per layer, scaled cosine logits ``(N, P, T)`` between RCA-refined text ``(N, T, E)`` and patches."""
        logits = []
        for layer, tokens in enumerate(patches):
            refined, features = self.rca(text, tokens, layer)
            logits.append(self.temperature_pixel.exp() * features @ refined.transpose(1, 2))
        return logits

    def forward(
        self,
        images: torch.Tensor,
        class_names: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        uncertainty: bool = False,
    ) -> InferenceBatch | UncertainInferenceBatch | dict[str, torch.Tensor | list[torch.Tensor]]:
        """Score images.

        Args:
            images (torch.Tensor): Normalised images ``(N, 3, S, S)``.
            class_names (Sequence[str] | None): One class name per image (mixed-category training and
                validation); ``None`` uses :attr:`class_name`.
            generator (torch.Generator | None): Source of the training noise of the prompt distributions (the
                global generator when ``None``); unused in eval mode, which samples fixed noise.
            uncertainty (bool): In eval mode, also return the per-pixel uncertainty of the prompt samples (see
                :mod:`~anomalib_bayes_pfl.uncertainty`). Defaults to ``False``.

        Returns:
            InferenceBatch | UncertainInferenceBatch | dict: In eval mode, ``InferenceBatch(pred_score (N,),
            anomaly_map (N, S, S))``, with ``uncertainty_map (N, S, S)`` if asked; an
            image with a NaN or Inf pixel scores ``+inf`` everywhere (anomalous: a graph cannot raise, and NaN would
            be labelled normal).
            In training mode, the loss inputs: ``image_logits (N, 2B)``, ``pixel_logits`` (per layer
            ``(N, P, 2B)``; empty in stage 2), ``text_embeddings (N, 2, B, E)``, ``kl (3,)`` and the frozen
            ``global_feature (N, E)``.
        """
        size = self.backbone.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            msg = f"Expected images of shape (N, 3, {size}, {size}), got {tuple(images.shape)}; resize them first."
            raise ValueError(msg)
        tokens, longest_eos = self._prompt_tokens(class_names, images.shape[0])
        with torch.no_grad():
            global_feature, patches = self.backbone(images)
        image_branch_only = self.training and self.stage == 2
        with torch.set_grad_enabled(torch.is_grad_enabled() and not image_branch_only):
            text, kl = self.encode_prompts(global_feature, tokens, longest_eos, generator)
        flat_text = text.flatten(1, 3)  # (N, 2 * S * B, E): all normal prompts, then all abnormal ones
        image_logits = self.image_branch(flat_text, global_feature, patches, self.temperature_image.exp(), self.stage)
        pixel_logits = [] if image_branch_only else self.pixel_logits(flat_text, patches)
        if self.training:
            return {
                "image_logits": image_logits,
                "pixel_logits": pixel_logits,
                "text_embeddings": text[:, :, 0],
                "kl": kl,
                "global_feature": global_feature,
            }
        score, anomaly_map, *spread = self.anomaly_map(  # spread: [the uncertainty map] if asked, else []
            image_logits, pixel_logits, self.backbone.grid_size, (size, size), uncertainty=uncertainty
        )
        if self.few_shot is not None:
            scoring = self.anomaly_map
            score, anomaly_map = self.few_shot.fuse(score, anomaly_map, patches, scoring.blur, scoring.top_k)
        score, anomaly_map = flag_non_finite_images(images, score, anomaly_map)
        prediction = InferenceBatch(pred_score=score, anomaly_map=anomaly_map)
        return with_uncertainty(prediction, images, *spread) if uncertainty else prediction
