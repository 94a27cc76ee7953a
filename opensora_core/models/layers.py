"""Building blocks shared by STDiT (v1.0), STDiT2 (v1.1) and STDiT3 (v1.2).

Module and parameter names follow the official ``opensora/models/layers/blocks.py`` so that the
released state dicts load with ``strict=True``. Layers that own weights are built through an
injectable ``operations`` namespace (``Linear``, ``Conv3d``; default :mod:`torch.nn`), the way
ComfyUI's ``operations=`` works. Parameters that a module uses directly (modulation tables, the null
caption, the rotary frequencies, q/k norm gains) are cast to the input's device and dtype where used,
so partially loaded models work.

Token layout used by the blocks: ``(B, G, L, C)`` where attention runs over ``L`` inside each of the
``G`` groups. A spatial block sees ``(B, T, S, C)``; a temporal block attends over frames of the
transposed view ``(B, S, T, C)``. Neighbours: :mod:`.positions` (tables, RoPE), :mod:`.captions`
(caption path), :mod:`.inplace` (the in-place inference fast path), :mod:`.init`, :mod:`.config`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import fused, inplace
from .positions import FREQUENCY_EMBEDDING_SIZE, apply_rope, timestep_sinusoid
from .tensors import cast_to, layer_norm, tile_rows

RMS_NORM_EPS = 1e-6


# ==================================================================================================
# Normalisation
# ==================================================================================================


class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned gain, computed in float32.

    Follows opensora/models/layers/blocks.py ``LlamaRMSNorm``: the normalised value is cast back to the
    input dtype before the gain multiplies it.
    """

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast_to(self.weight, x) * rms_normalise(x, self.eps)


def rms_normalise(x: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dim in float32, returned in x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype)


