"""The caption tensors every STDiT takes, and helpers that build them without a T5 of ours.

A caption is ``y`` (B, 1, L, C) plus a token ``mask`` (B, L) of 1 for real tokens
(the prompt's tokens and its end-of-sequence token) and 0 for padding. L is the
model's ``model_max_length`` (120 / 200 / 300 for v1.0 / v1.1 / v1.2) and C the
T5 width (4096 for T5-XXL). The models pack only the masked-in tokens, so the
values in padded rows never reach the output.

This module has no transformers dependency: the ComfyUI nodes use
:func:`truncate_tokens` and :func:`pad_caption` to turn the output of ComfyUI's own
T5 (``[1, n, C]``, no padding) into the same tensors, and :func:`null_caption` gives
the unconditional caption for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass
class Caption:
    """Encoded prompts: ``y`` (B, 1, L, C) and ``mask`` (B, L), int64, 1 = real token."""

    y: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.y.ndim != 4 or self.y.shape[1] != 1:
            raise ValueError(f"caption y must be (B, 1, L, C), got {tuple(self.y.shape)}")
        if tuple(self.mask.shape) != (self.y.shape[0], self.y.shape[2]):
            raise ValueError(f"caption mask {tuple(self.mask.shape)} does not match y {tuple(self.y.shape)}")

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    @property
    def max_length(self) -> int:
        return self.y.shape[2]

    @property
    def channels(self) -> int:
        return self.y.shape[3]

    def guidance_inputs(self, negative: Caption | None, model, device) -> tuple[Caption, torch.Tensor, torch.Tensor | None]:
        """The text arguments of a guided denoiser (``Sampler.denoiser``) on ``device``: this caption, the
        unconditional caption (the encoded ``negative``, else the model's learned null caption) and the
        negative's token mask (None: the prompt's own mask applies to the null caption)."""
        y_null = negative.y if negative is not None else model.null_caption(self.batch_size)
        null_mask = None if negative is None else negative.mask.to(device)
        return Caption(self.y.to(device), self.mask.to(device)), y_null.to(device), null_mask

    def token_counts(self) -> list[int]:
        """Real tokens (EOS included) per prompt."""
        return [int(n) for n in self.mask.sum(dim=1)]


def null_caption(y_embedding: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Unconditional caption for guidance: the model's learned ``y_embedder.y_embedding`` (L, C)
    repeated to (batch_size, 1, L, C) (follows opensora/models/text_encoder/t5.py: ``null``).

    It is used with the prompt's own mask, so only its first n rows take part.
    """
    if y_embedding.ndim != 2:
        raise ValueError(
            f"y_embedding must be (L, C), got {tuple(y_embedding.shape)}; pass model.y_embedder.y_embedding"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return y_embedding[None, None].repeat(batch_size, 1, 1, 1)  # (B, 1, L, C)


def truncate_tokens(tokens: Sequence[T], max_length: int, eos: T) -> list[T]:
    """Cut a tokenised prompt (ending with EOS) to at most ``max_length`` tokens the way the
    Hugging Face tokenizer does for Open-Sora: the first ``max_length - 1`` tokens, then ``eos``.

    Tokens may be ids or any per-token records (e.g. ComfyUI's ``(id, weight)`` pairs).
    Apply it **before** the encoder runs: T5 attends in both directions, so cutting its
    output afterwards would not give the same embeddings.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one token plus EOS), got {max_length}")
    tokens = list(tokens)
    if len(tokens) <= max_length:
        return tokens
    return tokens[: max_length - 1] + [eos]


def pad_caption(
    embeddings: torch.Tensor, max_length: int, attention_mask: torch.Tensor | None = None
) -> Caption:
    """One prompt's token embeddings ``[1, n, C]`` (or ``[n, C]``) -> padded :class:`Caption`
    with y (1, 1, max_length, C), zeros after the n tokens, and mask (1, max_length).

    ``attention_mask`` ([1, n] or [n]) selects the real tokens when the embeddings carry
    padding. More than ``max_length`` real tokens is an error: truncate the tokens with
    :func:`truncate_tokens` before encoding.
    """
    if embeddings.ndim == 3:
        if embeddings.shape[0] != 1:
            raise ValueError(f"pad_caption takes one prompt ([1, n, C]), got {tuple(embeddings.shape)}")
        embeddings = embeddings[0]
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [1, n, C] or [n, C], got {tuple(embeddings.shape)}")
    if attention_mask is not None:
        keep = attention_mask.reshape(-1).to(device=embeddings.device) != 0
        if keep.numel() != embeddings.shape[0]:
            raise ValueError(f"attention_mask has {keep.numel()} entries for {embeddings.shape[0]} tokens")
        embeddings = embeddings[keep]  # (n, C)
    n, channels = embeddings.shape
    if n == 0:
        raise ValueError("prompt has no tokens; a T5 prompt has at least its end-of-sequence token")
    if n > max_length:
        raise ValueError(
            f"prompt has {n} tokens but the model takes {max_length}; "
            f"truncate the tokens to {max_length - 1} + EOS before encoding (truncate_tokens)"
        )
    y = embeddings.new_zeros(1, 1, max_length, channels)
    y[0, 0, :n] = embeddings  # (1, 1, L, C)
    mask = torch.zeros(1, max_length, dtype=torch.int64, device=embeddings.device)
    mask[0, :n] = 1
    return Caption(y=y, mask=mask)


__all__ = ["Caption", "null_caption", "pad_caption", "truncate_tokens"]
