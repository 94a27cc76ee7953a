"""Bounded-memory decoding: tile plans, linear blending, tiled vs untiled quality, OOM fallback."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from opensora_core.vae import TilingOptions, VideoAutoencoderKL, VideoAutoencoderPipeline, decode_with_fallback
from opensora_core.vae.tiling import blend_weights, plan_tiles

from test_vae_models import TINY_SD, TINY_TEMPORAL


def psnr(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB with the reference's own value range as the peak (stricter than a fixed [-1, 1] range)."""
    peak = float(reference.max() - reference.min())
    return 10 * math.log10(peak**2 / float(((actual - reference) ** 2).mean()))


def smooth_video(t: int, h: int, w: int) -> torch.Tensor:
    """A slowly moving sinusoidal pattern, a few periods across the frame, in [-0.6, 0.6]."""
    ts = torch.arange(t)[:, None, None]
    ys = torch.linspace(0, 1, h)[None, :, None]
    xs = torch.linspace(0, 1, w)[None, None, :]
    return torch.stack([0.6 * torch.sin(2 * math.pi * (2 * ys + 3 * xs + 0.1 * ts + c / 3)) for c in range(3)])[None]


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(10, 16, 4), (56, 32, 8), (90, 64, 16), (160, 64, 16), (33, 8, 3)]
)
def test_tile_plan_covers_everything_with_the_overlap(length, tile, overlap):
    tiles = plan_tiles(length, tile, overlap)
    assert tiles[0][0] == 0 and tiles[-1][1] == length
    assert all(b - a <= tile for a, b in tiles)
    assert all(prev[1] - nxt[0] >= min(overlap, length) for prev, nxt in zip(tiles, tiles[1:]))


def test_blend_weights_sum_to_one():
    tiles = plan_tiles(40, 16, 6)
    total = torch.zeros(40 * 8)
    for i, (a, b) in enumerate(tiles):
        total[a * 8:b * 8] += blend_weights(tiles, 8, i, device="cpu", dtype=torch.float32)
    assert torch.allclose(total, torch.ones_like(total))


def test_tiling_options_reject_overlap_not_below_tile():
    with pytest.raises(ValueError, match="tile_overlap"):
        TilingOptions(tile_size=8, tile_overlap=8)


def test_tiled_decode_is_close_to_untiled():
    """2 x 2 spatial tiles (24 latent px, 8 overlap) on a 32 x 48 latent: >= 35 dB against the untiled decode."""
    torch.manual_seed(0)
    vae = VideoAutoencoderKL(TINY_SD).eval()
    z = vae.encode(smooth_video(3, 256, 384), sample=False)
    tiled = vae.decode(z, 3, tiling=TilingOptions(tile_size=24, tile_overlap=8))
    assert psnr(tiled, vae.decode(z, 3)) >= 35.0


def test_tiled_encode_is_close_to_untiled():
    torch.manual_seed(0)
    vae = VideoAutoencoderKL(TINY_SD).eval()
    x = smooth_video(2, 256, 384)
    tiled = vae.encode(x, sample=False, tiling=TilingOptions(tile_size=24, tile_overlap=8))
    assert psnr(tiled, vae.encode(x, sample=False)) >= 35.0


def test_one_frame_at_a_time_without_tiles_is_exact():
    """Frames smaller than the tile go through whole, one at a time: the official result (float32 sums aside)."""
    torch.manual_seed(0)
    vae = VideoAutoencoderPipeline(TINY_SD, TINY_TEMPORAL).eval()
    z = torch.randn(1, 4, 6, 3, 4)
    tiled = vae.decode(z, 20, tiling=TilingOptions(tile_size=4, tile_overlap=1, frames_per_batch=1))
    assert torch.allclose(tiled, vae.decode(z, 20), atol=1e-5, rtol=1e-5)


def test_decode_with_fallback_retries_tiled_on_out_of_memory(monkeypatch, caplog):
    torch.manual_seed(0)
    vae = VideoAutoencoderPipeline(TINY_SD, TINY_TEMPORAL).eval()
    z = torch.randn(1, 4, 2, 2, 3)
    expected, before = vae.decode(z, 5), z.clone()

    def out_of_memory(latents):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(vae.spatial_vae.module, "decode", out_of_memory)  # the untiled path only
    with caplog.at_level(logging.WARNING, logger="opensora"):
        x = decode_with_fallback(vae, z, 5)
    assert "retrying tiled" in caplog.text
    assert torch.equal(z, before)
    assert torch.allclose(x, expected, atol=1e-5, rtol=1e-5)  # frames fit one tile: per-frame, exact
