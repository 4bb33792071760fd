# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Prompt bank and its injection into the tokenised ``"X <class name>"`` template.

Bayes-PFL learns ``B`` pairs of prompts. A pair shares ``P`` context vectors; the normal prompt adds ``Q`` normal
state vectors and the abnormal one ``Q`` abnormal state vectors. There are no hand-written words: the template
``"X <class name>"`` is tokenised and the single token ``x`` (position 1, after the start token) is replaced by the
``P + Q`` learned vectors, giving

    ``[SOS] [ctx_1 .. ctx_P] [state_1 .. state_Q] <class-name tokens> [EOS]``

Sampled prompt-flow biases enter here: one image-specific vector is added to every context vector, one
image-agnostic vector to every state vector.

Paper:
    Qu et al., CVPR 2025, Sec. 3.2. Reference code: ``TextEncoder`` and ``Context_Prompting`` in ``models/VPB.py``
    of https://github.com/xiaozhen228/Bayes-PFL (MIT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.tokenizer import tokenize
from torch import nn

from . import defaults

CLASS_NAME_MAP = {
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "pipe_fryum": "pipe fryum",
    "chewinggum": "chewing gum",
    "metal_nut": "metal nut",
}
"""Dataset folder names that the reference rewrites into words (``models/VPB.py: class_mapping``)."""

TEMPLATE = "X {}"
"""The reference's template; the token of ``X`` is replaced by the learned vectors."""

PLACEHOLDER_POSITION = 1
"""Position of the ``X`` token: right after the start-of-text token."""

STATE_MEANS = (0.5, -0.5)
"""Initial means of the normal and abnormal state vectors (reference ``Context_Prompting.__init__``)."""

INIT_STD = 0.02
"""Standard deviation of the truncated-normal initialisation of the bank."""


def clean_class_name(name: str) -> str:
    """Turn a dataset category name into the words used in the prompt.

    Example:
        >>> clean_class_name("pcb3"), clean_class_name("Metal_Nut"), clean_class_name("bottle")
        ('printed circuit board', 'metal nut', 'bottle')
    """
    lowered = name.strip().lower()
    return CLASS_NAME_MAP.get(lowered, lowered.replace("_", " "))


