"""Temporal stage of the Open-Sora VAE v1.2: a causal 3D-conv VAE that compresses time by 4.

It works on the SD-VAE latents of a chunk of frames ([B, 4, T, h, w]) and keeps the
spatial size. Every convolution is causal in time: zero padding of ``k_t - stride_t``
frames at the front only, ``k // 2`` on both sides in H and W. The encoder halves T
with stride-2 convolutions; the decoder doubles it with a conv to ``2 * C`` channels
followed by a depth-to-time rearrangement (channel ``2c + k`` -> channel ``c`` of
frame ``2t + k``). Front padding of a chunk to a multiple of the time factor, and the
dropping of those frames after decoding, are planned by :mod:`opensora_core.geometry`
and passed in by :mod:`.pipeline`.

Parameter names follow opensora/models/vae/vae_temporal.py (tag v1.2.0), e.g.
``encoder.block_res_blocks.1.0.conv1.conv.weight``, ``decoder.conv_blocks.2.conv.bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..models.inplace import activate, add
from .autoencoder_kl import TORCH_OPS

ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "relu": nn.ReLU}
GROUP_NORM_EPS = 1e-5  # PyTorch's default, as the official code leaves it


@dataclass(frozen=True)
class TemporalVAEConfig:
    """Constructor kwargs of the official ``VAE_Temporal``."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (True, True, False)
    num_groups: int = 32
    activation_fn: str = "swish"

    @property
    def time_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @classmethod
    def from_official(cls, config: dict[str, Any]) -> TemporalVAEConfig:
        """From a ``vae_temporal`` dict: ``type`` ``VAE_Temporal`` (explicit kwargs) or a named factory."""
        config = dict(config)
        kind = config.pop("type", "VAE_Temporal")
        config.pop("from_pretrained", None)  # weights come from the pipeline's state dict
        if kind in TEMPORAL_VAE_PRESETS:
            base = TEMPORAL_VAE_PRESETS[kind]
            config = {**base.__dict__, **config}
        elif kind != "VAE_Temporal":
            raise ValueError(
                f"unknown temporal VAE type {kind!r}; use VAE_Temporal or one of {list(TEMPORAL_VAE_PRESETS)}"
            )
        for key in ("channel_multipliers", "temporal_downsample"):
            if key in config:
                config[key] = tuple(config[key])
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown VAE_Temporal option(s) {sorted(unknown)}")
        result = cls(**config)
        if result.activation_fn not in ACTIVATIONS:
            raise ValueError(f"activation_fn {result.activation_fn!r} not supported; use one of {list(ACTIVATIONS)}")
        return result


# follows opensora/models/vae/vae_temporal.py VAE_Temporal_SD (the released temporal stage)
TEMPORAL_VAE_PRESETS: dict[str, TemporalVAEConfig] = {
    "VAE_Temporal_SD": TemporalVAEConfig(
        in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=128, num_res_blocks=4,
        channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True),
    ),
}


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


class CausalConv3d(nn.Module):
    """3D conv padded causally in time (front only) and symmetrically in space.

    follows opensora/models/vae/vae_temporal.py CausalConv3d: time pad (k_t - 1) + (1 - stride_t).
    """

    def __init__(self, chan_in: int, chan_out: int, kernel: int | tuple, *, time_stride: int = 1, bias: bool = True,
                 ops=TORCH_OPS, **factory):
        super().__init__()
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - time_stride, 0)  # F.pad order: W, H, T
        self.conv = ops.Conv3d(chan_in, chan_out, (kt, kh, kw), stride=(time_stride, 1, 1), bias=bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))  # (B, C_out, T', H, W)


