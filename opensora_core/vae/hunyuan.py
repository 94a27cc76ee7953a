"""Hunyuan causal 3D video VAE: the autoencoder of Open-Sora 2.0 (``hunyuan_vae.safetensors``).

Our implementation of ``AutoencoderKLCausal3D`` (HunyuanVideo's VAE as Open-Sora 2.0 ships it,
opensora/models/hunyuan_vae/ at hpcaitech/Open-Sora main 7ad6a96), with the official parameter
names so the released state dict loads with ``strict=True``.

Architecture: 3D convolutions padded causally (time: ``k - 1`` copies of the first frame in
front; height and width: ``k // 2`` edge pixels, all *replicate* padding), GroupNorm (eps 1e-6,
statistics over channels-per-group x T x H x W) + SiLU ResNet blocks, 8x spatial and 4x temporal
compression (stride-2 convs; upsampling repeats frame 0 in space only, so T -> 2T - 1), a
single-head mid-block attention in which a token sees every token of its own and earlier latent
frames, and a 2 x 16-channel posterior. ``t`` latent frames decode to ``4(t - 1) + 1`` frames;
only ``4k + 1`` frames encode without losing the last ones (:data:`~opensora_core.geometry.HUNYUAN_VAE`).

The diffusion latent is the posterior *sample* (as the official ``encode``), scaled:
``z = 0.476986 * (sample - 0)``; ``decode`` undoes it. The GroupNorm statistics span every frame,
so latent frame 0 of a clip depends (through them) on later frames; the official trainer and the
i2v reference path encode the first frame alone where it must not.

Tiling (:class:`HunyuanTiling`) is the official algorithm, including its in-place blending
order: spatial tiles of ``sample_size`` pixels (on in the release: a side > 256 px to encode,
> 32 latent px to decode) and, off in the release, temporal tiles of ``sample_tsize`` frames.
Both change the result (each tile has its own GroupNorm statistics and borders);
:data:`BOUNDED_TILING` turns the temporal tiles on to bound the decode memory of long videos.
:func:`estimate_decode_memory` predicts the working memory of a decode from shapes.

Deliberate differences from the official code, none of which changes a value beyond rounding:
the mid-block attention attends frame by frame to the allowed keys instead of adding an (L, L)
-inf mask (the mask alone would take L^2 elements); nearest upsampling is a broadcast copy written
straight into the next conv's padded input (no 2**31-element chunking needed, no concatenation);
ResNet blocks keep at most two full-size tensors besides their input (the in-place activation
only without autograd); tiled decodes keep one row (spatial) or one tile (temporal) of
predecessors instead of all tiles. ``ChannelChunkConv3d`` (splitting convs whose input exceeds
2**31 elements by channel) is not reproduced: pass ``operations`` whose Conv3d handles that where
a backend needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import LatentGeometry
from ..official_config import OfficialConstructors, config_from_official
from .autoencoder_kl import ACTIVATIONS
from .posterior import DiagonalGaussian, NoiseFn
from .tiling import TilingOptions

NORM_EPS = 1e-6  # every GroupNorm of the model (resnet_eps)
# keys of the official ae dict that name the file, not the model (weights are loaded separately, strictly)
_FILE_KEYS = {"type": "the registry name (hunyuan_vae)", "from_pretrained": "the weights file"}

# ==================================================================================================
# Config and presets
# ==================================================================================================


@dataclass(frozen=True)
class HunyuanTiling:
    """Tiled encode/decode as ``AutoencoderKLCausal3D`` does it (sizes in pixels and pixel frames).

    spatial: frames larger than ``sample_size`` (encode) or ``sample_size / 8`` latent pixels (decode)
        are cut into square tiles at a stride of ``(1 - overlap_factor)`` tiles, blended linearly over
        ``overlap_factor`` of a tile with the tile above and to the left, and cropped.
    temporal: clips longer than ``sample_tsize`` frames (encode) or ``sample_tsize / 4`` latent frames
        (decode) are cut into tiles of one more (latent) frame the same way along time.
    """

    spatial: bool = True
    temporal: bool = False
    sample_size: int = 256
    sample_tsize: int = 64
    overlap_factor: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap_factor < 1.0:
            raise ValueError(f"HunyuanTiling: overlap_factor must be in [0, 1), got {self.overlap_factor}")


@dataclass(frozen=True)
class HunyuanVAEConfig:
    """Fields of the official ``AutoEncoder3DConfig`` (same names and defaults; ``from_pretrained`` aside).

    ``use_slicing`` encodes/decodes one batch item at a time; ``dropout`` only acts in training;
    ``channel`` is unused by the official code.
    """

    act_fn: str = "silu"
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scale_factor: float = 0.476986
    shift_factor: float = 0.0
    time_compression_ratio: int = 4
    spatial_compression_ratio: int = 8
    mid_block_add_attention: bool = True
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    sample_size: int = 256
    sample_tsize: int = 64
    use_slicing: bool = False
    use_spatial_tiling: bool = False
    use_temporal_tiling: bool = False
    tile_overlap_factor: float = 0.25
    dropout: float = 0.0
    channel: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(
                f"AutoencoderKLCausal3D act_fn {self.act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"AutoencoderKLCausal3D block_out_channels {list(self.block_out_channels)} are not divisible by "
                f"norm_num_groups={self.norm_num_groups}; fix one of the two"
            )
        strides = level_strides(self)  # raises for unsupported ratios
        for axis, name in ((0, "time_compression_ratio"), (1, "spatial_compression_ratio")):
            if math.prod(s[axis] for s in strides) != getattr(self, name):
                raise ValueError(
                    f"AutoencoderKLCausal3D: {len(strides)} levels cannot give {name}={getattr(self, name)}; "
                    f"add levels to block_out_channels or change the ratio"
                )

    @classmethod
    def from_official(cls, config: dict[str, Any]) -> HunyuanVAEConfig:
        """From the official ``ae`` dict / ``AutoEncoder3DConfig`` kwargs (``type``, ``from_pretrained`` ignored)."""
        if config.get("type", "hunyuan_vae") != "hunyuan_vae":
            raise ValueError(f"AutoencoderKLCausal3D: config type {config['type']!r} is not 'hunyuan_vae'")
        return config_from_official(cls, config, "AutoencoderKLCausal3D", ignored=_FILE_KEYS)

    @property
    def tiling(self) -> HunyuanTiling:
        """The tiling the official model applies with this config."""
        return HunyuanTiling(self.use_spatial_tiling, self.use_temporal_tiling, self.sample_size, self.sample_tsize,
                             self.tile_overlap_factor)

    @property
    def geometry(self) -> LatentGeometry:
        return LatentGeometry(time_factor=self.time_compression_ratio, spatial_factor=self.spatial_compression_ratio,
                              latent_channels=self.latent_channels, causal=True, round_up_hw=True)


def level_strides(cfg: HunyuanVAEConfig) -> list[tuple[int, int, int]]:
    """(t, h, w) factor after each level: encoder level i downsamples, decoder level i upsamples by it.

    follows vae.py EncoderCausal3D / DecoderCausal3D: space halves in the first log2(spatial) levels; with
    time ratio 4, time halves in the log2(4) levels before the last, with ratio 8 together with space.
    """
    levels = len(cfg.block_out_channels)
    spatial_layers = int(math.log2(cfg.spatial_compression_ratio))
    time_layers = int(math.log2(cfg.time_compression_ratio))
    strides = []
    for i in range(levels):
        spatial = i < spatial_layers
        if cfg.time_compression_ratio == 4:
            temporal = levels - 1 - time_layers <= i < levels - 1
        elif cfg.time_compression_ratio == 8:
            temporal = i < spatial_layers
        else:
            raise ValueError(
                f"AutoencoderKLCausal3D: time_compression_ratio must be 4 or 8, got {cfg.time_compression_ratio}"
            )
        strides.append((2 if temporal else 1, 2 if spatial else 1, 2 if spatial else 1))
    return strides


# configs/diffusion/inference/256px.py ``ae`` (768px inherits it): hunyuan_vae.safetensors
PRESETS: dict[str, HunyuanVAEConfig] = {
    "hunyuan-vae": HunyuanVAEConfig(use_spatial_tiling=True, use_temporal_tiling=False),
}

# the released tiling plus temporal tiles: decode memory stops growing with the length (approximate)
BOUNDED_TILING = HunyuanTiling(spatial=True, temporal=True)


# ==================================================================================================
# Causal layers
# ==================================================================================================


class CausalConv3d(nn.Module):
    """Replicate padding (``k - 1`` frames in front, ``k // 2`` pixels around), then a plain Conv3d.

    follows unet_causal_3d_blocks.py CausalConv3d (its ChannelChunkConv3d only splits huge inputs).
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int, stride: int | tuple = 1, *, ops, **factory):
        super().__init__()
        k = kernel_size
        self.pads = (k - 1, k // 2, k // 2)  # front frames, rows / columns on each side
        self.conv = ops.Conv3d(chan_in, chan_out, k, stride=stride, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))  # (B, C_out, T', H', W')

    def pad(self, x: Tensor) -> Tensor:
        """Replicate-padded copy [B, C, T + k - 1, H + 2p, W + 2p] (``x`` itself for k = 1)."""
        pt, ph, pw = self.pads
        if not any(self.pads):
            return x
        return F.pad(x, (pw, pw, ph, ph, pt, 0), mode="replicate")

    def padded_empty(self, like: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """An uninitialised padded tensor for an input of ``size`` (T, H, W), and its interior view.

        Write the input into the interior, then :meth:`fill_padding_`: the input never exists unpadded.
        """
        pt, ph, pw = self.pads
        t, h, w = size
        padded = like.new_empty(*like.shape[:2], t + pt, h + 2 * ph, w + 2 * pw)
        return padded, padded[:, :, pt:, ph:ph + h, pw:pw + w]

    def fill_padding_(self, padded: Tensor) -> Tensor:
        """Replicate the interior's edges into the border of ``padded``, in place (the same values as F.pad)."""
        pt, ph, pw = self.pads
        rows, cols = padded.shape[3] - 2 * ph, padded.shape[4] - 2 * pw
        inner = padded[:, :, pt:, ph:ph + rows]  # interior frames and rows, all columns
        inner[..., :pw].copy_(inner[..., pw:pw + 1].expand_as(inner[..., :pw]))
        inner[..., pw + cols:].copy_(inner[..., pw + cols - 1:pw + cols].expand_as(inner[..., pw + cols:]))
        frames = padded[:, :, pt:]  # interior frames, all rows and columns
        frames[..., :ph, :].copy_(frames[..., ph:ph + 1, :].expand_as(frames[..., :ph, :]))
        frames[..., ph + rows:, :].copy_(frames[..., ph + rows - 1:ph + rows, :].expand_as(frames[..., ph + rows:, :]))
        padded[:, :, :pt].copy_(padded[:, :, pt:pt + 1].expand_as(padded[:, :, :pt]))
        return padded


def repeat_nearest_(out: Tensor, x: Tensor) -> Tensor:
    """Nearest-neighbour upsampling of ``x`` [B, C, T, H, W] by integer factors into ``out`` [B, C, fT, fH, fW].

    The same values as ``F.interpolate(mode="nearest")``, written by one broadcast copy (no 2**31-element
    limit, no intermediate tensor).
    """
    b, c, t, h, w = x.shape
    ft, fh, fw = out.shape[2] // t, out.shape[3] // h, out.shape[4] // w
    grid = out.unflatten(4, (w, fw)).unflatten(3, (h, fh)).unflatten(2, (t, ft))  # (B, C, T, ft, H, fh, W, fw)
    grid.copy_(x[:, :, :, None, :, None, :, None].expand_as(grid))
    return out


class UpsampleCausal3D(nn.Module):
    """Frame 0 upsampled in space only, frames 1.. in time and space (T -> 2T - 1), then a causal conv.

    follows unet_causal_3d_blocks.py UpsampleCausal3D. The upsampled frames are written straight into
    the conv's padded input, so only that one copy exists.
    """

    def __init__(self, channels: int, factor: tuple[int, int, int], *, ops, **factory):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels, 3, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        _, _, t, h, w = x.shape
        ft, fh, fw = self.factor
        padded, up = self.conv.padded_empty(x, (1 + ft * (t - 1), h * fh, w * fw))  # up: (B, C, 1 + ft(T-1), fH, fW)
        repeat_nearest_(up[:, :, :1], x[:, :, :1])  # frame 0: space only
        if t > 1:
            repeat_nearest_(up[:, :, 1:], x[:, :, 1:])  # frames 1..: time and space
        return self.conv.conv(self.conv.fill_padding_(padded))


class DownsampleCausal3D(nn.Module):
    """A strided causal conv: T -> 1 + (T - 1) // 2 where time is strided, H -> ceil(H / 2)."""

    def __init__(self, channels: int, stride: tuple[int, int, int], *, ops, **factory):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=stride, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# ==================================================================================================
# Blocks
# ==================================================================================================


class ResnetBlockCausal3D(nn.Module):
    """GroupNorm-act-conv twice plus a 1x1x1 causal conv shortcut when the width changes.

    follows unet_causal_3d_blocks.py ResnetBlockCausal3D (output_scale_factor 1).
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        groups = cfg.norm_num_groups
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=NORM_EPS, **factory)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, ops=ops, **factory)
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=NORM_EPS, **factory)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, ops=ops, **factory)
        self.nonlinearity = ACTIVATIONS[cfg.act_fn]()
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        # one step per line, rebinding h, so that besides x at most two full-size tensors are alive
        h = activate(self.nonlinearity, self.norm1(x))  # (B, C_in, T, H, W)
        h = self.conv1.pad(h)  # (B, C_in, T + 2, H + 2, W + 2)
        h = self.conv1.conv(h)  # (B, C_out, T, H, W)
        h = activate(self.nonlinearity, self.norm2(h))
        h = self.conv2.pad(self.dropout(h))
        h = self.conv2.conv(h)  # (B, C_out, T, H, W)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h.add_(x)  # h is a fresh conv output: adding in place saves a tensor (conv backward needs no output)


_INPLACE_ACTIVATIONS = {nn.SiLU: F.silu, nn.ReLU: F.relu, nn.Mish: F.mish}


def activate(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)`` for a freshly computed ``x``: in place when no gradient is recorded (the same values)."""
    inplace = _INPLACE_ACTIVATIONS.get(type(act))
    if inplace is None or torch.is_grad_enabled():
        return act(x)
    return inplace(x, inplace=True)


def frame_causal_attention(q: Tensor, k: Tensor, v: Tensor, frame_tokens: int) -> Tensor:
    """Softmax attention (N, 1, L, D) in which token i sees every token of frames <= its own.

    The official code adds a (L, L) mask of -inf (prepare_causal_attention_mask); attending frame by
    frame to the allowed keys only gives the same softmax without building the mask.
    """
    out = torch.empty_like(q)
    for start in range(0, q.shape[2], frame_tokens):
        stop = start + frame_tokens
        out[:, :, start:stop] = F.scaled_dot_product_attention(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop])
    return out


