"""Building blocks shared by STDiT (v1.0), STDiT2 (v1.1) and STDiT3 (v1.2).

Module and parameter names follow the official ``opensora/models/layers/blocks.py`` so that the
released state dicts load with ``strict=True``. Layers that own weights are built through an
injectable ``operations`` namespace (``Linear``, ``Conv3d``; default :mod:`torch.nn`), the way
ComfyUI's ``operations=`` works. Parameters that a module uses directly (modulation tables, the null
caption, the rotary frequencies, q/k norm gains) are cast to the input's device and dtype where used,
so partially loaded models work.

Token layout used by the blocks: ``(B, G, L, C)`` where attention runs over ``L`` inside each of the
``G`` groups. A spatial block sees ``(B, T, S, C)``; a temporal block attends over frames of the
transposed view ``(B, S, T, C)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6
RMS_NORM_EPS = 1e-6
FREQUENCY_EMBEDDING_SIZE = 256

# Keys that Hugging Face writes into every config.json; they describe the file, not the model.
HF_BOOKKEEPING_KEYS = frozenset(
    {"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path", "auto_map"}
)
# Official switches that pick kernels, parallelism or which parameters train; none changes the maths.
# Each class keeps the ones its official constructor has as config fields and ignores the other spellings.
KERNEL_AND_TRAINING_FLAGS = frozenset(
    {
        "enable_flash_attn",
        "enable_flashattn",
        "enable_layernorm_kernel",
        "enable_sequence_parallelism",
        "only_train_temporal",
        "freeze_y_embedder",
        "skip_y_embedder",
        "freeze",
        "no_temporal_pos_emb",
    }
)

ConfigT = TypeVar("ConfigT")


# ==================================================================================================
# Configs
# ==================================================================================================


def config_from_official(config_cls: type[ConfigT], official: Mapping[str, Any], class_name: str) -> ConfigT:
    """Build ``config_cls`` from official constructor kwargs.

    Hugging Face bookkeeping keys and the kernel/training flags are accepted; any other key that is
    not a field of ``config_cls`` raises ``ValueError`` naming it.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(k for k in official if k not in fields | HF_BOOKKEEPING_KEYS | KERNEL_AND_TRAINING_FLAGS)
    if unknown:
        raise ValueError(
            f"{class_name}: unknown config key(s) {', '.join(map(repr, unknown))}. Pass the official {class_name} "
            f"constructor kwargs ({', '.join(sorted(fields))}); remove or rename the unknown key(s)."
        )
    return config_cls(**{k: v for k, v in official.items() if k in fields})


def as_triple(value: Sequence, name: str, allow_none: bool = False) -> tuple:
    """A 3-tuple from a list/tuple (JSON configs give lists)."""
    if value is None or len(value) != 3:
        raise ValueError(f"{name} must have 3 entries (T, H, W), got {value!r}")
    triple = tuple(None if v is None else int(v) for v in value)
    if not allow_none and any(v is None for v in triple):
        raise ValueError(f"{name} must be three integers (T, H, W), got {value!r}")
    return triple


