"""Small tensor helpers every block uses: device/dtype casts, the affine-free LayerNorm, per-sample values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-6


def cast_to(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``like``'s device and dtype (no copy when already there)."""
    return tensor.to(device=like.device, dtype=like.dtype)


def gemm_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., C) as a Linear can read it in one 2-D GEMM: unchanged when its leading dims fold into one
    row stride (torch's ``matmul`` rule), else a contiguous copy.

    On a view that does not fold (a transposed or sliced token grid, an expanded batch) ``matmul`` runs a
    batched GEMM instead whenever the weight records no gradient (a frozen model, autocast's cast copy,
    bf16 weights), expanding the weight over the leading dims; in bf16 it materialises that
    [rows/L, C_in, C_out] copy. One copy of the input costs far less.
    """
    sizes, strides = x.shape, x.stride()
    if all(strides[i] == strides[i + 1] * sizes[i + 1] for i in range(x.dim() - 2)):
        return x
    return x.contiguous()


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels without affine parameters (eps 1e-6), as every STDiT norm."""
    return F.layer_norm(x, (x.shape[-1],), eps=LAYER_NORM_EPS)


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