class CausalAttention(nn.Module):
    """Single-head self-attention over all latent pixels of frames <= the token's frame, with residual.

    follows diffusers ``Attention(C, heads=1, dim_head=C, norm_num_groups, residual_connection=True,
    bias=True, _from_deprecated_attn_block=True)`` as UNetMidBlockCausal3D builds it: GroupNorm,
    q/k/v linear over channels, softmax(q k^T / sqrt(C)) v under the per-frame causal mask, out linear.
    """

    def __init__(self, channels: int, groups: int, *, ops, **factory):
        super().__init__()
        self.group_norm = ops.GroupNorm(groups, channels, eps=NORM_EPS, **factory)
        self.to_q = ops.Linear(channels, channels, **factory)
        self.to_k = ops.Linear(channels, channels, **factory)
        self.to_v = ops.Linear(channels, channels, **factory)
        self.to_out = nn.ModuleList([ops.Linear(channels, channels, **factory), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2).contiguous()  # (B, THW, C), frame-major
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, THW, C)
        del tokens
        out = frame_causal_attention(q, k, v, h * w).squeeze(1)  # (B, THW, C)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, t, h, w)  # (B, C, T, H, W)
        return x + out


class MidBlockCausal3D(nn.Module):
    """ResNet, causal attention, ResNet at the latent resolution (follows UNetMidBlockCausal3D)."""

    def __init__(self, channels: int, cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        # registration order = the official state-dict order (attentions before resnets)
        attention = [CausalAttention(channels, cfg.norm_num_groups, ops=ops, **factory)]
        self.attentions = nn.ModuleList(attention if cfg.mid_block_add_attention else [])
        self.resnets = nn.ModuleList(ResnetBlockCausal3D(channels, channels, cfg, ops=ops, **factory) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)  # (B, C, T, H, W)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlockCausal3D(nn.Module):
    """``layers`` ResNets, then a strided conv unless ``stride`` is (1, 1, 1)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, stride: tuple[int, int, int],
                 cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        widths = [in_channels] + [out_channels] * layers
        self.resnets = nn.ModuleList(
            ResnetBlockCausal3D(widths[i], out_channels, cfg, ops=ops, **factory) for i in range(layers)
        )
        self.downsamplers = None
        if stride != (1, 1, 1):
            self.downsamplers = nn.ModuleList([DownsampleCausal3D(out_channels, stride, ops=ops, **factory)])

    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *(self.downsamplers or [])]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers():
            x = layer(x)
        return x


class UpDecoderBlockCausal3D(nn.Module):
    """``layers`` ResNets, then an upsampler unless ``factor`` is (1, 1, 1)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, factor: tuple[int, int, int],
                 cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        widths = [in_channels] + [out_channels] * layers
        self.resnets = nn.ModuleList(
            ResnetBlockCausal3D(widths[i], out_channels, cfg, ops=ops, **factory) for i in range(layers)
        )
        self.upsamplers = None
        if factor != (1, 1, 1):
            self.upsamplers = nn.ModuleList([UpsampleCausal3D(out_channels, factor, ops=ops, **factory)])

    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *(self.upsamplers or [])]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers():
            x = layer(x)
        return x


