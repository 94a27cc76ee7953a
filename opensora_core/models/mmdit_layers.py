"""Blocks of the Open-Sora 2.0 MMDiT (a Flux-style multimodal DiT).

Follows opensora/models/mmdit/layers.py and math.py of hpcaitech/Open-Sora (main, 2.0 code). Module and
parameter names equal the official ones, so ``Open_Sora_v2.safetensors`` loads with ``strict=True``.
Linear layers are built through an injectable ``operations`` namespace (default :mod:`torch.nn`); the q/k
RMS-norm gains are used directly and cast to the input's device/dtype where used.

Token layout: ``(B, L, C)`` sequences; attention heads as ``(B, L, H, D)``. The double-stream blocks keep
text and image tokens apart (own weights per stream) and attend jointly over ``[txt, img]``; the
single-stream blocks run on that concatenation.

Without autograd the blocks overwrite temporaries they own (modulated inputs, q/k, the fused value+MLP
buffer) instead of allocating new ones: same values, less peak memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inplace import can_overwrite, gelu_tanh, modulate, residual, rms_normalise_
from .layers import attention, rms_normalise
from .positions import apply_rope, rope_frequencies, timestep_sinusoid
from .tensors import cast_to, layer_norm

TIME_FACTOR = 1000.0  # the sampler's t in [0, 1] is scaled to [0, 1000] before the sinusoid
TIMESTEP_DIM = 256
ROPE_CHUNK_ELEMENTS = 1 << 24  # q/k elements rotated per float32 temporary in the in-place RoPE (64 MiB)

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (B, L, head_dim) float32


# ==================================================================================================
# Timestep embedding
# ==================================================================================================


def timestep_embedding(t: torch.Tensor, dim: int = TIMESTEP_DIM) -> torch.Tensor:
    """(N,) t in [0, 1] -> (N, dim) ``[cos, sin]`` of ``1000 t * f_j`` (:func:`~.positions.timestep_sinusoid`).

    Follows layers.py ``timestep_embedding``: t is multiplied by 1000 in its own dtype (the sampler passes it
    in the model dtype), the sinusoid is computed in float32 and cast back to t's dtype.
    """
    t = TIME_FACTOR * t
    embedding = timestep_sinusoid(t, dim)  # (N, dim) float32
    return embedding.to(t.dtype) if t.is_floating_point() else embedding


class MLPEmbedder(nn.Module):
    """in_layer -> SiLU -> out_layer (``time_in``, ``vector_in``, ``guidance_in``)."""

    def __init__(self, in_dim: int, hidden_dim: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.in_layer = operations.Linear(in_dim, hidden_dim, bias=True, device=device, dtype=dtype)
        self.out_layer = operations.Linear(hidden_dim, hidden_dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


# ==================================================================================================
# Rotary position embedding over (t, h, w)
# ==================================================================================================


def rope_tables(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> Rope:
    """Released RoPE tables (``LigerEmbedND``): ids (B, L, n_axes) -> cos, sin (B, L, sum(axes_dim)) float32.

    Axis i contributes angles pos_i * theta^(-2j/axes_dim[i]) for j < axes_dim[i]/2; the axes are concatenated
    (t, h, w) and the whole half-table is repeated twice, as the rotate-half kernel expects.
    """
    angles = torch.cat([_axis_angles(ids[..., i], d, theta, torch.float32) for i, d in enumerate(axes_dim)], -1)
    cos, sin = angles.cos(), angles.sin()  # (B, L, D/2)
    return cos.repeat(1, 1, 2), sin.repeat(1, 1, 2)  # (B, L, D)


def interleaved_rope_tables(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> Rope:
    """Original Flux RoPE tables (``EmbedND``, use_liger_rope=False): cos, sin (B, L, sum(axes_dim)/2)
    computed in float64 and rounded to float32, for rotation of interleaved pairs (2j, 2j+1)."""
    angles = torch.cat([_axis_angles(ids[..., i], d, theta, torch.float64) for i, d in enumerate(axes_dim)], -1)
    return angles.cos().float(), angles.sin().float()


def _axis_angles(pos: torch.Tensor, dim: int, theta: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) positions -> (B, L, dim/2) angles pos * theta^(-2j/dim) in ``dtype``."""
    if dim % 2:
        raise ValueError(f"every axes_dim entry must be even (RoPE rotates pairs), got {dim}")
    omega = rope_frequencies(dim, theta, device=pos.device, dtype=dtype)
    return pos.to(dtype)[..., None] * omega  # (B, L, dim/2)