class PromptBank(nn.Module):
    """The learnable prompt bank: ``B`` pairs of (shared context, normal state, abnormal state) vectors.

    Args:
        width (int): Text token width.
        num_prompts (int): Bank size ``B``. Defaults to ``3``.
        context_length (int): Context vectors per prompt ``P``. Defaults to ``5``.
        state_length (int): State vectors per prompt ``Q``. Defaults to ``5``.
    """

    def __init__(
        self,
        width: int,
        num_prompts: int = defaults.NUM_PROMPTS,
        context_length: int = defaults.CONTEXT_LENGTH,
        state_length: int = defaults.STATE_LENGTH,
    ) -> None:
        super().__init__()
        self.prompt_context = nn.Parameter(torch.empty(num_prompts, context_length, width))
        self.prompt_state_normal = nn.Parameter(torch.empty(num_prompts, state_length, width))
        self.prompt_state_abnormal = nn.Parameter(torch.empty(num_prompts, state_length, width))
        nn.init.trunc_normal_(self.prompt_context, mean=0.0, std=INIT_STD)
        nn.init.trunc_normal_(self.prompt_state_normal, mean=STATE_MEANS[0], std=INIT_STD)
        nn.init.trunc_normal_(self.prompt_state_abnormal, mean=STATE_MEANS[1], std=INIT_STD)

    @property
    def num_prompts(self) -> int:
        """Bank size ``B``."""
        return self.prompt_context.shape[0]

    @property
    def num_learned_tokens(self) -> int:
        """``P + Q``: how many token positions the learned vectors take."""
        return self.prompt_context.shape[1] + self.prompt_state_normal.shape[1]

    def forward(
        self,
        context_bias: torch.Tensor,
        normal_bias: torch.Tensor,
        abnormal_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Biased learned vectors of every prompt.

        Args:
            context_bias (torch.Tensor): Image-specific samples ``(N, S, D)``.
            normal_bias (torch.Tensor): Normal state samples ``(S, D)``.
            abnormal_bias (torch.Tensor): Abnormal state samples ``(S, D)``.

        Returns:
            torch.Tensor: ``(N, 2, S, B, P + Q, D)``; axis 1 is (normal, abnormal).
        """
        context = self.prompt_context + context_bias[:, :, None, None, :]  # (N, S, B, P, D)
        states = torch.stack(
            [
                self.prompt_state_normal + normal_bias[:, None, None, :],
                self.prompt_state_abnormal + abnormal_bias[:, None, None, :],
            ],
        )  # (2, S, B, Q, D)
        batch = context.shape[0]
        context = context.unsqueeze(1).expand(-1, 2, -1, -1, -1, -1)
        states = states.unsqueeze(0).expand(batch, -1, -1, -1, -1, -1)
        return torch.cat([context, states], dim=-2)


def check_class_names(names: Sequence[str]) -> list[str]:
    """Clean each name, refusing empty ones: a prompt without the object's name would be silently wrong.

    Example:
        >>> check_class_names(["Metal_Nut"])
        ['metal nut']
    """
    cleaned = [clean_class_name(name) for name in names]
    if not all(name.strip() for name in cleaned):
        msg = (
            f"Empty class name in {list(names)}: the prompts need the object's name (e.g. 'bottle'). Pass "
            "class_name, or use a datamodule whose category (or category folder) names the object."
        )
        raise ValueError(msg)
    return cleaned


def tokenize_class_names(
    names: Sequence[str],
    context_length: int,
    num_learned_tokens: int,
) -> tuple[torch.Tensor, int]:
    """Tokenise ``"X <name>"`` for each name, checking that no name is empty and that the prompt fits the context.

    Returns:
        tuple[torch.Tensor, int]: Token ids ``(len(names), context_length)`` and the longest end-of-text
        position as a Python number (what :func:`inject_prompts` cuts at).
    """
    cleaned = check_class_names(names)
    tokens = tokenize([TEMPLATE.format(name) for name in cleaned], context_length=context_length)
    longest_eos = int(tokens.argmax(dim=-1).max())
    if longest_eos + num_learned_tokens > context_length:
        msg = (
            f"A class name is too long for the {context_length}-token text context with {num_learned_tokens} "
            f"learned prompt tokens: {list(names)}. Use a shorter class name."
        )
        raise ValueError(msg)
    return tokens, longest_eos


def inject_prompts(
    name_embeddings: torch.Tensor,
    eos_index: torch.Tensor,
    learned: torch.Tensor,
    longest_eos: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the placeholder token by the learned vectors and cut the sequences after the longest prompt.

    Args:
        name_embeddings (torch.Tensor): Token embeddings of the templates, one per image, ``(N, L, D)``.
        eos_index (torch.Tensor): End-of-text position in each template ``(N,)``.
        learned (torch.Tensor): Learned (biased) vectors ``(N, ..., T, D)`` from :class:`PromptBank`.
        longest_eos (int): ``max(eos_index)`` as a Python number, known when the names are tokenised, so the
            cut is a constant of the traced graph.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: Prompt embeddings ``(M, L', D)`` with ``M`` = all prompts flattened in
        the order of ``learned``'s leading axes, and their end-of-text positions ``(M,)``. ``L'`` is the longest
        prompt, so no position after any end-of-text token is computed.
    """
    num_tokens = learned.shape[-2]
    length = longest_eos + num_tokens
    prefix = name_embeddings[:, :PLACEHOLDER_POSITION]
    suffix = name_embeddings[:, PLACEHOLDER_POSITION + 1 : length - num_tokens + 1]
    prompts_per_image = learned[0, ..., 0, 0].numel()
    batch, width = learned.shape[0], learned.shape[-1]
    learned = learned.reshape(batch, prompts_per_image, num_tokens, width)

    def expand(part: torch.Tensor) -> torch.Tensor:
        return part.unsqueeze(1).expand(-1, prompts_per_image, -1, -1)

    sequences = torch.cat([expand(prefix), learned, expand(suffix)], dim=2)
    eos = (eos_index + num_tokens - 1).repeat_interleave(prompts_per_image)
    return sequences.reshape(batch * prompts_per_image, length, width), eos