# ==================================================================================================
# Encoder and decoder
# ==================================================================================================


class EncoderCausal3D(nn.Module):
    """Video [B, 3, T, H, W] -> moments [B, 2L, 1 + (T - 1) / 4, H / 8, W / 8] (before quant_conv).

    follows vae.py EncoderCausal3D (double_z).
    """

    def __init__(self, cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        chans = cfg.block_out_channels
        self.conv_in = CausalConv3d(cfg.in_channels, chans[0], 3, ops=ops, **factory)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlockCausal3D(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, stride, cfg, ops=ops, **factory
            )
            for i, stride in enumerate(level_strides(cfg))
        )
        self.mid_block = MidBlockCausal3D(chans[-1], cfg, ops=ops, **factory)
        self.conv_norm_out = ops.GroupNorm(cfg.norm_num_groups, chans[-1], eps=NORM_EPS, **factory)
        self.conv_act = ACTIVATIONS[cfg.act_fn]()
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.latent_channels, 3, ops=ops, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # (B, C0, T, H, W)
        for layer in [layer for block in self.down_blocks for layer in block.layers()]:
            x = layer(x)  # (B, C_i, T_i, H_i, W_i); layer by layer, so no caller keeps a level's input alive
        x = self.mid_block(x)  # (B, C_last, t, h, w)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # (B, 2L, t, h, w)