def check_heads(hidden_size: int, num_heads: int, class_name: str, rope: bool) -> None:
    """Shape rules shared by the configs (2D sin-cos table needs hidden % 4; RoPE needs an even head_dim)."""
    if hidden_size % num_heads:
        raise ValueError(f"{class_name}: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if hidden_size % 4:
        raise ValueError(f"{class_name}: hidden_size {hidden_size} must be divisible by 4 (2D sin-cos table)")
    if rope and (hidden_size // num_heads) % 2:
        raise ValueError(f"{class_name}: head_dim {hidden_size // num_heads} must be even (rotary embedding)")


# ==================================================================================================
# Small functions
# ==================================================================================================


def cast_to(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``like``'s device and dtype (no copy when already there)."""
    return tensor.to(device=like.device, dtype=like.dtype)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels without affine parameters (eps 1e-6), as every STDiT norm."""
    return F.layer_norm(x, (x.shape[-1],), eps=LAYER_NORM_EPS)


def can_overwrite(*tensors: torch.Tensor) -> bool:
    """True when autograd records none of ``tensors`` (inference): a result may then overwrite a
    temporary this code created, which saves a fresh allocation and a memory pass per op."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in one pass (``scale``/``shift`` broadcast over tokens).

    ``x`` must be a temporary (a LayerNorm output): without autograd it is overwritten.
    """
    if can_overwrite(x, shift, scale):
        return torch.addcmul(shift, x, 1 + scale, out=x)
    return torch.addcmul(shift, x, 1 + scale)


def add(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x + other``; without autograd ``x`` (a tensor this code owns) is updated in place."""
    return x.add_(other) if can_overwrite(x, other) else x + other


def residual(
    x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor | None, drop_prob: float, training: bool
) -> torch.Tensor:
    """``x + drop_path(gate * branch)`` in one pass when stochastic depth is off.

    ``x`` is the residual stream, owned by the model: without autograd it is updated in place.
    """
    if training and drop_prob > 0.0:
        branch = branch if gate is None else gate * branch
        keep = 1.0 - drop_prob
        sample_keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
        return x + branch * sample_keep.div_(keep)
    if gate is None:
        return add(x, branch)
    if can_overwrite(x, branch, gate):
        return x.addcmul_(gate, branch)
    return torch.addcmul(x, gate, branch)


def timestep_sinusoid(t: torch.Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE) -> torch.Tensor:
    """(N,) scalars -> (N, dim) float32 ``[cos(t f), sin(t f)]`` with f_k = 10000^(-k/(dim/2)).

    Follows opensora/models/layers/blocks.py ``TimestepEmbedder.timestep_embedding``: cosine first.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def tile_rows(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Repeat a tensor with fewer rows than the batch (classifier-free guidance doubles the batch)."""
    rows = value.shape[0]
    if rows == batch:
        return value
    if rows == 0 or batch % rows:
        raise ValueError(f"{name} has {rows} rows, which does not divide the batch size {batch}")
    return value.repeat(batch // rows, *([1] * (value.dim() - 1)))


def scalar_per_sample(value: torch.Tensor | float | None, batch: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor from a tensor of B (or fewer, tiled) rows; ``None`` is an error."""
    if value is None:
        raise ValueError(f"{name} is required for this model (a tensor with one value per sample)")
    value = torch.as_tensor(value, device=like.device).reshape(-1)
    return tile_rows(value, batch, name)


# ==================================================================================================
# Positional tables
# ==================================================================================================


def sincos_2d_dynamic(
    dim: int, rows: int, cols: int, scale: float, base_size: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(rows*cols, dim) table for a ``rows x cols`` patch grid, computed per call (v1.1/v1.2).

    Follows opensora/models/layers/blocks.py ``PositionEmbedding2D``: coordinates divided by ``scale`` and
    stretched to ``base_size``; the first half encodes the COLUMN coordinate, the second the row; each half
    is [sin, cos] with inverse frequencies 10000^(-2k/(dim/2)). The frequency table is rounded to the
    compute dtype first, as the official module's buffer is when the model runs in bf16.
    """
    half = dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=device).float() / half))
    inv_freq = inv_freq.to(dtype).float()
    row_pos = torch.arange(rows, device=device) / scale
    col_pos = torch.arange(cols, device=device) / scale
    if base_size is not None:
        row_pos *= base_size / rows
        col_pos *= base_size / cols
    col_pos = col_pos[None, :].expand(rows, cols).reshape(-1)  # (rows*cols,)
    row_pos = row_pos[:, None].expand(rows, cols).reshape(-1)  # (rows*cols,)

    def sin_cos(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * inv_freq[None]  # (N, dim/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    return torch.cat([sin_cos(col_pos), sin_cos(row_pos)], dim=-1).to(dtype)  # (N, dim)


def resolution_pos_table(config, grid, height, width, like: torch.Tensor) -> torch.Tensor:
    """(S, C) table of v1.1/v1.2 for the patch grid: scale = sqrt(height[0]*width[0]) / input_sq_size
    (only sample 0's pixel size is used), base size = round(sqrt(S))."""
    if height is None or width is None:
        raise ValueError("height and width are required (pixel size of the video, one value per sample)")
    _, rows, cols = grid
    first_height, first_width = (float(torch.as_tensor(v).reshape(-1)[0]) for v in (height, width))
    scale = (first_height * first_width) ** 0.5 / config.input_sq_size
    base_size = round((rows * cols) ** 0.5)
    return sincos_2d_dynamic(config.hidden_size, rows, cols, scale, base_size, like.device, like.dtype)


def _sincos_1d_float64(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) float64 [sin, cos] with omega_k = 10000^(-k/(dim/2)) (MAE tables)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.reshape(-1).double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_fixed(dim: int, rows: int, cols: int, scale: float, device=None) -> torch.Tensor:
    """(1, rows*cols, dim) float32 table of v1.0 (fixed size, coordinates divided by ``scale``).

    Follows opensora/models/layers/blocks.py ``get_2d_sincos_pos_embed``: float32 grid, float64 sin/cos,
    first half = column coordinate.
    """
    row_pos = torch.arange(rows, dtype=torch.float32, device=device) / scale
    col_pos = torch.arange(cols, dtype=torch.float32, device=device) / scale
    col_grid = col_pos[None, :].expand(rows, cols)  # (rows, cols)
    row_grid = row_pos[:, None].expand(rows, cols)  # (rows, cols)
    table = torch.cat([_sincos_1d_float64(dim // 2, col_grid), _sincos_1d_float64(dim // 2, row_grid)], dim=1)
    return table.float()[None]


def sincos_1d_fixed(dim: int, length: int, scale: float, device=None) -> torch.Tensor:
    """(1, length, dim) float32 temporal table of v1.0 (``get_1d_sincos_pos_embed``: positions / scale)."""
    pos = torch.arange(length, dtype=torch.float64, device=device) / scale
    return _sincos_1d_float64(dim, pos).float()[None]


# ==================================================================================================
# Normalisation and rotary embedding
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


def rms_normalise_(x: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """In-place :func:`rms_normalise` (float32 statistics, no full-size temporary)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # sqrt(sum x^2)
    return x.mul_(torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps)))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full head dim with interleaved pairs.

    Holds ``freqs`` = 10000^(-2i/dim) as a non-trainable Parameter, which is how the official checkpoints
    store it (``rope.freqs``; rotary-embedding-torch 0.5.3 ``RotaryEmbedding(dim)``).
    """

    def __init__(self, dim: int, theta: float = 10000.0, device=None, dtype=None) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs.to(dtype) if dtype is not None else freqs, requires_grad=False)

    def reset_parameters(self) -> None:
        dim = 2 * self.freqs.shape[0]
        with torch.no_grad():
            self.freqs.copy_(1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=self.freqs.device).float() / dim)))

    def tables(self, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (length, dim/2): angles = position * freq, computed in ``like``'s dtype
        as the official helper does (in bf16 the angles themselves are rounded)."""
        freqs = cast_to(self.freqs, like)
        positions = torch.arange(length, device=like.device, dtype=like.dtype)
        angles = positions[:, None] * freqs[None]  # (L, dim/2)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs: out[2i] = x[2i] cos_i - x[2i+1] sin_i, out[2i+1] = x[2i+1] cos_i + x[2i] sin_i.

    ``cos``/``sin`` (..., dim/2) broadcast against x's pairs (positions on the sequence axis).
    """
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """In-place :func:`apply_rope` (one half-size temporary)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    even_before = even.clone()
    even.mul_(cos).addcmul_(odd, sin, value=-1)
    odd.mul_(cos).addcmul_(even_before, sin)
    return x


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
        qkv = self.qkv(x).reshape(B * G, L, 3, self.num_heads, self.head_dim)  # (BG, L, 3, H, D)
        if can_overwrite(qkv):
            self._norm_and_rotate_(qkv[:, :, :2], rope)  # q and k together, in place
            q, k, v = qkv.unbind(2)  # each (BG, L, H, D)
        else:
            q, k, v = qkv.unbind(2)
            q, k = self._norm_and_rotate(q, k, rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (BG, H, L, D)
        out = out.transpose(1, 2).reshape(B, G, L, C)  # (B, G, L, C)
        return self.proj(out)

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

    def _norm_and_rotate_(self, qk: torch.Tensor, rope) -> None:
        """Same on the (BG, L, 2, H, D) q|k view of the qkv output, in place."""
        if rope is not None:
            cos, sin = (t[:, None, None, :] for t in rope)  # (L, 1, 1, D/2)
        if rope is not None and self.rope_before_norm:
            apply_rope_(qk, cos, sin)
        if self.q_norm is not None:
            gains = torch.stack([cast_to(self.q_norm.weight, qk), cast_to(self.k_norm.weight, qk)])  # (2, D)
            rms_normalise_(qk, self.q_norm.eps).mul_(gains[:, None])
        if rope is not None and not self.rope_before_norm:
            apply_rope_(qk, cos, sin)


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
        q = self.q_linear(x).reshape(B, -1, self.num_heads, self.head_dim)  # (B, N, H, D)
        kv = self.kv_linear(captions.tokens).reshape(B, -1, 2, self.num_heads, self.head_dim)  # (B, Lk, 2, H, D)
        k, v = kv.unbind(2)  # (B, Lk, H, D)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), captions.key_mask)  # (B, H, N, D)
        return self.proj(out.transpose(1, 2).reshape(shape))


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
        h = self.fc1(x)
        h = torch.ops.aten.gelu_(h, approximate="tanh") if can_overwrite(h) else F.gelu(h, approximate="tanh")
        return self.fc2(h)


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
        h = modulate(layer_norm(x), shift, scale)
        if frame_mask is not None:
            shift0, scale0 = (table[None] + t0[:, None])[:, :, None, None].unbind(1)
            h0 = modulate(layer_norm(h), shift0, scale0)
            h = torch.where(frame_mask[:, :, None, None], h, h0)
        return self.linear(h)


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


# ==================================================================================================
# Initialisation and training helpers
# ==================================================================================================


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear (DiT's ``_basic_init``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def zero_(*tensors: torch.Tensor | None) -> None:
    for tensor in tensors:
        if tensor is not None:
            nn.init.zeros_(tensor)


def reset_table_(table: torch.Tensor) -> None:
    """Modulation tables start as randn / sqrt(hidden)."""
    with torch.no_grad():
        table.copy_(torch.randn_like(table) / table.shape[-1] ** 0.5)


def freeze_(parameters) -> None:
    for p in parameters:
        p.requires_grad_(False)


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``drop_path``."""
    return torch.linspace(0, drop_path, depth, device="cpu").tolist()


def run_block(block: nn.Module, checkpointing: bool, *args) -> torch.Tensor:
    """Call a block, through activation checkpointing (non-reentrant) when asked and grads are on."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def parse_dtype(value: Any) -> torch.dtype:
    """A torch dtype from a torch.dtype or a name such as "bf16", "float16", "torch.float32"."""
    if isinstance(value, torch.dtype):
        return value
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "half": torch.float16, "fp32": torch.float32,
             "float": torch.float32}
    key = str(value).removeprefix("torch.")
    dtype = names.get(key, getattr(torch, key, None))
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}; use bf16, fp16 or fp32")
    return dtype