def apply_rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the released Liger kernel): x (B, L, H, D), cos/sin (B, L, D) float32.

    With x1, x2 the two halves of each head: [x1 cos - x2 sin, x2 cos + x1 sin], using the first D/2 table
    entries, computed in float32 and returned in x's dtype. Without autograd x is overwritten, a chunk of
    tokens at a time (bounded float32 temporaries).
    """
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, :half], sin[:, :, None, :half]  # (B, L, 1, D/2)
    if not can_overwrite(x):
        return _rotate_half(x.float(), c, s).to(x.dtype)
    chunk = rope_chunk_tokens(x.shape)
    for start in range(0, x.shape[1], chunk):
        part = slice(start, start + chunk)
        x[:, part] = _rotate_half(x[:, part].float(), c[:, part], s[:, part])
    return x


def rope_chunk_tokens(shape: Sequence[int]) -> int:
    """Tokens per in-place RoPE chunk for q/k of ``shape`` (B, L, H, D): about ROPE_CHUNK_ELEMENTS values."""
    B, _, H, D = shape
    return max(1, ROPE_CHUNK_ELEMENTS // (B * H * D))


def _rotate_half(x32: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    x1, x2 = x32.chunk(2, dim=-1)  # (B, L, H, D/2) each
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Flux's rotation of pairs (2j, 2j+1) (math.py ``apply_rope``; :func:`~.positions.apply_rope`), in float32:
    x (B, L, H, D), cos/sin (B, L, D/2)."""
    return apply_rope(x.float(), cos[:, :, None], sin[:, :, None]).to(x.dtype)  # (B, L, 1, D/2) tables


class EmbedND(nn.Module):
    """Position ids (B, L, 3) -> RoPE tables; no parameters (``pe_embedder``).

    ``rotate_half`` selects the released variant (use_liger_rope=True); False is Flux's interleaved one.
    """

    def __init__(self, dim: int, theta: float, axes_dim: Sequence[int], rotate_half: bool) -> None:
        super().__init__()
        if sum(axes_dim) != dim:
            raise ValueError(f"axes_dim {list(axes_dim)} must sum to the head dim {dim}")
        self.dim, self.theta, self.axes_dim, self.rotate_half = dim, theta, tuple(axes_dim), rotate_half

    def forward(self, ids: torch.Tensor) -> Rope:
        if ids.dim() != 3 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"position ids must be [B, L, {len(self.axes_dim)}], got {tuple(ids.shape)}")
        make = rope_tables if self.rotate_half else interleaved_rope_tables
        return make(ids, self.axes_dim, self.theta)

    def apply(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        """Rotate q or k (B, L, H, D) by the tables of :meth:`forward`."""
        rotate = apply_rope_rotate_half if self.rotate_half else apply_rope_interleaved
        return rotate(x, *rope)


# ==================================================================================================
# Attention
# ==================================================================================================


class ScaleRMSNorm(nn.Module):
    """RMS norm over the head dim with gain ``scale`` (layers.py ``RMSNorm``; the Liger "llama" kernel of the
    release computes the same): float32 statistics, normalised value cast back, then times the gain."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if can_overwrite(x, self.scale):
            return rms_normalise_(x, self.eps).mul_(cast_to(self.scale, x))
        return rms_normalise(x, self.eps) * cast_to(self.scale, x)


class QKNorm(nn.Module):
    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.query_norm = ScaleRMSNorm(dim, device=device, dtype=dtype)
        self.key_norm = ScaleRMSNorm(dim, device=device, dtype=dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q), self.key_norm(k)


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, L, H, D) -> (B, H, L, D): softmax attention, scale 1/sqrt(D), no mask (every text token,
    padding included, takes part, as in the release)."""
    return attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))


