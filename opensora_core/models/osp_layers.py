"""Building blocks of the Open-Sora-Plan v1.3 transformer (``OpenSoraT2V_v1_3`` and its inpainting variant).

Module and parameter names follow the diffusers blocks the official code composes (``Attention``,
``FeedForward``, ``AdaLayerNormSingle``, ``PixArtAlphaTextProjection``; identical under diffusers 0.30.2
and 0.39) and opensora/models/diffusion/common.py @v1.3.1 (``PatchEmbed2D``, ``RoPE3D``), so the
released state dicts load with ``strict=True``. Layers that own weights are built through the injectable
``operations`` namespace (default :mod:`torch.nn`).

Token layout: (B, S, C) with S = T*H*W patch tokens in (t, h, w) order. Attention masks are additive
float biases (0 = keep, -10000 = masked, -9980 = Skiparse padding), exactly as the official processor
feeds them to ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import attention
from .positions import rope_frequencies, timestep_sinusoid

MASKED_BIAS = -10000.0  # (1 - mask) * -10000: the official latent and text mask bias
SKIPARSE_PAD_BIAS = -9980.0  # bias of the zero tokens Skiparse appends (prepare_sparse_mask)
ROPE_THETA = 10000.0
ACTIVATIONS = ("gelu", "gelu-approximate", "geglu")


# ==================================================================================================
# Masks
# ==================================================================================================


def latent_mask_bias(mask: torch.Tensor | None, batch: int, grid: tuple[int, int, int], patch: tuple[int, int, int],
                     dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Self-attention bias (B, S) from a latent mask (B, T, H, W) (1 = valid latent pixel), or zeros for None.

    Follows modeling_opensora.py ``forward``: the mask is max-pooled over the patch (a token is valid if
    any of its pixels is), then (1 - bool) * -10000 in the model dtype.
    """
    if mask is None:
        return torch.zeros(batch, grid[0] * grid[1] * grid[2], device=device, dtype=dtype)
    if mask.dim() != 4 or mask.shape[0] != batch:
        raise ValueError(
            f"attention_mask must be the latent mask [B, T, H, W] = [{batch}, ...] (1 = valid), got {tuple(mask.shape)}"
        )
    mask = mask.to(device=device, dtype=dtype)[:, None]  # (B, 1, T, H, W)
    pooled = F.max_pool3d(mask, kernel_size=patch, stride=patch)  # (B, 1, T', H', W')
    if tuple(pooled.shape[2:]) != tuple(grid):
        raise ValueError(f"attention_mask {tuple(mask.shape)} does not cover the latent patch grid {grid}")
    return (1 - pooled.flatten(1).bool().to(dtype)) * MASKED_BIAS  # (B, S)


