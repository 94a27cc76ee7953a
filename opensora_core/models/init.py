"""Initialisation and training helpers of the STDiT models (official from-scratch init, freezing,
stochastic-depth rates)."""

from __future__ import annotations

import torch
from torch import nn


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