class DecoderCausal3D(nn.Module):
    """Latent [B, L, t, h, w] (after post_quant_conv) -> video [B, 3, 4(t - 1) + 1, 8h, 8w].

    follows vae.py DecoderCausal3D (layers_per_block + 1 ResNets per level).
    """

    def __init__(self, cfg: HunyuanVAEConfig, *, ops, **factory):
        super().__init__()
        chans = cfg.block_out_channels[::-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, chans[0], 3, ops=ops, **factory)
        # registered before mid_block, as in the official state-dict order
        self.up_blocks = nn.ModuleList(
            UpDecoderBlockCausal3D(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, factor, cfg, ops=ops, **factory
            )
            for i, factor in enumerate(level_strides(cfg))
        )
        self.mid_block = MidBlockCausal3D(chans[0], cfg, ops=ops, **factory)
        self.conv_norm_out = ops.GroupNorm(cfg.norm_num_groups, chans[-1], eps=NORM_EPS, **factory)
        self.conv_act = ACTIVATIONS[cfg.act_fn]()
        self.conv_out = CausalConv3d(chans[-1], cfg.out_channels, 3, ops=ops, **factory)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))  # (B, C_last, t, h, w)
        for layer in [layer for block in self.up_blocks for layer in block.layers()]:
            x = layer(x)  # (B, C_i, T_i, H_i, W_i); layer by layer, so no caller keeps a level's input alive
        x = activate(self.conv_act, self.conv_norm_out(x))  # (B, C_0, T, H, W)
        x = self.conv_out.pad(x)
        return self.conv_out.conv(x)  # (B, 3, 4(t - 1) + 1, 8h, 8w)