def text_mask_bias(mask: torch.Tensor | None, batch: int, length: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """Cross-attention bias (B, L) from the text mask (B, L) or (B, 1, L) (1 = token), zeros for None.

    Official: (1 - mask) * -10000 in the model dtype (no bool conversion for this one).
    """
    if mask is None:
        return torch.zeros(batch, length, device=device, dtype=dtype)
    mask = mask.reshape(mask.shape[0], -1) if mask.dim() == 3 and mask.shape[1] == 1 else mask
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(f"encoder_attention_mask must be [B, L] or [B, 1, L] = [{batch}, 1, {length}], got "
                         f"{tuple(mask.shape)}")
    return (1 - mask.to(device=device, dtype=dtype)) * MASKED_BIAS


# ==================================================================================================
# Skiparse (sparse 1D attention)
# ==================================================================================================


@dataclass(frozen=True)
class Skiparse:
    """How one layer regroups its tokens: ``n`` = sparse_n, ``group`` = group skip (else single skip).

    Follows modules.py ``OpenSoraAttnProcessor2_0._sparse_1d``: the sequence is zero-padded to a multiple
    of n^2; single skip puts token i in group i mod n; group skip views the tokens as (N, m=n, k=n) and
    puts token (N, m, k) in group m (ordered by N, k inside it). Attention then runs inside each group.
    """

    n: int
    group: bool

    def padding(self, length: int) -> int:
        return (-length) % (self.n * self.n)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Lp, C) -> (B*n, Lp/n, C), groups of one sample consecutive."""
        B, L, C = x.shape
        n = self.n
        if self.group:
            return x.view(B, L // (n * n), n, n, C).transpose(1, 2).reshape(B * n, L // n, C)
        return x.view(B, L // n, n, C).transpose(1, 2).reshape(B * n, L // n, C)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`: (B*n, Lp/n, C) -> (B, Lp, C)."""
        Bn, Lg, C = x.shape
        n = self.n
        if self.group:
            return x.view(Bn // n, n, Lg // n, n, C).transpose(1, 2).reshape(Bn // n, Lg * n, C)
        return x.view(Bn // n, n, Lg, C).transpose(1, 2).reshape(Bn // n, Lg * n, C)

    def bias(self, bias: torch.Tensor) -> torch.Tensor:
        """Per-group key bias: (B, S) -> (B*n, 1, 1, Lp/n), padded keys at -9980."""
        padded = F.pad(bias, (0, self.padding(bias.shape[1])), value=SKIPARSE_PAD_BIAS)  # (B, Lp)
        return self.split(padded[:, :, None])[:, None, None, :, 0]


def layer_skiparse(index: int, num_layers: int, sparse1d: bool, sparse_n: int) -> Skiparse | None:
    """The attention pattern of layer ``index``: None = full 3D attention.

    Official rule (modeling_opensora.py): with ``sparse1d`` the layers 2 .. 29 are sparse (the first two
    and the LAST TWO OF 32 run full attention; the indices 1 < i < 30 are hard-coded, so a model with
    fewer than 30 layers has every layer from 2 on sparse), even layers single skip, odd layers group skip.
    """
    if not sparse1d or sparse_n == 1 or not 1 < index < 30:
        return None
    return Skiparse(sparse_n, group=index % 2 == 1)


# ==================================================================================================
# RoPE 3D
# ==================================================================================================


def rope_axis_table(length: int, dim: int, scale: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of one axis, each (length, dim): positions / scale times 10000^(-2i/dim), duplicated.

    Follows common.py ``RoPE3D.get_cos_sin``: float32 angles cast to the token dtype, then cos/sin.
    """
    inv_freq = rope_frequencies(dim, ROPE_THETA, device=device)
    positions = torch.arange(length, device=device, dtype=inv_freq.dtype) / scale
    angles = torch.outer(positions, inv_freq).to(dtype)  # (length, dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # (length, dim)
    return angles.cos(), angles.sin()


def rope_3d_tables(grid: tuple[int, int, int], head_dim: int, scales: tuple[float, float, float], device,
                   dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (cos, sin), each (S, head_dim): the head dim split in three parts (t, y, x), each rotated
    with its own integer coordinate of the patch grid (tokens in (t, h, w) order)."""
    dim = head_dim // 3
    T, H, W = grid
    axes = [rope_axis_table(n, dim, s, device, dtype) for n, s in zip(grid, scales, strict=True)]
    t_idx = torch.arange(T, device=device)[:, None, None].expand(T, H, W).reshape(-1)
    y_idx = torch.arange(H, device=device)[None, :, None].expand(T, H, W).reshape(-1)
    x_idx = torch.arange(W, device=device)[None, None, :].expand(T, H, W).reshape(-1)
    cos = torch.cat([axes[i][0][idx] for i, idx in enumerate((t_idx, y_idx, x_idx))], dim=-1)  # (S, head_dim)
    sin = torch.cat([axes[i][1][idx] for i, idx in enumerate((t_idx, y_idx, x_idx))], dim=-1)
    return cos, sin


def apply_rope_3d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, D) -> x*cos + rotate_half(x)*sin, rotate_half taken inside each third of D
    (``RoPE3D.apply_rope1d`` per axis: halves, not interleaved pairs)."""
    B, S, H, D = x.shape
    parts = x.view(B, S, H, 3, 2, D // 6)
    rotated = torch.stack((-parts[:, :, :, :, 1], parts[:, :, :, :, 0]), dim=4).view(B, S, H, D)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


@dataclass
class AttentionContext:
    """Per-forward values the blocks read."""

    grid: tuple[int, int, int]  # (T, H, W) patch grid
    rope: tuple[torch.Tensor, torch.Tensor]  # per-token (cos, sin), each (S, head_dim)
    self_bias: torch.Tensor  # (B, S) latent mask bias
    text_bias: torch.Tensor  # (B, L) text mask bias


# ==================================================================================================
# Attention
# ==================================================================================================


class OspAttention(nn.Module):
    """diffusers ``Attention`` with the v1.3 processor: q/k/v/out projections, no q/k norm.

    Self-attention applies RoPE-3D to q and k and, in sparse layers, runs inside the Skiparse groups.
    Cross-attention is dense: the official sparse cross-attention permutes the queries and repeats the
    text keys n times, which gives every query the same keys, so its result is the dense one.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int, bias: bool, dropout: float,
                 device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = operations.Linear(dim, inner, bias=bias, device=device, dtype=dtype)
        self.to_k = operations.Linear(kv_dim, inner, bias=bias, device=device, dtype=dtype)
        self.to_v = operations.Linear(kv_dim, inner, bias=bias, device=device, dtype=dtype)
        self.to_out = nn.ModuleList(
            [operations.Linear(inner, dim, bias=True, device=device, dtype=dtype), nn.Dropout(dropout)]
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim)  # (B, L, H, D)

    def self_attention(self, x: torch.Tensor, ctx: AttentionContext, sparse: Skiparse | None) -> torch.Tensor:
        S = x.shape[1]
        cos, sin = ctx.rope
        q = apply_rope_3d(self._heads(self.to_q(x)), cos, sin).flatten(2)  # (B, S, HD)
        k = apply_rope_3d(self._heads(self.to_k(x)), cos, sin).flatten(2)  # (B, S, HD)
        v = self.to_v(x)  # (B, S, HD)
        bias = ctx.self_bias[:, None, None, :]  # (B, 1, 1, S)
        if sparse is not None:
            pad = sparse.padding(S)
            q, k, v = (sparse.split(F.pad(t, (0, 0, 0, pad))) for t in (q, k, v))  # (B*n, Lp/n, HD)
            bias = sparse.bias(ctx.self_bias)  # (B*n, 1, 1, Lp/n)
        out = self._attend(q, k, v, bias)  # (B|B*n, L, HD)
        if sparse is not None:
            out = sparse.merge(out)[:, :S]  # (B, S, HD)
        return self._project(out)

    def cross_attention(self, x: torch.Tensor, text: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(text), self.to_v(text)  # (B, S, HD), (B, L, HD) x2
        return self._project(self._attend(q, k, v, ctx.text_bias[:, None, None, :]))

    def _attend(self, q, k, v, bias) -> torch.Tensor:
        q, k, v = (self._heads(t).transpose(1, 2) for t in (q, k, v))  # (N, H, L, D)
        out = attention(q, k, v, bias=bias.to(q.dtype))  # (N, H, Lq, D)
        return out.transpose(1, 2).flatten(2)  # (N, Lq, HD)

    def _project(self, out: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](out))


# ==================================================================================================
# Feed-forward, embeddings
# ==================================================================================================


class GELUProjection(nn.Module):
    """diffusers ``GELU`` / ``GEGLU`` activation modules: a Linear ``proj`` then GELU (GEGLU: gated)."""

    def __init__(self, dim: int, inner: int, kind: str, bias: bool, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"activation_fn {kind!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
        self.kind = kind
        width = 2 * inner if kind == "geglu" else inner
        self.proj = operations.Linear(dim, width, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.kind == "geglu":
            h, gate = h.chunk(2, dim=-1)
            return h * F.gelu(gate)
        return F.gelu(h, approximate="tanh" if self.kind == "gelu-approximate" else "none")


class FeedForward(nn.Module):
    """diffusers ``FeedForward``: ``net`` = [activation with proj, Dropout, Linear], inner width 4*dim."""

    def __init__(self, dim: int, activation: str, dropout: float, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        inner = 4 * dim
        self.net = nn.ModuleList(
            [
                GELUProjection(dim, inner, activation, True, device=device, dtype=dtype, operations=operations),
                nn.Dropout(dropout),
                operations.Linear(inner, dim, bias=True, device=device, dtype=dtype),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding``: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, dim, bias=True, device=device, dtype=dtype)
        self.act = nn.SiLU()
        self.linear_2 = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class AdaLayerNormSingle(nn.Module):
    """diffusers ``AdaLayerNormSingle`` without size conditions: timestep -> (6C modulation, C embedding).

    ``emb.timestep_embedder`` embeds the 256-wide [cos, sin] sinusoid (flip_sin_to_cos, shift 0: the
    same table as :func:`~.layers.timestep_sinusoid`); ``linear`` maps SiLU(embedding) to 6C.
    """

    FREQUENCY_CHANNELS = 256

    def __init__(self, dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.emb = nn.Module()
        self.emb.timestep_embedder = TimestepEmbedding(self.FREQUENCY_CHANNELS, dim, device, dtype, operations)
        self.silu = nn.SiLU()
        self.linear = operations.Linear(dim, 6 * dim, bias=True, device=device, dtype=dtype)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.emb.timestep_embedder(timestep_sinusoid(timestep, self.FREQUENCY_CHANNELS).to(dtype))  # (B, C)
        return self.linear(self.silu(embedded)), embedded  # (B, 6C), (B, C)


class TextProjection(nn.Module):
    """diffusers ``PixArtAlphaTextProjection``: linear_1 -> GELU(tanh) -> linear_2 (caption -> hidden)."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, dim, bias=True, device=device, dtype=dtype)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class PatchEmbed2D(nn.Module):
    """common.py ``PatchEmbed2D``: per-frame Conv2d with kernel = stride = patch; (B, C, T, H, W) -> (B, S, D)."""

    def __init__(self, patch: int, in_channels: int, dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.proj = operations.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True, device=device,
                                      dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # (BT, C, H, W)
        tokens = self.proj(frames)  # (BT, D, H', W')
        return tokens.view(B, T, tokens.shape[1], -1).permute(0, 1, 3, 2).reshape(B, -1, tokens.shape[1])  # (B, S, D)
