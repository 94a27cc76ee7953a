"""The in-place inference fast path, in one place.

Without autograd, a result may overwrite a temporary this code created (a LayerNorm output, the
residual stream, the qkv projection), which saves a fresh allocation and a memory pass per op. Each
function here checks :func:`can_overwrite` and falls back to the ordinary out-of-place op when autograd
records the tensors (training), so both paths compute the same values. ``benchmarks/step_time.py
--out-of-place`` measures what the fast path saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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



def gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation); without autograd ``h`` (a linear layer's output) is overwritten."""
    return torch.ops.aten.gelu_(h, approximate="tanh") if can_overwrite(h) else F.gelu(h, approximate="tanh")


# activation modules -> their functional form, which takes ``inplace=True``
IN_PLACE_ACTIVATIONS = {nn.SiLU: F.silu, nn.ReLU: F.relu, nn.Mish: F.mish}


def activate(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; without autograd ``x`` (a norm's output) is overwritten when ``act`` has an in-place form
    (SiLU, ReLU, Mish, GELU). The same values either way; other activations run out of place."""
    if not can_overwrite(x):
        return act(x)
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    functional = IN_PLACE_ACTIVATIONS.get(type(act))
    return act(x) if functional is None else functional(x, inplace=True)


STATISTICS_CHUNK = 1 << 22  # elements whose float32 statistics are taken at once (16 MiB)


def qk_statistics_bytes(elements: int, dtype: torch.dtype) -> int:
    """Bytes :func:`rms_normalise_` of ``elements`` values in ``dtype`` holds besides them: the float32 copy of
    one chunk that a bf16/fp16 tensor's statistics read (none for float32)."""
    return 0 if dtype == torch.float32 else min(elements, STATISTICS_CHUNK) * 4


def rms_normalise_(x: torch.Tensor, eps: float) -> torch.Tensor:
    """In-place :func:`rms_normalise` of ``x`` (N, ..., D) (float32 statistics, no full-size temporary).

    The statistics of a bf16/fp16 ``x`` read a float32 copy of it: they are taken a chunk of rows at a time
    so that copy stays small (a whole q|k in float32 was the largest transient of a bf16 step).
    """
    for part in x.split(max(1, STATISTICS_CHUNK // max(1, x[0].numel()))):
        norm = torch.linalg.vector_norm(part, dim=-1, keepdim=True, dtype=torch.float32)  # sqrt(sum x^2)
        part.mul_(torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps)))
    return x


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """In-place :func:`apply_rope` (one half-size temporary)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    even_before = even.clone()
    even.mul_(cos).addcmul_(odd, sin, value=-1)
    odd.mul_(cos).addcmul_(even_before, sin)
    return x



def norm_and_rotate_qk_(qk: torch.Tensor, gains: torch.Tensor | None, rope, rope_before_norm: bool,
                        eps: float) -> None:
    """RMS norm (``gains`` (2, D) for q and k; None: no norm) and RoPE of the (BG, L, 2, H, D) q|k view of
    the qkv projection, in place; the order of ``Attention._norm_and_rotate`` (v1.1 rotates first)."""
    if rope is not None:
        cos, sin = (t[:, None, None, :] for t in rope)  # (L, 1, 1, D/2)
    if rope is not None and rope_before_norm:
        apply_rope_(qk, cos, sin)
    if gains is not None:
        rms_normalise_(qk, eps).mul_(gains[:, None])
    if rope is not None and not rope_before_norm:
        apply_rope_(qk, cos, sin)
