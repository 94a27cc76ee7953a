"""fp8 weight storage for Linear layers: e4m3fn weights with a per-layer scale, compute in bf16.

``Fp8Operations`` is an ``operations`` factory (like ComfyUI's ``operations=``): a model built with it stores
every Linear weight as float8_e4m3fn (1 byte per weight, half of bf16) and a float32 ``scale_weight``,
and computes y = (x @ dequant(W)^T) * scale + b in the input dtype::

    model = MMDiTModel(config, dtype=torch.bfloat16, operations=Fp8Operations)
    load_streaming(model, LazyStateDict([path]))  # bf16 file: quantized while loading; fp8 file: as stored

Weights: the official high-precision ``weight`` is quantized per layer on load (scale = max|W| / 448, the
e4m3fn maximum); an fp8 ``weight`` with its ``scale_weight`` (our own saved state dict, or ComfyUI's
scaled-fp8 key convention) loads as is, and an fp8 weight without a scale gets scale 1. The state dict keeps
the official names plus ``<layer>.scale_weight``.

The fp8 bits are held in a uint8 buffer, so ``model.to(torch.bfloat16)`` cannot silently cast them without
their scale; ``state_dict()`` presents them as float8_e4m3fn.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import check_state_dict

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_KEY = "scale_weight"


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scale) with weight ~= fp8.float() * scale and max|fp8| = 448."""
    w = weight.detach().float()
    amax = w.abs().amax()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """``nn.Linear`` with an fp8 weight and a per-layer scale (inference only; weights do not train).

    ``dtype`` is the compute dtype (default: torch's default dtype): the bias is kept in it and outputs come
    in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = dtype or torch.get_default_dtype()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.uint8, device=device))
        self.register_buffer(SCALE_KEY, torch.ones((), dtype=torch.float32, device=device))
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=self.compute_dtype),
                                     requires_grad=False)

    @property
    def fp8_weight(self) -> torch.Tensor:
        return self.weight.view(FP8_DTYPE)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as stored, times its scale, in ``dtype``."""
        return (self.fp8_weight.float() * self.scale_weight).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.fp8_weight.to(x.dtype))  # fp8 -> bf16 is exact
        y = y.mul_(self.scale_weight) if not y.requires_grad else y * self.scale_weight
        return y if self.bias is None else y.add_(self.bias.to(x.dtype))

    def set_weight(self, weight: torch.Tensor, scale: torch.Tensor | float | None = None) -> None:
        """Store ``weight``: an fp8 tensor (with its ``scale``, default 1) as is, anything else quantized."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight {tuple(weight.shape)} does not fit Linear({self.in_features}, {self.out_features})"
            )
        if weight.dtype != FP8_DTYPE:
            weight, scale = quantize_fp8(weight)
        with torch.no_grad():
            self.weight.copy_(weight.to(self.weight.device).view(torch.uint8))
            self.scale_weight.fill_(1.0 if scale is None else float(torch.as_tensor(scale).float().reshape(())))

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.fp8_weight if keep_vars else self.fp8_weight.detach()
        destination[prefix + SCALE_KEY] = self.scale_weight if keep_vars else self.scale_weight.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        else:
            try:
                self.set_weight(weight, state_dict.get(prefix + SCALE_KEY))
            except ValueError as err:
                error_msgs.append(f"{prefix}weight: {err}")
        if self.bias is not None:
            bias = state_dict.get(prefix + "bias")
            if bias is None:
                missing_keys.append(prefix + "bias")
            elif tuple(bias.shape) != tuple(self.bias.shape):
                error_msgs.append(f"{prefix}bias: shape {tuple(bias.shape)}, expected {tuple(self.bias.shape)}")
            else:
                with torch.no_grad():
                    self.bias.copy_(bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3fn, {self.compute_dtype}"


class Fp8Operations:
    """``operations`` factory: ``Linear`` stores fp8 weights (everything else comes from ``torch.nn``)."""

    Linear = Fp8Linear


def scale_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of the fp8 scales (entries a high-precision file does not have)."""
    return tuple(f"{name}.{SCALE_KEY}" for name, m in model.named_modules() if isinstance(m, Fp8Linear))


def load_streaming(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Strict load, one top-level child (or one block of a ModuleList) at a time, so a lazily read file
    (:class:`opensora_core.checkpoints.LazyStateDict`) never has to be in memory at once. fp8 layers
    quantize high-precision weights on the way; their scales may be absent from the file."""
    check_state_dict(model, state, source=source, optional=scale_keys(model))
    for prefix, module in _load_units(model):
        part = {k[len(prefix):]: state[k] for k in state if k.startswith(prefix)}
        result = module.load_state_dict(part, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(SCALE_KEY)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{source}: {prefix or 'model'} missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    own = [name for name, _ in [*model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]]
    if own:
        model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


def _load_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    units = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            units += [(f"{name}.{i}.", block) for i, block in enumerate(child)]
        else:
            units.append((f"{name}.", child))
    return units


__all__ = ["FP8_DTYPE", "FP8_MAX", "Fp8Linear", "Fp8Operations", "load_streaming", "quantize_fp8", "scale_keys"]
