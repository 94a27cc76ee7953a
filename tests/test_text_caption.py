"""Caption tensors: null caption, token truncation and padding of ComfyUI-style T5 output."""

from __future__ import annotations

import pytest
import torch

from opensora_core.text.caption import Caption, null_caption, pad_caption, truncate_tokens


def test_null_caption_repeats_the_learned_embedding():
    y_embedding = torch.randn(5, 3)  # (L, C)
    null = null_caption(y_embedding, 2)
    assert null.shape == (2, 1, 5, 3)
    assert torch.equal(null[1, 0], y_embedding)


def test_null_caption_rejects_a_batched_tensor():
    with pytest.raises(ValueError, match=r"\(L, C\)"):
        null_caption(torch.zeros(1, 5, 3), 2)


def test_truncate_tokens_keeps_l_minus_1_tokens_and_eos():
    assert truncate_tokens([5, 6, 7, 8, 1], 4, eos=1) == [5, 6, 7, 1]


def test_truncate_tokens_leaves_short_prompts_alone():
    assert truncate_tokens([5, 6, 1], 4, eos=1) == [5, 6, 1]


def test_truncate_tokens_works_on_weighted_pairs():
    pairs = [(5, 1.0), (6, 1.2), (7, 1.0), (1, 1.0)]
    assert truncate_tokens(pairs, 3, eos=(1, 1.0)) == [(5, 1.0), (6, 1.2), (1, 1.0)]


def test_pad_caption_places_tokens_first_and_masks_the_rest():
    embeddings = torch.randn(1, 3, 4)
    caption = pad_caption(embeddings, 6)
    assert caption.y.shape == (1, 1, 6, 4) and caption.mask.dtype == torch.int64
    assert caption.mask.tolist() == [[1, 1, 1, 0, 0, 0]]
    assert torch.equal(caption.y[0, 0, :3], embeddings[0]) and not caption.y[0, 0, 3:].any()


def test_pad_caption_uses_the_attention_mask():
    """Padded ComfyUI output (ltxv / mochi types): only the masked-in tokens are kept."""
    embeddings = torch.randn(1, 5, 4)
    caption = pad_caption(embeddings, 6, attention_mask=torch.tensor([[1, 1, 0, 0, 0]]))
    assert caption.token_counts() == [2]
    assert torch.equal(caption.y[0, 0, :2], embeddings[0, :2])


def test_pad_caption_refuses_more_tokens_than_l():
    with pytest.raises(ValueError, match="truncate the tokens to 3 \\+ EOS"):
        pad_caption(torch.zeros(1, 5, 4), 4)


def test_caption_checks_shapes():
    with pytest.raises(ValueError, match="does not match"):
        Caption(y=torch.zeros(2, 1, 4, 3), mask=torch.ones(2, 5, dtype=torch.int64))
