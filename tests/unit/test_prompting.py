"""Tests of the prompt bank and its injection into the template."""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import tokenize

from anomalib_bayes_pfl.prompting import PromptBank, clean_class_name, inject_prompts, tokenize_class_names


class TestClassNames:
    """Cleaning of dataset folder names."""

    @staticmethod
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("pcb4", "printed circuit board"),
            ("pipe_fryum", "pipe fryum"),
            ("macaroni2", "macaroni"),
            ("Bottle", "bottle"),
            ("bottle_cap", "bottle cap"),  # outside the reference's map: underscores become spaces
            ("Screw_Bag", "screw bag"),
        ],
    )
    def test_mapping(name: str, expected: str) -> None:
        """The reference's renames and lower-casing; other names get spaces for underscores."""
        assert clean_class_name(name) == expected

    @staticmethod
    def test_too_long_name_is_refused() -> None:
        """A name that pushes the prompt past the context fails with a hint."""
        with pytest.raises(ValueError, match="too long"):
            tokenize_class_names(["word " * 70], context_length=77, num_learned_tokens=10)


class TestPromptBank:
    """Initialisation and bias injection."""

    @staticmethod
    def test_initial_states() -> None:
        """Context near 0, normal states near +0.5, abnormal near -0.5."""
        bank = PromptBank(width=32)
        assert bank.prompt_context.mean().abs() < 0.01
        assert bank.prompt_state_normal.mean().item() == pytest.approx(0.5, abs=0.01)
        assert bank.prompt_state_abnormal.mean().item() == pytest.approx(-0.5, abs=0.01)

    @staticmethod
    def test_biases_reach_the_right_tokens() -> None:
        """The context bias is added to every context token, the state bias to every state token."""
        bank = PromptBank(width=4, num_prompts=2, context_length=3, state_length=2)
        context_bias = torch.randn(1, 1, 4)
        normal_bias, abnormal_bias = torch.randn(1, 4), torch.randn(1, 4)
        learned = bank(context_bias, normal_bias, abnormal_bias)
        assert learned.shape == (1, 2, 1, 2, 5, 4)
        assert torch.allclose(learned[0, 1, 0, 1, :3], bank.prompt_context[1] + context_bias[0, 0])
        assert torch.allclose(learned[0, 0, 0, 0, 3:], bank.prompt_state_normal[0] + normal_bias[0])
        assert torch.allclose(learned[0, 1, 0, 0, 3:], bank.prompt_state_abnormal[0] + abnormal_bias[0])


class TestInjection:
    """Placement of the learned tokens and the end-of-text read-out."""

    @staticmethod
    def test_positions_and_eos() -> None:
        """[SOS] learned... class tokens [EOS]; EOS shifted by (P + Q - 1); cut after the longest prompt."""
        tokens = tokenize(["X bottle", "X metal nut"])
        eos = tokens.argmax(-1)
        embeddings = tokens.unsqueeze(-1).float().expand(-1, -1, 2)  # embedding = token id, to read positions
        learned = torch.full((2, 2, 1, 3, 4, 2), -1.0)  # 2 images, (normal, abnormal), 1 sample, B=3, P+Q=4
        sequences, new_eos = inject_prompts(embeddings, eos, learned, int(eos.max()))
        assert sequences.shape == (12, int(eos.max()) + 4, 2)
        assert torch.equal(new_eos, (eos + 3).repeat_interleave(6))
        first = sequences[0, :, 0]
        assert first[0] == tokens[0, 0]
        assert torch.all(first[1:5] == -1)
        assert first[new_eos[0]] == tokens[0, eos[0]]
        assert torch.equal(first[5 : new_eos[0] + 1], tokens[0, 2 : eos[0] + 1].float())
