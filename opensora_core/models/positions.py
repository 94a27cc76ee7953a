"""Position and timestep encodings: sin-cos tables (fixed v1.0, per-call v1.1/v1.2) and rotary embedding.

Tables follow opensora/models/layers/blocks.py; they are computed on the input's device and in its dtype
where the official code does the same (so bf16 inference rounds as the official code does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .tensors import cast_to

FREQUENCY_EMBEDDING_SIZE = 256


# ==================================================================================================
# Sin-cos tables
# ==================================================================================================


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
# Rotary embedding
# ==================================================================================================


def rope_frequencies(dim: int, theta: float = 10000.0, *, device=None, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """(dim/2,) rotary frequencies theta^(-2i/dim) in ``dtype`` (every RoPE here: STDiT3, Open-Sora-Plan RoPE-3D
    per axis, the MMDiT per axis)."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype, device=device)[: dim // 2] / dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full head dim with interleaved pairs.

    Holds ``freqs`` = 10000^(-2i/dim) as a non-trainable Parameter, which is how the official checkpoints
    store it (``rope.freqs``; rotary-embedding-torch 0.5.3 ``RotaryEmbedding(dim)``).
    """

    def __init__(self, dim: int, theta: float = 10000.0, device=None, dtype=None) -> None:
        super().__init__()
        freqs = rope_frequencies(dim, theta, device=device)
        self.freqs = nn.Parameter(freqs.to(dtype) if dtype is not None else freqs, requires_grad=False)

    def reset_parameters(self) -> None:
        dim = 2 * self.freqs.shape[0]
        with torch.no_grad():
            self.freqs.copy_(rope_frequencies(dim, device=self.freqs.device))

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