def heads_to_tokens(out: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Tokens [start, end) of an attention output (B, H, L, D) as a contiguous (B, end - start, H*D) tensor
    (a Linear on a strided view can be far slower and larger than on a contiguous copy)."""
    return out[:, :, start:end].transpose(1, 2).flatten(2).contiguous()


class SelfAttention(nn.Module):
    """Projections of one stream of a double block: q/k/v (separate or fused ``qkv``), q/k norm, ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, fused_qkv: bool, device=None, dtype=None,
                 operations=nn) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fused_qkv = fused_qkv
        kw = dict(bias=qkv_bias, device=device, dtype=dtype)
        if fused_qkv:
            self.qkv = operations.Linear(dim, 3 * dim, **kw)
        else:
            self.q_proj = operations.Linear(dim, dim, **kw)
            self.k_proj = operations.Linear(dim, dim, **kw)
            self.v_proj = operations.Linear(dim, dim, **kw)
        self.norm = QKNorm(dim // num_heads, device=device, dtype=dtype)
        self.proj = operations.Linear(dim, dim, device=device, dtype=dtype)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, C) -> q, k (RMS-normed), v, each (B, L, H, D)."""
        if self.fused_qkv:
            q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # (B, L, H, D) each
        else:
            q, k, v = (lin(x).unflatten(-1, (self.num_heads, -1)) for lin in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.norm(q, k)
        return q, k, v


# ==================================================================================================
# Modulation and MLP
# ==================================================================================================


class Modulation(nn.Module):
    """``lin`` on SiLU(vec) -> 3 or 6 per-sample vectors (shift, scale, gate[, shift2, scale2, gate2])."""

    def __init__(self, dim: int, double: bool, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = operations.Linear(dim, self.multiplier * dim, bias=True, device=device, dtype=dtype)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)  # each (B, 1, C)


def mlp_sequential(dim: int, hidden: int, device=None, dtype=None, operations=nn) -> nn.Sequential:
    """Linear -> GELU(tanh) -> Linear with the official Sequential names (``.0``, ``.2``)."""
    return nn.Sequential(
        operations.Linear(dim, hidden, bias=True, device=device, dtype=dtype),
        nn.GELU(approximate="tanh"),
        operations.Linear(hidden, dim, bias=True, device=device, dtype=dtype),
    )


def run_mlp(mlp: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    return mlp[2](gelu_tanh(mlp[0](h)))


# ==================================================================================================
# Blocks
# ==================================================================================================


class DoubleStreamBlock(nn.Module):
    """Separate image and text weights, joint attention over ``[txt, img]`` (layers.py ``DoubleStreamBlock``)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, fused_qkv: bool,
                 device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype, operations=operations)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.img_mod = Modulation(hidden_size, double=True, **kw)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias, fused_qkv, **kw)
        self.img_mlp = mlp_sequential(hidden_size, mlp_hidden, **kw)
        self.txt_mod = Modulation(hidden_size, double=True, **kw)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias, fused_qkv, **kw)
        self.txt_mlp = mlp_sequential(hidden_size, mlp_hidden, **kw)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, pe: Rope,
                rope: EmbedND) -> tuple[torch.Tensor, torch.Tensor]:
        """img (B, N, C), txt (B, L_txt, C), vec (B, C) -> updated (img, txt). Temporaries are released as
        soon as possible: the peak is about 7 (B, L_txt + N, C) tensors (the image MLP)."""
        img_mod = self.img_mod(vec)  # 6 x (B, 1, C): shift1, scale1, gate1, shift2, scale2, gate2
        txt_mod = self.txt_mod(vec)
        out = self._joint_attention(img, txt, img_mod, txt_mod, pe, rope)  # (B, H, L_txt + N, D)
        n_txt, n_all = txt.shape[1], out.shape[2]
        txt_proj = self.txt_attn.proj(heads_to_tokens(out, 0, n_txt))  # (B, L_txt, C)
        img_proj = self.img_attn.proj(heads_to_tokens(out, n_txt, n_all))  # (B, N, C)
        del out
        img = residual(img, img_proj, img_mod[2], 0.0, False)
        del img_proj
        img = self._mlp_update(img, img_mod, self.img_mlp)
        txt = self._mlp_update(residual(txt, txt_proj, txt_mod[2], 0.0, False), txt_mod, self.txt_mlp)
        return img, txt

    def _joint_attention(self, img, txt, img_mod, txt_mod, pe: Rope, rope: EmbedND) -> torch.Tensor:
        """Attention over [txt, img] with each stream's own projections -> (B, H, L_txt + N, D)."""
        img_q, img_k, img_v = self.img_attn.project(modulate(layer_norm(img), img_mod[0], img_mod[1]))
        txt_q, txt_k, txt_v = self.txt_attn.project(modulate(layer_norm(txt), txt_mod[0], txt_mod[1]))
        q = rope.apply(torch.cat((txt_q, img_q), dim=1), pe)  # (B, L_txt + N, H, D)
        del txt_q, img_q
        k = rope.apply(torch.cat((txt_k, img_k), dim=1), pe)
        del txt_k, img_k
        v = torch.cat((txt_v, img_v), dim=1)
        del txt_v, img_v
        return joint_attention(q, k, v)

    @staticmethod
    def _mlp_update(x: torch.Tensor, mods, mlp: nn.Sequential) -> torch.Tensor:
        """x += gate2 * MLP((1 + scale2) LN(x) + shift2)."""
        shift2, scale2, gate2 = mods[3:]
        return residual(x, run_mlp(mlp, modulate(layer_norm(x), shift2, scale2)), gate2, 0.0, False)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP on ``[txt, img]`` (layers.py ``SingleStreamBlock``): q_proj, k_proj and
    ``v_mlp`` (value and MLP input in one linear; fused: ``linear1`` = q, k, v, MLP input), ``linear2`` on
    cat(attention, GELU(MLP input))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, fused_qkv: bool, device=None,
                 dtype=None, operations=nn) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.linear1 = operations.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim, **kw)
        else:
            self.q_proj = operations.Linear(hidden_size, hidden_size, **kw)
            self.k_proj = operations.Linear(hidden_size, hidden_size, **kw)
            self.v_mlp = operations.Linear(hidden_size, hidden_size + self.mlp_hidden_dim, **kw)
        self.linear2 = operations.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, **kw)
        self.norm = QKNorm(hidden_size // num_heads, **kw)
        self.modulation = Modulation(hidden_size, double=False, operations=operations, **kw)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pe: Rope, rope: EmbedND) -> torch.Tensor:
        """x (B, L_txt + N, C), vec (B, C) -> (B, L_txt + N, C)."""
        shift, scale, gate = self.modulation(vec)  # (B, 1, C) each
        q, k, fused = self._project(modulate(layer_norm(x), shift, scale))  # fused (B, L, C | M): v, MLP input
        v, mlp_in = fused.split([self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k = self.norm(q, k)
        out = joint_attention(rope.apply(q, pe), rope.apply(k, pe), v.unflatten(-1, (self.num_heads, -1)))
        del q, k  # out: (B, H, L, D)
        if can_overwrite(fused):  # the buffer becomes cat(attention, GELU(mlp)) without another copy
            v.unflatten(-1, (self.num_heads, -1)).copy_(out.transpose(1, 2))
            gelu_tanh(mlp_in)
            hidden = fused.contiguous()  # (B, L, C + M); a view only with fused_qkv
        else:
            hidden = torch.cat((out.transpose(1, 2).flatten(2), gelu_tanh(mlp_in)), dim=-1)
        del out, v, mlp_in, fused
        return residual(x, self.linear2(hidden), gate, 0.0, False)

    def _project(self, x_mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_mod (B, L, C) -> q, k (B, L, H, D) and the value+MLP buffer (B, L, C + M)."""
        if self.fused_qkv:
            h = self.linear1(x_mod)  # (B, L, 3C + M)
            C = self.hidden_size
            q, k = (h[..., i * C : (i + 1) * C].unflatten(-1, (self.num_heads, -1)) for i in (0, 1))
            return q, k, h[..., 2 * C :]
        q = self.q_proj(x_mod).unflatten(-1, (self.num_heads, -1))
        k = self.k_proj(x_mod).unflatten(-1, (self.num_heads, -1))
        return q, k, self.v_mlp(x_mod)


class LastLayer(nn.Module):
    """(1 + scale) LN(x) + shift with (shift, scale) = Linear(SiLU(vec)), then ``linear`` to the outputs."""

    def __init__(self, hidden_size: int, out_features: int, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        self.linear = operations.Linear(hidden_size, out_features, bias=True, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), operations.Linear(hidden_size, 2 * hidden_size, bias=True, device=device, dtype=dtype)
        )

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        return self.linear(modulate(layer_norm(x), shift, scale))  # (B, N, out)
