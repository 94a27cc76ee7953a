"""The caption path: the caption projection with the learned null caption, token selection, and the
cross-attention of video tokens to their own sample's caption tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import fused
from .layers import Mlp, attention
from .tensors import cast_to, tile_rows


@dataclass
class Captions:
    """Projected caption tokens per sample, padded to the longest: ``tokens`` (B, Lk, C) and
    ``key_mask`` (B, Lk) bool (True = attend) or None when every token of every row is valid."""

    tokens: torch.Tensor
    key_mask: torch.Tensor | None


class CrossAttention(nn.Module):
    """Video tokens attend to their own sample's caption tokens (no norm, no RoPE).

    Follows opensora/models/layers/blocks.py ``MultiHeadCrossAttention``; the official packed sequence
    with a block-diagonal mask is computed here per sample with a key padding mask (same result).
    """

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)
        self.kv_linear = operations.Linear(dim, 2 * dim, bias=True, device=device, dtype=dtype)
        self.proj = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, captions: Captions) -> torch.Tensor:
        shape = x.shape  # (B, ..., C)
        B = shape[0]
        q = fused.linear(self.q_linear, x).reshape(B, -1, self.num_heads, self.head_dim)  # (B, N, H, D)
        kv = fused.linear(self.kv_linear, captions.tokens).reshape(B, -1, 2, self.num_heads, self.head_dim)  # (B, Lk, 2, H, D)
        k, v = kv.unbind(2)  # (B, Lk, H, D)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), captions.key_mask)  # (B, H, N, D)
        return fused.linear(self.proj, out.transpose(1, 2).reshape(shape))


class CaptionEmbedder(nn.Module):
    """Caption projection ``y_proj`` (fc1 -> GELU(tanh) -> fc2) and the null caption ``y_embedding``.

    Follows opensora/models/layers/blocks.py ``CaptionEmbedder``. Only valid tokens are projected (the
    projection is per token, so this equals projecting all and selecting).
    """

    def __init__(self, caption_channels: int, dim: int, token_num: int, uncond_prob: float, device=None, dtype=None,
                 operations=nn) -> None:
        super().__init__()
        self.uncond_prob = uncond_prob
        self.y_proj = Mlp(caption_channels, dim, dim, device=device, dtype=dtype, operations=operations)
        self.register_buffer("y_embedding", self.null_caption_init(token_num, caption_channels, device, dtype))

    @staticmethod
    def null_caption_init(token_num: int, channels: int, device=None, dtype=None) -> torch.Tensor:
        return torch.randn(token_num, channels, device=device, dtype=dtype) / channels**0.5

    def drop_captions(self, y: torch.Tensor) -> torch.Tensor:
        """Training: replace each sample's whole caption by the null caption with prob ``uncond_prob``."""
        if tuple(y.shape[-2:]) != tuple(self.y_embedding.shape):
            raise ValueError(
                f"caption dropout needs captions padded to the null caption's shape {tuple(self.y_embedding.shape)}, "
                f"got y {tuple(y.shape)}; pad T5 outputs to model_max_length"
            )
        drop = torch.rand(y.shape[0], device=y.device) < self.uncond_prob  # (B,)
        return torch.where(drop[:, None, None], cast_to(self.y_embedding, y), y)  # (B, L, Cc)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None) -> Captions:
        """y (B, L, Cc), mask (B, L) or None -> projected valid tokens per sample."""
        tokens, key_mask = select_valid_tokens(y, mask)  # (B, Lk, Cc)
        return Captions(self.y_proj(tokens), key_mask)


def caption_mask(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """The caption token mask as (B, L) bool, tiled when it has fewer rows than the batch (CFG)."""
    if mask is None:
        return None
    mask = mask.reshape(-1, mask.shape[-1]) if mask.dim() > 2 else mask  # accepts (B, 1, 1, L)
    if mask.dim() != 2 or mask.shape[1] != length:
        raise ValueError(f"caption mask must be [B, {length}] (one flag per caption token), got {tuple(mask.shape)}")
    return tile_rows(mask, batch, "caption mask") != 0


def select_valid_tokens(y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gather each row's valid tokens (in order) to the front, padded to the longest row.

    y (B, L, Cc), mask (B, L) bool -> tokens (B, Lk, Cc) and key mask (B, Lk) (None if no padding).
    """
    if mask is None:
        return y, None
    lengths = mask.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError("caption mask has a sample without any valid token; every caption needs at least one")
    longest = int(lengths.max())
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :longest]  # valid positions first
    tokens = torch.gather(y, 1, order[:, :, None].expand(-1, -1, y.shape[-1]))  # (B, Lk, Cc)
    key_mask = torch.arange(longest, device=y.device)[None] < lengths[:, None]  # (B, Lk)
    return tokens, (None if bool(key_mask.all()) else key_mask)


def packed_captions(y: torch.Tensor, lengths, batch: int) -> Captions:
    """Already-embedded captions (``skip_y_embedder``): all tokens of ``y`` form one packed sequence.

    With per-sample ``lengths`` each sample attends to its own segment; with ``lengths=None`` every sample
    attends to ALL tokens (the official code passes no mask to the attention then).
    """
    flat = y.reshape(-1, y.shape[-1])  # (Ltot, C)
    if lengths is None:
        return Captions(flat[None].expand(batch, -1, -1), None)
    lengths = [int(n) for n in (lengths.reshape(-1).tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    if len(lengths) != batch or sum(lengths) != flat.shape[0]:
        raise ValueError(
            f"skip_y_embedder: mask must give one caption length per sample summing to the {flat.shape[0]} "
            f"packed tokens of y, got {lengths}"
        )
    segments = list(flat.split(lengths))
    tokens = nn.utils.rnn.pad_sequence(segments, batch_first=True)  # (B, Lk, C)
    key_mask = torch.arange(tokens.shape[1], device=y.device)[None] < torch.tensor(lengths, device=y.device)[:, None]
    return Captions(tokens, None if bool(key_mask.all()) else key_mask)

