"""Shape rules shared by the STDiT config dataclasses (official constructor kwargs come in through
``opensora_core.official_config.config_from_official``)."""

from __future__ import annotations

from collections.abc import Sequence


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