class ResBlock(nn.Module):
    """GroupNorm-act-conv (no bias) twice plus a 1x1x1 conv shortcut when the width changes."""

    def __init__(self, in_channels: int, filters: int, cfg: TemporalVAEConfig, ops, **factory):
        super().__init__()
        groups = cfg.num_groups
        self.activate = ACTIVATIONS[cfg.activation_fn]()
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPS, **factory)
        self.conv1 = CausalConv3d(in_channels, filters, 3, bias=False, ops=ops, **factory)
        self.norm2 = ops.GroupNorm(groups, filters, eps=GROUP_NORM_EPS, **factory)
        self.conv2 = CausalConv3d(filters, filters, 3, bias=False, ops=ops, **factory)
        self.conv3 = None
        if in_channels != filters:
            self.conv3 = CausalConv3d(in_channels, filters, 1, bias=False, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        # one statement per op: each temporary is freed as soon as the next exists (activations in place
        # without autograd), as in the SD-VAE's ResnetBlock2D
        h = activate(self.activate, self.norm1(x))  # (B, C_in, T, H, W)
        h = self.conv1(h)  # (B, F, T, H, W)
        h = activate(self.activate, self.norm2(h))
        h = self.conv2(h)
        return add(h, x if self.conv3 is None else self.conv3(x))  # h + shortcut


def _res_stack(in_channels: int, filters: int, cfg: TemporalVAEConfig, ops, **factory) -> nn.ModuleList:
    widths = [in_channels] + [filters] * cfg.num_res_blocks
    return nn.ModuleList(ResBlock(widths[i], filters, cfg, ops, **factory) for i in range(cfg.num_res_blocks))


def depth_to_time(x: Tensor, factor: int) -> Tensor:
    """[B, C * factor, T, H, W] -> [B, C, T * factor, H, W].

    Channel ``c * factor + k`` of frame ``t`` becomes channel ``c`` of frame ``t * factor + k``.
    """
    b, c, t, h, w = x.shape
    x = x.reshape(b, c // factor, factor, t, h, w).transpose(2, 3)  # (B, C, T, factor, H, W)
    return x.reshape(b, c // factor, t * factor, h, w)


# ---------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------


class TemporalEncoder(nn.Module):
    """[B, in, T, h, w] -> [B, 2 * latent, T / time_factor, h, w] (follows vae_temporal.py Encoder)."""

    def __init__(self, cfg: TemporalVAEConfig, ops, **factory):
        super().__init__()
        width = [cfg.filters * m for m in cfg.channel_multipliers]
        self.activate = ACTIVATIONS[cfg.activation_fn]()
        self.conv_in = CausalConv3d(cfg.in_out_channels, cfg.filters, 3, bias=False, ops=ops, **factory)
        self.block_res_blocks = nn.ModuleList(
            _res_stack(width[i - 1] if i else cfg.filters, width[i], cfg, ops, **factory) for i in range(len(width))
        )
        # level i (not the last) ends in a time-stride-2 conv, or an Identity placeholder that keeps the indices
        self.conv_blocks = nn.ModuleList(
            CausalConv3d(width[i], width[i], 3, time_stride=2, ops=ops, **factory) if cfg.temporal_downsample[i]
            else nn.Identity()
            for i in range(len(width) - 1)
        )
        self.res_blocks = _res_stack(width[-1], width[-1], cfg, ops, **factory)
        self.norm1 = ops.GroupNorm(cfg.num_groups, width[-1], eps=GROUP_NORM_EPS, **factory)
        self.conv2 = CausalConv3d(width[-1], 2 * cfg.latent_embed_dim, 1, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # (B, F, T, h, w)
        for i, level in enumerate(self.block_res_blocks):
            for block in level:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)  # T halves where temporal_downsample[i]
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(self.activate(self.norm1(x)))  # (B, 2L, T / factor, h, w)


class TemporalDecoder(nn.Module):
    """[B, latent, t, h, w] -> [B, out, t * time_factor, h, w] (follows vae_temporal.py Decoder)."""

    def __init__(self, cfg: TemporalVAEConfig, ops, **factory):
        super().__init__()
        width = [cfg.filters * m for m in cfg.channel_multipliers]
        self.time_strides = [2 if t else 1 for t in cfg.temporal_downsample]
        self.activate = ACTIVATIONS[cfg.activation_fn]()
        self.conv1 = CausalConv3d(cfg.latent_embed_dim, width[-1], 3, ops=ops, **factory)
        self.res_blocks = _res_stack(width[-1], width[-1], cfg, ops, **factory)
        # level i takes the width of level i + 1 (the last level: its own); indices run from high resolution
        self.block_res_blocks = nn.ModuleList(
            _res_stack(width[min(i + 1, len(width) - 1)], width[i], cfg, ops, **factory) for i in range(len(width))
        )
        # conv_blocks[i - 1] ends level i > 0: conv to stride * width, then depth-to-time
        self.conv_blocks = nn.ModuleList(
            CausalConv3d(width[i], width[i] * 2, 3, ops=ops, **factory) if cfg.temporal_downsample[i - 1]
            else nn.Identity()
            for i in range(1, len(width))
        )
        self.norm1 = ops.GroupNorm(cfg.num_groups, width[0], eps=GROUP_NORM_EPS, **factory)
        self.conv_out = CausalConv3d(width[0], cfg.in_out_channels, 3, ops=ops, **factory)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv1(z)  # (B, F_last, t, h, w)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                x = depth_to_time(self.conv_blocks[i - 1](x), self.time_strides[i - 1])  # T doubles if strided
        return self.conv_out(activate(self.activate, self.norm1(x)))  # (B, out, t * factor, h, w)


class TemporalVAE(nn.Module):
    """The official ``VAE_Temporal``: moments of a front-padded chunk, and decoding with front frames dropped."""

    def __init__(self, config: TemporalVAEConfig = TEMPORAL_VAE_PRESETS["VAE_Temporal_SD"], *, operations=TORCH_OPS,
                 device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"device": device, "dtype": dtype}
        self.encoder = TemporalEncoder(config, operations, **factory)
        self.quant_conv = CausalConv3d(2 * config.latent_embed_dim, 2 * config.embed_dim, 1, ops=operations, **factory)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.latent_embed_dim, 1, ops=operations, **factory)
        self.decoder = TemporalDecoder(config, operations, **factory)

    @property
    def time_factor(self) -> int:
        return self.config.time_factor

    def encode_moments(self, x: Tensor, front_pad: int) -> Tensor:
        """One chunk [B, C, n, h, w] -> moments [B, 2 * embed, (n + front_pad) / factor, h, w]."""
        x = F.pad(x, (0, 0, 0, 0, front_pad, 0))  # zero frames at the front
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor, drop: int) -> Tensor:
        """One chunk [B, embed, t, h, w] -> [B, C, t * factor - drop, h, w] (first ``drop`` frames removed)."""
        return self.decoder(self.post_quant_conv(z))[:, :, drop:]
