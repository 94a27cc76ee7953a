"""Token-wide Linears with the bias (and the MLP's GELU) fused into the GEMM, for CPU inference.

``F.linear`` on the CPU copies the bias into the output and then runs the GEMM over it, and the MLP's GELU
is one more pass over the widest activation. oneDNN's linear applies both in the GEMM's epilogue; on this
project's benchmark (STDiT3, 240p) that takes 9 % off an fp32 step and 2-3 % off a bf16 one
(``benchmarks/step_time.py --no-fused`` measures it). The fused call is taken only where it computes the
same thing as the module: a plain ``torch.nn.Linear`` (subclasses, e.g. ComfyUI's casting or offloading
operations and LoRA wrappers, keep their own forward), CPU tensors of one dtype (float32, or bfloat16 where
oneDNN has it: AVX-512 or bf16 instructions), no autograd recording, no autocast, not under ``torch.compile``
(inductor fuses the epilogue itself and cannot lower this op on unfrozen weights). Anything else runs the module
itself.
"""

from __future__ import annotations

import torch
from torch import nn

from ..dtypes import cpu_computes
from . import inplace
from .tensors import gemm_rows

ENABLED = True  # benchmarks switch the fused path off to measure it
_OP = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
# oneDNN builds a bf16 linear only on CPUs with AVX-512 (or bf16 instructions); on an AVX2-only CPU it refuses the
# primitive ("could not create a primitive descriptor"), so bf16 runs the module there.
FUSED_DTYPES = tuple(d for d in (torch.float32, torch.bfloat16) if cpu_computes(d))


def can_fuse(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when oneDNN's fused linear computes exactly ``layer(x)`` (see the module docstring)."""
    if not ENABLED or _OP is None or type(layer) is not nn.Linear or torch.compiler.is_compiling():
        return False
    weight, bias = layer.weight, layer.bias
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype in FUSED_DTYPES
            and weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
            and not torch.is_autocast_enabled("cpu") and inplace.can_overwrite(x, weight))


def _fused(layer: nn.Linear, x: torch.Tensor, activation: str, algorithm: str) -> torch.Tensor:
    rows = gemm_rows(x).reshape(-1, x.shape[-1])  # (N, C_in), a view
    out = _OP(rows, layer.weight, layer.bias, activation, [], algorithm)  # (N, C_out)
    return out.view(*x.shape[:-1], out.shape[-1])


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` over the last dim of ``x`` (any leading dims), bias fused where possible."""
    return _fused(layer, x, "none", "") if can_fuse(layer, x) else layer(gemm_rows(x))


def linear_gelu(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GELU(tanh) of ``layer(x)``, fused into the GEMM where possible (else GELU in place when allowed)."""
    return _fused(layer, x, "gelu", "tanh") if can_fuse(layer, x) else inplace.gelu_tanh(layer(gemm_rows(x)))