# ==================================================================================================
# Official tiling
# ==================================================================================================


@dataclass(frozen=True)
class TilePlan:
    """One axis of the official tiling: tiles of ``size`` input entries start every ``stride``; each output
    tile is blended with its predecessor over ``blend`` entries and cropped to ``keep``. An input side
    longer than ``size`` is tiled."""

    size: int
    stride: int
    blend: int
    keep: int


@dataclass(frozen=True)
class TilePlans:
    encode_space: TilePlan  # pixels -> latent pixels (both sides)
    decode_space: TilePlan  # latent pixels -> pixels
    encode_time: TilePlan  # frames -> latent frames (tiles take size + 1 frames)
    decode_time: TilePlan  # latent frames -> frames (tiles take size + 1 latent frames)


def _plan(size_in: int, size_out: int, overlap: float) -> TilePlan:
    blend = int(size_out * overlap)
    return TilePlan(size_in, int(size_in * (1 - overlap)), blend, size_out - blend)


def tile_plans(cfg: HunyuanVAEConfig, tiling: HunyuanTiling) -> TilePlans:
    """The official tile sizes (AutoencoderKLCausal3D.__init__ and the tiled_* methods)."""
    f = tiling.overlap_factor
    latent_size = int(tiling.sample_size / 2 ** (len(cfg.block_out_channels) - 1))
    latent_tsize = tiling.sample_tsize // cfg.time_compression_ratio
    plans = TilePlans(
        _plan(tiling.sample_size, latent_size, f), _plan(latent_size, tiling.sample_size, f),
        _plan(tiling.sample_tsize, latent_tsize, f), _plan(latent_tsize, tiling.sample_tsize, f),
    )
    checks = [(tiling.spatial, plans.encode_space, plans.decode_space, 2 ** (len(cfg.block_out_channels) - 1)),
              (tiling.temporal, plans.encode_time, plans.decode_time, cfg.time_compression_ratio)]
    for used, encode, decode, factor in checks:
        if used and not (encode.stride == encode.keep * factor and decode.keep == decode.stride * factor > 0):
            raise ValueError(
                f"{tiling}: the official tiles would not line up (encode {encode}, decode {decode}); with "
                f"overlap_factor 0.25 use a sample_size that is a multiple of 32 and a sample_tsize that is a "
                f"multiple of 16"
            )
    return plans


