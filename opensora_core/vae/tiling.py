"""Bounded-memory VAE work: spatial tiles with linear blending, and the OOM -> tiled retry.

Time is always processed in chunks (the VAE v1.2 17-frame / 5-latent chunks, and the
spatial stage's micro-batches of frames), which is exact. Tiling adds two things for
the image (SD-VAE) stage, trading exactness for memory:

* fewer frames at a time (``frames_per_batch``, 1 by default instead of the official 4);
* frames larger than ``tile_size`` latent pixels are cut into overlapping tiles for
  the high-resolution levels of the SD-VAE (features at 2x the latent resolution and
  above, where the memory is), blended with linear ramps across the overlaps (weights
  sum to one, so flat regions stay flat and seams do not show). The small
  low-resolution part, with the mid-block attention over all pixels, always sees the
  whole frame.

The GroupNorm statistics of the tiled levels then come from one tile instead of the
whole frame, so tiled results differ slightly from untiled ones (the tests require
>= 35 dB PSNR on a smooth video). The VAE v1.2 temporal stage is never tiled: it works
on the 8x smaller latents, one 5-latent-frame chunk at a time, exactly as the official
code. With ``tiling=None`` the official path runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger("opensora")


@dataclass(frozen=True)
class TilingOptions:
    """How the image stage of a video VAE is tiled (sizes in latent pixels; x8 for image pixels).

    tile_size: largest tile side, 64 latent = 512 pixels (the SD-VAE's training size). Frames up to
        this size are not cut at all, so tiled mode is then exact (only fewer frames at a time).
    tile_overlap: overlap between neighbouring tiles, blended linearly; 16 latent = 128 pixels (25 %).
    frames_per_batch: frames the image stage processes at once in tiled mode (untiled: the VAE's
        ``micro_batch_size``, 4 officially). Each frame is independent, so this never changes the result.
    """

    tile_size: int = 64
    tile_overlap: int = 16
    frames_per_batch: int = 1

    def __post_init__(self):
        if self.tile_size < 1 or self.frames_per_batch < 1:
            raise ValueError(f"TilingOptions: tile_size and frames_per_batch must be >= 1, got {self}")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"TilingOptions: tile_overlap must be in [0, tile_size), got {self}")


# ---------------------------------------------------------------------------
# Tile plans and blending weights
# ---------------------------------------------------------------------------


def plan_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) tiles covering ``range(length)``.

    As few tiles as possible, all of one size <= ``tile``, neighbours overlapping by >= ``overlap``.
    """
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, math.ceil((length + (count - 1) * overlap) / count))
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(s, s + size) for s in starts]


def blend_weights(tiles: list[tuple[int, int]], scale: int, index: int, *, device, dtype) -> Tensor:
    """1D weights of tile ``index`` in output units (``scale`` per tile unit): ramps over the overlaps.

    Over an overlap the ramp of the left tile falls as the right one rises, and they sum to one.
    """
    start, stop = tiles[index]
    w = torch.ones((stop - start) * scale, device=device, dtype=torch.float32)
    pos = torch.arange(w.numel(), device=device, dtype=torch.float32) + 0.5
    if index > 0:
        width = (tiles[index - 1][1] - start) * scale
        if width > 0:
            w = torch.minimum(w, pos / width)
    if index < len(tiles) - 1:
        width = (stop - tiles[index + 1][0]) * scale
        if width > 0:
            w = torch.minimum(w, (w.numel() - pos) / width)
    return w.to(dtype)


def tiled_map(fn: Callable[[Tensor], Tensor], x: Tensor, latent_hw: tuple[int, int], *, in_scale: int,
              out_scale: int, options: TilingOptions) -> Tensor:
    """Apply ``fn`` to overlapping spatial tiles of ``x`` [N, C, H, W] and blend the outputs.

    Tiles are planned on the latent grid ``latent_hw``; ``x`` has ``in_scale`` pixels per latent
    pixel and ``fn``'s output ``out_scale`` (decode: 1 -> 8; encode: 8 -> 1).
    """
    rows = plan_tiles(latent_hw[0], options.tile_size, options.tile_overlap)
    cols = plan_tiles(latent_hw[1], options.tile_size, options.tile_overlap)
    if len(rows) == len(cols) == 1:
        return fn(x)
    out = weight = None
    for r, (r0, r1) in enumerate(rows):
        for c, (c0, c1) in enumerate(cols):
            y = fn(x[..., r0 * in_scale:r1 * in_scale, c0 * in_scale:c1 * in_scale])  # (N, C', h_t, w_t)
            if out is None:
                out = y.new_zeros(*y.shape[:2], latent_hw[0] * out_scale, latent_hw[1] * out_scale)
                weight = y.new_zeros(latent_hw[0] * out_scale, latent_hw[1] * out_scale)
            wr = blend_weights(rows, out_scale, r, device=y.device, dtype=y.dtype)
            wc = blend_weights(cols, out_scale, c, device=y.device, dtype=y.dtype)
            w = wr[:, None] * wc[None, :]  # (h_t, w_t)
            region = (..., slice(r0 * out_scale, r1 * out_scale), slice(c0 * out_scale, c1 * out_scale))
            out[region] += y * w
            weight[region] += w
    return out / weight


# ---------------------------------------------------------------------------
# Out-of-memory fallback
# ---------------------------------------------------------------------------


def decode_with_fallback(vae, z: Tensor, num_frames: int, *, tiling: TilingOptions | None = None) -> Tensor:
    """``vae.decode(z, num_frames)`` untiled (exact); on out-of-memory, warn and retry tiled.

    ``z`` is never modified. ``tiling`` is used for the retry (default :class:`TilingOptions`).
    """
    try:
        return vae.decode(z, num_frames, tiling=None)
    except torch.OutOfMemoryError:
        retry = tiling or TilingOptions()
        log.warning("VAE decode ran out of memory; retrying tiled (%s). The result may differ slightly.", retry)
    _release_cached_memory(z.device)  # outside the except block, so the failed frames can be freed first
    return vae.decode(z, num_frames, tiling=retry)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
