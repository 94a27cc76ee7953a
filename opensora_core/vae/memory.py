"""Working memory of the Open-Sora v1.x VAE decodes, from shapes only (weights not included).

Counts the tensors the decode holds at its fullest moment, for a memory manager to make room before it
runs. The SD-VAE decoder runs its blocks in one flat loop, so at any time it holds the current block's
input and what that block makes: a ResNet block its activated norm and a conv output (the sum is written
into the latter), an upsampler its nearest-upsampled copy and the conv output. Beside the micro-batch of
frames being decoded the decode keeps the output video, and for VAE v1.2 the temporal stage's output.
The temporal stage works on the 8x smaller latents: its widest tensors are at the first level (the most
channels, a chunk's latent frames plus the causal padding). With ``backend_workspace`` the estimate adds
what the kernels hold (:mod:`opensora_core.models.workspace`): the largest conv's weight copies of the
stage that peaks, and the backend's retained state. Calibrated against live-tensor peaks
(``tests/test_vae_memory.py``) and the process's resident peak (``benchmarks/memory_calibration.py``).
"""

from __future__ import annotations

import torch

from ..models.workspace import retained_state_bytes, weight_copies_bytes
from .autoencoder_kl import AutoencoderKLConfig
from .temporal import TemporalVAEConfig
from .tiling import TilingOptions, plan_tiles

TEMPORAL_LIVE_WIDTHS = 4  # a temporal ResBlock: its input, the activated norm, the padded copy, the conv output


def decoder_peak_elements(config: AutoencoderKLConfig, frames: int, h: int, w: int, part: str = "whole") -> int:
    """Most elements live at once in one decoder pass over ``frames`` latents of h x w (its input excluded).

    ``part``: "whole", "trunk" (the mid block and the first level, up to twice the latent resolution) or
    "tail" (the tileable rest, whose h x w are then the tile's latent size).
    """
    chans, area = config.block_out_channels[::-1], frames * h * w
    levels = {"whole": range(len(chans)), "trunk": range(1), "tail": range(1, len(chans))}[part]
    peaks = []
    if part != "tail":
        peaks += [3 * chans[0] * area, 6 * chans[0] * area]  # mid ResNet; attention: x, tokens, q, k, v, out
    scale = 4 ** levels[0]  # pixels per latent pixel at this level
    for level in levels:
        width_in = chans[max(level - 1, 0)]
        for _ in range(config.layers_per_block + 1):
            out = chans[level]
            peaks.append(scale * area * max(2 * width_in + out, width_in + 2 * out))  # x, act, conv | x, h, h'
            width_in = out
        if level < len(chans) - 1:
            peaks.append(scale * area * chans[level] * (1 + 4 + 4))  # input, upsampled copy, conv output
            scale *= 4
    if part != "trunk":
        peaks.append(scale * area * (2 * chans[-1] + config.out_channels))  # norm, activation in place, conv_out
    return max(peaks)


def spatial_decode_peak_elements(config: AutoencoderKLConfig, frames: int, h: int, w: int,
                                 tiling: TilingOptions | None) -> int:
    """One micro-batch of ``frames`` frames through the SD-VAE decode as :class:`VideoAutoencoderKL` runs it."""
    if tiling is None:
        return decoder_peak_elements(config, frames, h, w)
    rows = plan_tiles(h, tiling.tile_size, tiling.tile_overlap)
    cols = plan_tiles(w, tiling.tile_size, tiling.tile_overlap)
    trunk = decoder_peak_elements(config, frames, h, w, "trunk")  # always the whole frame
    kept = 4 * frames * h * w * config.block_out_channels[-1]  # the trunk's output, read tile by tile
    tile_h, tile_w = rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]
    tail = decoder_peak_elements(config, frames, tile_h, tile_w, "tail")
    if len(rows) == len(cols) == 1:
        return max(trunk, kept + tail)
    blended = frames * config.out_channels * 64 * h * w + 64 * h * w  # sum of weighted tiles, weights
    tile_out = 2 * frames * config.out_channels * 64 * tile_h * tile_w  # the tile's output, times its weights
    return max(trunk, kept + blended + max(tail, tile_out))


def per_frame_decode_bytes(config: AutoencoderKLConfig, micro_batch_size: int | None, batch: int,
                           latent_size: tuple[int, int, int], itemsize: int, tiling: TilingOptions | None) -> int:
    """:meth:`VideoAutoencoderKL.decode` of a (batch, C, t, h, w) latent: a micro-batch's decode + the video."""
    t, h, w = latent_size
    frames = batch * t
    at_once = (micro_batch_size if tiling is None else tiling.frames_per_batch) or frames
    video = frames * config.out_channels * 64 * h * w
    scaled = min(at_once, frames) * config.latent_channels * h * w  # the micro-batch's latents / 0.18215
    return (spatial_decode_peak_elements(config, min(at_once, frames), h, w, tiling) + video + scaled) * itemsize


def spatial_conv_weights(config: AutoencoderKLConfig) -> int:
    """Weights of the SD-VAE decoder's largest convolution (3x3 at the widest level)."""
    return max(config.block_out_channels) ** 2 * 9


def temporal_decode_peak_elements(config: TemporalVAEConfig, batch: int, chunk_latent_frames: int, h: int,
                                  w: int) -> int:
    """Most elements live at once while the temporal VAE decodes one chunk (its widest level, causal padding)."""
    widest = config.filters * max(config.channel_multipliers)
    return TEMPORAL_LIVE_WIDTHS * batch * widest * (chunk_latent_frames + 2) * h * w


def temporal_conv_weights(config: TemporalVAEConfig) -> int:
    """Weights of the temporal decoder's largest convolution (3x3x3 at the widest level)."""
    return (config.filters * max(config.channel_multipliers)) ** 2 * 27


def backend_bytes(conv_weights: int, dtype: torch.dtype, conv_dims: int = 3) -> int:
    """What the kernels hold beside the live tensors while a stage whose largest (``conv_dims``-D) conv has
    ``conv_weights`` runs."""
    return weight_copies_bytes(conv_weights, dtype) + retained_state_bytes(dtype, conv_dims)