def _ramp(extent: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Official blend weights at y < extent: 1 - y/extent (previous tile) and y/extent (this tile).

    Computed in float64 and rounded to the op-math precision PyTorch uses for a Python scalar with
    ``like``'s dtype, so products equal the official ``tensor * (y / extent)`` bit for bit.
    """
    opmath = torch.float64 if like.dtype == torch.float64 else torch.float32
    rise = torch.arange(extent, dtype=torch.float64, device=like.device) / extent
    return (1 - rise).to(opmath), rise.to(opmath)


def blend_(previous: Tensor, tile: Tensor, extent: int, dim: int) -> None:
    """Blend the first ``extent`` entries of ``tile`` along ``dim`` with the last of ``previous``, in place.

    follows AutoencoderKLCausal3D.blend_v / blend_h / blend_t (extent capped by both lengths).
    """
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent == 0:
        return
    fall, rise = _ramp(extent, tile)
    shape = [1] * tile.ndim
    shape[dim] = extent
    head = tile.narrow(dim, 0, extent)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head.copy_((tail * fall.view(shape)).to(tile.dtype) + (head * rise.view(shape)).to(tile.dtype))


def tiled_spatial(fn: Callable[[Tensor], Tensor], x: Tensor, plan: TilePlan) -> Tensor:
    """``fn`` on overlapping square tiles of ``x`` [..., H, W], blended and joined as the official code does.

    Row by row, each tile is blended in place with the (already blended) tile above, then with the one to
    its left, and cropped to ``keep`` x ``keep``. Only the previous row of tiles is kept.
    """
    strips, above = [], None
    for i in range(0, x.shape[-2], plan.stride):
        row: list[Tensor] = []
        for j in range(0, x.shape[-1], plan.stride):
            tile = fn(x[..., i:i + plan.size, j:j + plan.size])  # (B, C', T', h_tile, w_tile)
            if above is not None:
                blend_(above[len(row)], tile, plan.blend, dim=-2)
            if row:
                blend_(row[-1], tile, plan.blend, dim=-1)
            row.append(tile)
        strips.append(torch.cat([tile[..., :plan.keep, :plan.keep] for tile in row], dim=-1))
        above = row
    return torch.cat(strips, dim=-2)


def tiled_temporal(fn: Callable[[Tensor], Tensor], x: Tensor, plan: TilePlan) -> Tensor:
    """``fn`` on tiles of ``size + 1`` frames of ``x`` [B, C, T, ...] every ``stride`` frames, joined as official.

    A tile after the first drops its first output frame (its first input frame, encoded alone, overlaps
    the previous tile), is blended in place with the previous tile over ``blend`` frames and cropped to
    ``keep``; the first tile keeps ``keep + 1``.
    """
    parts, previous = [], None
    for start in range(0, x.shape[2], plan.stride):
        chunk = x[:, :, start:start + plan.size + 1]
        if previous is None:
            tile = fn(chunk)  # (B, C', T_tile, ...)
            parts.append(tile[:, :, :plan.keep + 1])
        elif chunk.shape[2] == 1:
            break  # the last tile holds one frame: all it would give is the dropped first frame
        else:
            tile = fn(chunk)[:, :, 1:]
            blend_(previous, tile, plan.blend, dim=2)
            parts.append(tile[:, :, :plan.keep])
        previous = tile
    return torch.cat(parts, dim=2)


# ==================================================================================================
# Autoencoder
# ==================================================================================================


class HunyuanVAE(OfficialConstructors, nn.Module):
    """``AutoencoderKLCausal3D`` with the official parameter names; a :class:`~.pipeline.VideoVAE`.

    ``encode``: video [B, 3, 4k + 1, H, W] in [-1, 1] -> diffusion latent [B, 16, k + 1, H/8, W/8]
    (scaled posterior sample). ``decode``: diffusion latent [B, 16, t, h, w] -> video
    [B, 3, 4(t - 1) + 1, 8h, 8w] (not clamped). ``tiling=None`` tiles as the config says (the release:
    spatial tiles above 256 px); pass a :class:`HunyuanTiling` to choose, e.g. :data:`BOUNDED_TILING`.
    """

    CONFIG = HunyuanVAEConfig
    PRESETS = PRESETS
    OFFICIAL_NAME = "AutoencoderKLCausal3D"
    micro_batch_size = None  # VideoVAE: the clip is processed as a whole

    def __init__(self, config: HunyuanVAEConfig = PRESETS["hunyuan-vae"], *, operations=nn,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.geometry = config.geometry
        factory = {"device": device, "dtype": dtype}
        latent = config.latent_channels
        self.encoder = EncoderCausal3D(config, ops=operations, **factory)
        self.decoder = DecoderCausal3D(config, ops=operations, **factory)
        self.quant_conv = operations.Conv3d(2 * latent, 2 * latent, 1, **factory)
        self.post_quant_conv = operations.Conv3d(latent, latent, 1, **factory)

    @classmethod
    def config_from_kwargs(cls, config: Mapping[str, Any]) -> HunyuanVAEConfig:
        """From the official ``ae`` dict / ``AutoEncoder3DConfig`` kwargs."""
        return HunyuanVAEConfig.from_official(config)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    # -- the diffusion latent ---------------------------------------------------------------------

    def scale_latent(self, latent: Tensor) -> Tensor:
        """Posterior sample -> diffusion latent: scale_factor * (latent - shift_factor), as the official encode."""
        return self.config.scale_factor * (latent - self.config.shift_factor)

    def unscale_latent(self, z: Tensor) -> Tensor:
        """Diffusion latent -> decoder input: z / scale_factor + shift_factor, as the official decode."""
        return z / self.config.scale_factor + self.config.shift_factor

    # -- encode -----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: NoiseFn | None = None, tiling: HunyuanTiling | TilingOptions | None = None,
               return_posterior: bool = False) -> Tensor | tuple[Tensor, DiagonalGaussian]:
        """Video [B, 3, 4k + 1, H, W] in [-1, 1] -> diffusion latent [B, 16, k + 1, H/8, W/8].

        A posterior sample (official default) drawn once over the whole latent from ``noise`` (stage
        ``"video"``), else ``generator``, else a fresh OS-seeded generator; the mean with ``sample=False``.
        ``return_posterior`` also returns the (unscaled) posterior.
        """
        posterior = DiagonalGaussian.from_moments(self.encode_moments(x, tiling=tiling))  # (B, L, t, h, w) each
        z = posterior.sample(noise, generator=generator, stage="video") if sample else posterior.mode()
        z = self.scale_latent(z)
        return (z, posterior) if return_posterior else z

    @torch.no_grad()
    def encode_moments(self, x: Tensor, *, tiling: HunyuanTiling | None = None) -> Tensor:
        """Video [B, 3, T, H, W] -> posterior moments [B, 2L, t, h, w] (mean | logvar, not clamped)."""
        x = self._check_video(x)
        tiling = self._tiling(tiling)
        plans = tile_plans(self.config, tiling)
        if tiling.temporal and x.shape[2] > plans.encode_time.size:
            return tiled_temporal(lambda clip: self._encode_frames(clip, tiling, plans), x, plans.encode_time)
        return self._encode_frames(x, tiling, plans)

    def _encode_frames(self, x: Tensor, tiling: HunyuanTiling, plans: TilePlans) -> Tensor:
        if tiling.spatial and max(x.shape[-2:]) > plans.encode_space.size:
            return tiled_spatial(self._encode_tile, x, plans.encode_space)
        if self.config.use_slicing and x.shape[0] > 1:
            return torch.cat([self._encode_tile(item) for item in x.split(1)])
        return self._encode_tile(x)

    def _encode_tile(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2L, t, h, w)

    # -- decode -----------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, z: Tensor, num_frames: int | None = None, *,
               tiling: HunyuanTiling | TilingOptions | None = None) -> Tensor:
        """Diffusion latent [B, 16, t, h, w] -> video [B, 3, 4(t - 1) + 1, 8h, 8w] (not clamped).

        ``num_frames`` (optional) must be 4(t - 1) + 1, the frames ``t`` latent frames decode to.
        """
        z = self._check_latent(z)
        if num_frames is not None:
            self.geometry.check_decodable(z.shape[2], num_frames)
        latent = self.unscale_latent(z)
        tiling = self._tiling(tiling)
        plans = tile_plans(self.config, tiling)
        if self.config.use_slicing and latent.shape[0] > 1:
            return torch.cat([self._decode_clip(item, tiling, plans) for item in latent.split(1)])
        return self._decode_clip(latent, tiling, plans)

    def _decode_clip(self, latent: Tensor, tiling: HunyuanTiling, plans: TilePlans) -> Tensor:
        if tiling.temporal and latent.shape[2] > plans.decode_time.size:
            return tiled_temporal(lambda clip: self._decode_frames(clip, tiling, plans), latent, plans.decode_time)
        return self._decode_frames(latent, tiling, plans)

    def _decode_frames(self, latent: Tensor, tiling: HunyuanTiling, plans: TilePlans) -> Tensor:
        if tiling.spatial and max(latent.shape[-2:]) > plans.decode_space.size:
            return tiled_spatial(self._decode_tile, latent, plans.decode_space)
        return self._decode_tile(latent)

    def _decode_tile(self, latent: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(latent))  # (B, 3, T, H, W)

    # -- sizes and checks -------------------------------------------------------------------------

    def decode_memory_bytes(self, latent_shape: Sequence[int], num_frames: int | None = None, *,
                            tiling: HunyuanTiling | TilingOptions | None = None, dtype: torch.dtype | None = None,
                            backend_workspace: bool = True) -> int:
        """Working memory of :meth:`decode` of a (B, 16, t, h, w) latent in bytes, weights excluded (see
        :class:`~.pipeline.VideoVAE`; the shape model is :func:`estimate_decode_memory`)."""
        dtype = dtype or self.post_quant_conv.weight.dtype
        return estimate_decode_memory(self.config, tuple(latent_shape), dtype=dtype, tiling=self._tiling(tiling),
                                      backend_workspace=backend_workspace)


    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] -> [t, h, w] (None passes through), as the official ``get_latent_size``."""
        return self.geometry.get_latent_size(input_size)

    def _tiling(self, tiling: HunyuanTiling | TilingOptions | None) -> HunyuanTiling:
        """The config's tiling for None; a :class:`~.tiling.TilingOptions` (the pack's generic tiled mode, e.g.
        the out-of-memory retry or a node's tile widgets) becomes the official algorithm with spatial tiles of
        its size and overlap and temporal tiles on (bounded memory)."""
        if tiling is None:
            return self.config.tiling
        if isinstance(tiling, TilingOptions):
            return HunyuanTiling(spatial=True, temporal=True,
                                 sample_size=tiling.tile_size * self.config.spatial_compression_ratio,
                                 sample_tsize=self.config.sample_tsize,
                                 overlap_factor=tiling.tile_overlap / tiling.tile_size)
        if not isinstance(tiling, HunyuanTiling):
            raise TypeError(
                f"the Hunyuan VAE tiles with HunyuanTiling (e.g. BOUNDED_TILING) or TilingOptions, got "
                f"{type(tiling).__name__}"
            )
        return tiling

    def _check_video(self, x: Tensor) -> Tensor:
        channels = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"expected a video [B, {channels}, T, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        self.geometry.check_num_frames(x.shape[2])
        self.geometry.check_whole_hw(x.shape[3], x.shape[4])
        return self._to_model(x)

    def _check_latent(self, z: Tensor) -> Tensor:
        channels = self.config.latent_channels
        if z.ndim != 5 or z.shape[1] != channels:
            raise ValueError(f"expected a latent [B, {channels}, t, h, w], got shape {tuple(z.shape)}")
        return self._to_model(z)

    def _to_model(self, x: Tensor) -> Tensor:
        p = self.post_quant_conv.weight
        return x.to(device=p.device, dtype=p.dtype)


# ==================================================================================================
# Memory estimate
# ==================================================================================================


def estimate_decode_memory(config: HunyuanVAEConfig, latent_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                           tiling: HunyuanTiling | None = None, backend_workspace: bool = True) -> int:
    """Bytes of working memory (weights not included) that ``HunyuanVAE.decode`` needs, from shapes only.

    Counts the tensors this implementation holds at its fullest moment: a ResNet block's input plus,
    step by step, the activation, its padded copy and the conv output; an upsampler's input, padded
    upsampled tensor and output; the mid block's tokens, q/k/v and one frame's attention scores.
    Tiled decodes add the tiles kept for blending and the assembled output. ``backend_workspace``
    adds what the CPU convolution (oneDNN) allocates per call, measured as one copy of (input channels
    x output positions) and one copy of the weight; other backends (e.g. cuDNN) bound their workspace
    differently. benchmarks/hunyuan_vae_memory.py compares the estimate with measured peak RSS: on a
    CPU it gave 0.96 (float32) and 0.88 (bfloat16) of the working memory, untiled and bounded alike,
    so budget about 1.15x the estimate.
    """
    tiling = config.tiling if tiling is None else tiling
    plans = tile_plans(config, tiling)
    b, _, t, h, w = latent_shape
    count = _MemoryCount(config, b, dtype.itemsize, backend_workspace)
    weight = max(config.block_out_channels) ** 2 * 27 * dtype.itemsize if backend_workspace else 0
    if tiling.temporal and t > plans.decode_time.size:
        tile_t = plans.decode_time.size + 1
        tile = count.spatially_tiled(plans, tiling, tile_t, h, w)
        previous, output = count.video(tile_t, h, w), count.video(t, h, w)  # the tile kept for blending, the result
        return weight + max(tile + previous + output, previous + 2 * output)  # decoding a tile | joining the parts
    return weight + count.spatially_tiled(plans, tiling, t, h, w)


@dataclass(frozen=True)
class _MemoryCount:
    """Byte counts of the tensors of a decode with batch ``batch`` and element size ``itemsize``."""

    cfg: HunyuanVAEConfig
    batch: int
    itemsize: int
    workspace: bool

    def vol(self, channels: int, shape: Sequence[int], pad: int = 0) -> int:
        """A [B, channels, T, H, W] tensor, optionally with the causal conv's padding (2 frames, 1 pixel)."""
        t, h, w = shape
        return self.batch * channels * (t + 2 * pad) * (h + 2 * pad) * (w + 2 * pad) * self.itemsize

    def conv_copy(self, channels: int, out_shape: Sequence[int]) -> int:
        return self.vol(channels, out_shape) if self.workspace else 0

    def video(self, t: int, h: int, w: int) -> int:
        f_t, f_s = self.cfg.time_compression_ratio, self.cfg.spatial_compression_ratio
        return self.vol(self.cfg.out_channels, (f_t * (t - 1) + 1, h * f_s, w * f_s))

    def spatially_tiled(self, plans: TilePlans, tiling: HunyuanTiling, t: int, h: int, w: int) -> int:
        side = plans.decode_space.size
        if not (tiling.spatial and max(h, w) > side):
            return self.decoder(t, h, w)
        tile = self.decoder(t, min(h, side), min(w, side))
        row_width = sum(min(side, w - j) for j in range(0, w, plans.decode_space.stride))  # latent columns of a row
        kept = 2 * self.video(t, min(h, side), row_width)  # this row of tiles and the one above
        output = self.video(t, h, w)
        return max(tile + kept + output, kept + 2 * output)  # decoding a tile (+ strips so far) | joining the strips

    def decoder(self, t: int, h: int, w: int) -> int:
        """Largest sum of live tensors over the stages of one DecoderCausal3D call on a (t, h, w) latent."""
        chans, vol = self.cfg.block_out_channels[::-1], self.vol
        shape, c = (t, h, w), chans[0]
        peaks = [7 * vol(c, shape) + 2 * self.batch * (h * w) ** 2 * t * 4]  # x, tokens, q, k, v, out + scores
        for i, factor in enumerate(level_strides(self.cfg)):
            for _ in range(self.cfg.layers_per_block + 1):
                x, xp, y, yp = vol(c, shape), vol(c, shape, 1), vol(chans[i], shape), vol(chans[i], shape, 1)
                conv1, conv2 = xp + y + self.conv_copy(c, shape), yp + y + self.conv_copy(chans[i], shape)
                peaks.append(x + max(x + xp, conv1, 2 * y, y + yp, conv2))  # ResnetBlockCausal3D.forward steps
                c = chans[i]
            if factor != (1, 1, 1):
                up = (1 + factor[0] * (shape[0] - 1), shape[1] * factor[1], shape[2] * factor[2])
                peaks.append(vol(c, shape) + vol(c, up, 1) + vol(c, up) + self.conv_copy(c, up))  # UpsampleCausal3D
                shape = up
        x, xp = vol(c, shape), vol(c, shape, 1)
        peaks.append(max(2 * x, x + xp, xp + vol(self.cfg.out_channels, shape) + self.conv_copy(c, shape)))
        return max(peaks)