# ==================================================================================================
# Attention
# ==================================================================================================


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention, (N, H, Lq, D) x (N, H, Lk, D) -> (N, H, Lq, D).

    ``key_mask`` (N, Lk) bool (True = attend), or ``bias``: an additive float bias broadcastable to
    (N, H, Lq, Lk), added to the scaled scores (Open-Sora-Plan's -10000 masks); not both.
    """
    if key_mask is not None and bias is not None:
        raise ValueError("attention: pass key_mask or bias, not both")
    mask = bias if key_mask is None else key_mask[:, None, None, :]  # (N, 1, 1, Lk) or the bias
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)


class Attention(nn.Module):
    """Self-attention over the L axis of (B, G, L, C) tokens: fused qkv, optional q/k RMS norm and RoPE.

    ``x`` may be a transposed view (a temporal block's (B, S, T, C) view of (B, T, S, C) tokens): it is
    copied once so that the projection runs as one 2-D GEMM (:func:`.tensors.gemm_rows`, in :mod:`.fused`).

    Follows opensora/models/layers/blocks.py ``Attention`` (qkv output read as [3, heads, head_dim]).
    ``rope_before_norm`` reproduces v1.1, which rotated q/k before the RMS norm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool,
        rope_before_norm: bool = False,
        device=None,
        dtype=None,
        operations=nn,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rope_before_norm = rope_before_norm
        self.qkv = operations.Linear(dim, 3 * dim, bias=True, device=device, dtype=dtype)
        self.q_norm = RMSNorm(self.head_dim, device=device, dtype=dtype) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, device=device, dtype=dtype) if qk_norm else None
        self.proj = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, G, L, C = x.shape
        qkv = fused.linear(self.qkv, x).reshape(B * G, L, 3, self.num_heads, self.head_dim)  # (BG, L, 3, H, D)
        if inplace.can_overwrite(qkv):
            gains, eps = None, RMS_NORM_EPS
            if self.q_norm is not None:
                gains = torch.stack([cast_to(self.q_norm.weight, qkv), cast_to(self.k_norm.weight, qkv)])  # (2, D)
                eps = self.q_norm.eps
            inplace.norm_and_rotate_qk_(qkv[:, :, :2], gains, rope, self.rope_before_norm, eps)  # q|k in place
            q, k, v = qkv.unbind(2)  # each (BG, L, H, D)
        else:
            q, k, v = qkv.unbind(2)
            q, k = self._norm_and_rotate(q, k, rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (BG, H, L, D)
        out = out.transpose(1, 2).reshape(B, G, L, C)  # (B, G, L, C)
        return fused.linear(self.proj, out)

    def _norm_and_rotate(self, q, k, rope):
        """q, k (BG, L, H, D) -> RMS-normed and rotated copies (autograd path, official op order)."""
        if rope is not None:
            cos, sin = (t[:, None, :] for t in rope)  # (L, 1, D/2): positions on the sequence axis
        if rope is not None and self.rope_before_norm:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and not self.rope_before_norm:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k


# ==================================================================================================
# Embedders
# ==================================================================================================


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (names of timm's ``Mlp``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, device=None, dtype=None,
                 operations=nn) -> None:
        super().__init__()
        self.fc1 = operations.Linear(in_features, hidden_features, bias=True, device=device, dtype=dtype)
        self.fc2 = operations.Linear(hidden_features, out_features, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fused.linear_gelu(self.fc1, x)  # (..., hidden)
        return fused.linear(self.fc2, h)


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; T, H, W zero-padded at the end to multiples of the patch.

    Follows opensora/models/layers/blocks.py ``PatchEmbed3D``. Returns tokens (B, T', S, C), S = H'·W'.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, dim: int, device=None, dtype=None,
                 operations=nn) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = operations.Conv3d(
            in_channels, dim, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype
        )

    def grid(self, size: Sequence[int]) -> tuple[int, int, int]:
        """Patch grid (T', H', W') for a latent of size (T, H, W)."""
        return tuple(-(-n // p) for n, p in zip(size, self.patch_size, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        T, H, W = x.shape[-3:]
        pad = ((-W) % pw, (-H) % ph, (-T) % pt)
        if any(pad):
            x = F.pad(x, (0, pad[0], 0, pad[1], 0, pad[2]))  # (B, C, T+, H+, W+)
        x = self.proj(x)  # (B, C, T', H', W')
        return x.flatten(3).permute(0, 2, 3, 1).contiguous()  # (B, T', S, C)


class TimestepEmbedder(nn.Module):
    """256-wide [cos, sin] sinusoid of a scalar -> Linear -> SiLU -> Linear (``mlp.0``, ``mlp.2``)."""

    def __init__(self, dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            operations.Linear(FREQUENCY_EMBEDDING_SIZE, dim, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(dim, dim, bias=True, device=device, dtype=dtype),
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t).to(dtype))  # (N, dim)


class SizeEmbedder(TimestepEmbedder):
    """Embeds each column of a (B', d) tensor like a timestep and concatenates: (B, d*dim).

    Follows opensora/models/layers/blocks.py ``SizeEmbedder``; rows are tiled up to the batch.
    """

    def forward(self, s: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        if s.dim() == 1:
            s = s[:, None]
        s = tile_rows(s, batch, "size/fps conditioning")  # (B, d)
        B, d = s.shape
        emb = self.mlp(timestep_sinusoid(s.reshape(-1)).to(dtype))  # (B*d, dim)
        return emb.reshape(B, -1)  # (B, d*dim)


# ==================================================================================================
# Modulation and output
# ==================================================================================================


def modulation(
    table: torch.Tensor, t: torch.Tensor, t0: torch.Tensor | None, frame_mask: torch.Tensor | None
) -> torch.Tensor:
    """Rows of a block's ``scale_shift_table`` (n, C) plus per-sample vectors -> (B, n, F, C).

    F = 1 without a frame mask; with one, F = T and frames whose flag is False take the ``t0`` rows
    (the official code computes both versions and selects per frame; selecting the parameters instead
    gives the same values).
    """
    n = table.shape[0]
    table = cast_to(table, t)[None]  # (1, n, C)
    rows = table + t.view(t.shape[0], n, -1)  # (B, n, C)
    if frame_mask is None:
        return rows[:, :, None]  # (B, n, 1, C)
    rows0 = table + t0.view(t0.shape[0], n, -1)  # (B, n, C)
    return torch.where(frame_mask[:, None, :, None], rows[:, :, None], rows0[:, :, None])  # (B, n, T, C)


def frame_mask_or_none(x_mask: torch.Tensor | None, batch: int, frames: int) -> torch.Tensor | None:
    """x_mask [B, T] bool (True = generated frame) as (B, T), or None when absent or all True
    (then the timestep-0 branch changes nothing and is skipped)."""
    if x_mask is None:
        return None
    if x_mask.dtype != torch.bool:
        raise ValueError(f"x_mask must be a bool tensor [B, T] (True = frame to generate), got dtype {x_mask.dtype}")
    if x_mask.dim() != 2 or x_mask.shape[1] != frames or x_mask.shape[0] not in (1, batch):
        raise ValueError(f"x_mask must be [B, T] = [{batch}, {frames}] (latent frames), got {tuple(x_mask.shape)}")
    if bool(x_mask.all()):
        return None
    return x_mask.expand(batch, frames)


class FinalLayer(nn.Module):
    """LayerNorm -> modulation by the timestep embedding -> Linear to patch outputs.

    Follows opensora/models/layers/blocks.py ``T2IFinalLayer``, including its quirk for condition frames:
    they get LN(LN(x)(1+scale_t)+shift_t)(1+scale_0)+shift_0 (the t-modulated tensor is normalised again).
    """

    def __init__(self, dim: int, num_patch: int, out_channels: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.linear = operations.Linear(dim, num_patch * out_channels, bias=True, device=device, dtype=dtype)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim, device=device, dtype=dtype) / dim**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor | None = None,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, S, C); t (B, C); frame_mask (B, T) or None -> (B, T, S, P*C_out)."""
        table = cast_to(self.scale_shift_table, x)
        shift, scale = (table[None] + t[:, None])[:, :, None, None].unbind(1)  # (B, 1, 1, C) each
        h = inplace.modulate(layer_norm(x), shift, scale)
        if frame_mask is not None:
            shift0, scale0 = (table[None] + t0[:, None])[:, :, None, None].unbind(1)
            h0 = inplace.modulate(layer_norm(h), shift0, scale0)
            h = torch.where(frame_mask[:, :, None, None], h, h0)
        return fused.linear(self.linear, h)


def unpatchify(
    x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], out_channels: int, size: Sequence[int]
) -> torch.Tensor:
    """(B, T', S, pt*ph*pw*C_out), outputs ordered (pt, ph, pw, C_out) -> (B, C_out, T, H, W) cropped to ``size``."""
    B = x.shape[0]
    (Tp, Hp, Wp), (pt, ph, pw) = grid, patch
    x = x.reshape(B, Tp, Hp, Wp, pt, ph, pw, out_channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, out_channels, Tp * pt, Hp * ph, Wp * pw)
    T, H, W = size
    return x[:, :, :T, :H, :W]


def run_block(block: nn.Module, checkpointing: bool, *args) -> torch.Tensor:
    """Call a block, through activation checkpointing (non-reentrant) when asked and grads are on."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)

