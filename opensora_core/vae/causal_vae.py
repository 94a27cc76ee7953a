"""CausalVideoVAE of Open-Sora-Plan v1.0, v1.1 and v1.2 (``CausalVAEModel``, 4x8x8 compression, 4 channels).

One class builds the three released layouts from their official configs (FACTS.md section 1 of the
Open-Sora-Plan reference): v1.0 all-3D with the buggy ``AttnBlock3D`` and average-pool time
downsampling; v1.1 with 2D/3D stages and learned ``TimeDownsampleRes2x``/``TimeUpsampleRes2x``; v1.2 (D4)
with joint 2x2x2 ``Spatial2xTime2x3DDownsample``/``Upsample``. Follows
opensora/models/ae/videobase/causal_vae/modeling_causalvae.py (@v1.0.0, @v1.1.0) and
opensora/models/causalvideovae/model/causal_vae/modeling_causalvae.py (@v1.2.0); parameter names are
the released ones (``encoder.down.{i}.block.{j}.*``, ``decoder.up.{i}.*``, ``quant_conv.conv.*``).

``encode(x)`` returns the posterior (:class:`~.posterior.DiagonalGaussian`), ``decode(z)`` the video;
both run the whole clip at once (the official untiled path). ``tiled_decode`` / ``tiled_encode``
reproduce the official tiling (spatial tiles blended in place, temporal chunks from v1.1 on), which
bounds memory but changes the numbers (GroupNorm statistics are per tile). The v1.0/v1.1 classes also
owned their training loss (``loss.*``: LPIPS + discriminator); a state dict that carries those keys
loads, and the dropped keys are logged and kept in ``ignored_training_keys``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import LatentGeometry
from ..official_config import OfficialConstructors
from .osp_blocks import (
    AttnBlock3DFix,
    CausalConv3d,
    Downsample,
    ResnetBlock2D,
    ResnetBlock3D,
    Spatial2xTime2x3DDownsample,
    Spatial2xTime2x3DUpsample,
    TemporalLayer,
    Upsample,
    causal_input,
    check_choice,
    check_latent,
    check_video,
    make_norm,
    run_layer,
)
from .posterior import DiagonalGaussian

log = logging.getLogger("opensora")

# training-only constructor kwargs of the v1.0/v1.1 classes (the loss they owned); accepted and ignored
TRAINING_ONLY_KWARGS = {
    "lr": "learning rate of the Lightning training module",
    "loss_type": "training loss class (LPIPS + discriminator)",
    "loss_params": "training loss arguments",
}
# config.json entries of the v1.1 release that are not constructor arguments (diffusers ignores them)
_NON_ARGUMENTS = {"in_channels": "RGB input (always 3)", "out_channels": "RGB output (always 3)"}
TRAINING_KEY_PREFIX = "loss."


# ==================================================================================================
# Config and presets
# ==================================================================================================


@dataclass(frozen=True)
class CausalVAEConfig:
    """Constructor kwargs of the official ``CausalVAEModel`` (names and class defaults of @v1.2.0).

    Module choices are the official class names ("" = none at that level).
    """

    hidden_size: int = 128
    z_channels: int = 4
    hidden_size_mult: tuple[int, ...] = (1, 2, 4, 4)
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    resolution: int = 256
    double_z: bool = True
    embed_dim: int = 4
    num_res_blocks: int = 2
    q_conv: str = "CausalConv3d"
    encoder_conv_in: str = "CausalConv3d"
    encoder_conv_out: str = "CausalConv3d"
    encoder_attention: str = "AttnBlock3D"
    encoder_resnet_blocks: tuple[str, ...] = ("ResnetBlock3D",) * 4
    encoder_spatial_downsample: tuple[str, ...] = ("SpatialDownsample2x",) * 3 + ("",)
    encoder_temporal_downsample: tuple[str, ...] = ("", "TimeDownsample2x", "TimeDownsample2x", "")
    encoder_mid_resnet: str = "ResnetBlock3D"
    decoder_conv_in: str = "CausalConv3d"
    decoder_conv_out: str = "CausalConv3d"
    decoder_attention: str = "AttnBlock3D"
    decoder_resnet_blocks: tuple[str, ...] = ("ResnetBlock3D",) * 4
    decoder_spatial_upsample: tuple[str, ...] = ("",) + ("SpatialUpsample2x",) * 3
    decoder_temporal_upsample: tuple[str, ...] = ("", "", "TimeUpsample2x", "TimeUpsample2x")
    decoder_mid_resnet: str = "ResnetBlock3D"
    use_quant_layer: bool = True

    def __post_init__(self):
        levels = len(self.hidden_size_mult)
        for name in ("encoder_resnet_blocks", "encoder_spatial_downsample", "encoder_temporal_downsample",
                     "decoder_resnet_blocks", "decoder_spatial_upsample", "decoder_temporal_upsample"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"CausalVAEModel: {name} needs one entry per level ({levels}), "
                                 f"got {list(getattr(self, name))}")
        if not self.double_z:
            raise ValueError("CausalVAEModel: double_z=False is not supported (every release encodes mean + logvar)")
        check_choice(self.q_conv, ("CausalConv3d",), "CausalVAEModel q_conv")

    @property
    def latent_channels(self) -> int:
        return self.embed_dim if self.use_quant_layer else self.z_channels

    @property
    def geometry(self) -> LatentGeometry:
        """Compression from the module choices: x2 in space (and time) per downsampling level."""
        space = sum(name in _SPATIAL_DOWN_TIME for name in self.encoder_spatial_downsample if name)
        time = sum(bool(n) for n in self.encoder_temporal_downsample)
        time += sum(_SPATIAL_DOWN_TIME[n] for n in self.encoder_spatial_downsample if n)
        return LatentGeometry(time_factor=2**time, spatial_factor=2**space, latent_channels=self.latent_channels,
                              causal=True)


_V1_LEVELS = dict(hidden_size=128, z_channels=4, hidden_size_mult=(1, 2, 4, 4), embed_dim=4, num_res_blocks=2)

# scripts/causalvae/release.json @v1.0.0 (identical @v1.1.0)
_V1_0 = CausalVAEConfig(
    **_V1_LEVELS,
    encoder_conv_in="CausalConv3d", encoder_attention="AttnBlock3D", decoder_attention="AttnBlock3D",
    encoder_resnet_blocks=("ResnetBlock3D",) * 4,
    encoder_spatial_downsample=("SpatialDownsample2x",) * 3 + ("",),
    encoder_temporal_downsample=("TimeDownsample2x", "TimeDownsample2x", "", ""),
    decoder_spatial_upsample=("",) + ("SpatialUpsample2x",) * 3,
    decoder_temporal_upsample=("", "", "TimeUpsample2x", "TimeUpsample2x"),
)
# docs/Train_And_Eval_CausalVideoVAE.md on branch hw ("the v1.1.0 version model configuration file")
_V1_1 = dataclasses.replace(
    _V1_0,
    encoder_conv_in="Conv2d", encoder_attention="AttnBlock3DFix", decoder_attention="AttnBlock3DFix",
    encoder_resnet_blocks=("ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"),
    encoder_spatial_downsample=("Downsample",) * 3 + ("",),
    encoder_temporal_downsample=("", "TimeDownsampleRes2x", "TimeDownsampleRes2x", ""),
    decoder_temporal_upsample=("", "", "TimeUpsampleRes2x", "TimeUpsampleRes2x"),
)
# MindSpeed-MM examples/opensoraplan1.2 ae block + module dump of the release (FACTS.md section 1)
_V1_2_D4 = dataclasses.replace(
    _V1_1,
    encoder_spatial_downsample=("Downsample", "Spatial2xTime2x3DDownsample", "Spatial2xTime2x3DDownsample", ""),
    encoder_temporal_downsample=("",) * 4,
    decoder_spatial_upsample=("", "SpatialUpsample2x", "Spatial2xTime2x3DUpsample", "Spatial2xTime2x3DUpsample"),
    decoder_temporal_upsample=("",) * 4,
)

CAUSAL_VAE_PRESETS: dict[str, CausalVAEConfig] = {
    "CausalVAEModel_4x8x8-v1.0": _V1_0,
    "CausalVAEModel_4x8x8-v1.1": _V1_1,
    "CausalVAEModel_D4_4x8x8": _V1_2_D4,
}


# ==================================================================================================
# CausalVAE-only modules (modules/updownsample.py)
# ==================================================================================================


class SpatialDownsample2x(TemporalLayer):
    """v1.0: zero-pad right/bottom by one, causal conv kernel (1, 3, 3), stride (1, 2, 2)."""

    def __init__(self, channels: int, **factory):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=0, **factory)

    def forward(self, x: Tensor, stream=None) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)))  # (B, C, T, H/2, W/2)


class SpatialUpsample2x(TemporalLayer):
    """Nearest x2 in H and W (every frame), then causal conv kernel (1, 3, 3), padding (0, 1, 1)."""

    def __init__(self, channels: int, **factory):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (1, 3, 3), padding=1, **factory)

    def forward(self, x: Tensor, stream=None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))  # (B, C, T, 2H, 2W)


def _time_x2(x: Tensor) -> Tensor:
    """Keep frame 0, interpolate frames 1..T-1 x2 in time (trilinear): T -> 2T - 1 (T = 1 unchanged)."""
    if x.shape[2] == 1:
        return x
    rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
    return torch.cat([x[:, :, :1], rest], dim=2)


class TimeDownsample2x(TemporalLayer):
    """v1.0: first frame repeated twice in front, average over 3 frames with stride 2 (T -> ceil(T/2))."""

    KERNEL = 3

    def __init__(self, channels: int, **factory):
        super().__init__()

    def forward(self, x: Tensor, stream=None) -> Tensor:
        x = causal_input(x, self, self.KERNEL, 2, None)
        return F.avg_pool3d(x, (self.KERNEL, 1, 1), stride=(2, 1, 1))


class TimeUpsample2x(TemporalLayer):
    """v1.0: parameter-free x2 temporal upsampling (T -> 2T - 1)."""

    def __init__(self, channels: int, **factory):
        super().__init__()

    def forward(self, x: Tensor, stream=None) -> Tensor:
        return _time_x2(x)


class TimeDownsampleRes2x(TemporalLayer):
    """v1.1: a * avgpool3(x) + (1 - a) * conv(x), a = sigmoid(mix_factor), after first-frame padding.

    ``conv`` is a plain Conv3d (keys ``time_downsample.conv.*``), kernel 3, stride (2, 1, 1), padding (0, 1, 1).
    """

    KERNEL = 3

    def __init__(self, channels: int, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.conv = operations.Conv3d(channels, channels, self.KERNEL, stride=(2, 1, 1), padding=(0, 1, 1),
                                      device=device, dtype=dtype)
        self.mix_factor = nn.Parameter(torch.full((1,), 2.0, device=device, dtype=dtype))

    def forward(self, x: Tensor, stream=None) -> Tensor:
        alpha = torch.sigmoid(self.mix_factor.to(x.dtype))
        x = causal_input(x, self, self.KERNEL, 2, None)  # (B, C, T + 2, H, W)
        pooled = F.avg_pool3d(x, (self.KERNEL, 1, 1), stride=(2, 1, 1))
        return alpha * pooled + (1 - alpha) * self.conv(x)


class TimeUpsampleRes2x(TemporalLayer):
    """v1.1: x2 temporal interpolation y, then a * y + (1 - a) * causalconv3(y), a = sigmoid(mix_factor)."""

    def __init__(self, channels: int, **factory):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, padding=1, **factory)
        dtype, device = factory.get("dtype"), factory.get("device")
        self.mix_factor = nn.Parameter(torch.full((1,), 2.0, device=device, dtype=dtype))

    def forward(self, x: Tensor, stream=None) -> Tensor:
        alpha = torch.sigmoid(self.mix_factor.to(x.dtype))
        x = _time_x2(x)  # (B, C, 2T - 1, H, W)
        return alpha * x + (1 - alpha) * self.conv(x)


# ==================================================================================================
# Module tables: official class name -> builder(in_channels, out_channels, factory)
# ==================================================================================================


def _resnet(kind: str):
    block = {"ResnetBlock2D": ResnetBlock2D, "ResnetBlock3D": ResnetBlock3D}[kind]
    return lambda cin, cout, dropout, f: block(cin, cout, dropout=dropout, **f)


RESNETS = ("ResnetBlock2D", "ResnetBlock3D")
ATTENTIONS = {"AttnBlock3D": True, "AttnBlock3DFix": False}  # name -> legacy (v1.0) reshape
# spatial downsamplers -> whether they also halve time
_SPATIAL_DOWN_TIME = {"SpatialDownsample2x": 0, "Downsample": 0, "Spatial2xTime2x3DDownsample": 1}
SPATIAL_DOWN = {
    "SpatialDownsample2x": lambda c, f: SpatialDownsample2x(c, **f),
    "Downsample": lambda c, f: Downsample(c, c, **f),
    "Spatial2xTime2x3DDownsample": lambda c, f: Spatial2xTime2x3DDownsample(c, c, **f),
}
TEMPORAL_DOWN = {
    "TimeDownsample2x": lambda c, f: TimeDownsample2x(c, **f),
    "TimeDownsampleRes2x": lambda c, f: TimeDownsampleRes2x(c, **f),
}
SPATIAL_UP = {
    "SpatialUpsample2x": lambda c, f: SpatialUpsample2x(c, **f),
    "Upsample": lambda c, f: Upsample(c, c, **f),
    "Spatial2xTime2x3DUpsample": lambda c, f: Spatial2xTime2x3DUpsample(c, c, joint=True, **f),
}
TEMPORAL_UP = {
    "TimeUpsample2x": lambda c, f: TimeUpsample2x(c, **f),
    "TimeUpsampleRes2x": lambda c, f: TimeUpsampleRes2x(c, **f),
}
CONVS = ("CausalConv3d", "Conv2d")


def _conv(kind: str, cin: int, cout: int, factory: dict) -> nn.Module:
    """``CausalConv3d`` or the per-frame ``Conv2d`` (kernel 3, padding 1), as the official conv_in/out."""
    check_choice(kind, CONVS, "CausalVAEModel conv_in / conv_out")
    if kind == "Conv2d":
        return factory["operations"].Conv2d(cin, cout, 3, padding=1, device=factory["device"],
                                            dtype=factory["dtype"])
    return CausalConv3d(cin, cout, 3, padding=1, **factory)


def _optional(table: dict, kind: str, channels: int, factory: dict, what: str) -> nn.Module | None:
    if not kind:
        return None
    check_choice(kind, tuple(table), f"CausalVAEModel {what}")
    return table[kind](channels, factory)


def _attention(kind: str, channels: int, factory: dict) -> AttnBlock3DFix:
    check_choice(kind, tuple(ATTENTIONS), "CausalVAEModel attention")
    return AttnBlock3DFix(channels, legacy_reshape=ATTENTIONS[kind], **factory)


def _mid(kind: str, attention: str, channels: int, dropout: float, factory: dict) -> nn.Module:
    """``mid.block_1``, ``mid.attn_1``, ``mid.block_2`` (an ``nn.Module`` holder, as the official)."""
    check_choice(kind, RESNETS, "CausalVAEModel mid resnet")
    mid = nn.Module()
    mid.block_1 = _resnet(kind)(channels, channels, dropout, factory)
    mid.attn_1 = _attention(attention, channels, factory)
    mid.block_2 = _resnet(kind)(channels, channels, dropout, factory)
    return mid


def _run_mid(mid: nn.Module, h: Tensor) -> Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


# ==================================================================================================
# Encoder and decoder
# ==================================================================================================


class Encoder(nn.Module):
    """Video (B, 3, T, H, W) -> moments (B, 2 z, T/4, H/8, W/8) (before ``quant_conv``).

    Quirk kept from the official forward: the mid block consumes the output of the last resnet block of
    the last level, not of that level's downsampler (no release has one there).
    """

    def __init__(self, cfg: CausalVAEConfig, factory: dict):
        super().__init__()
        mult = (1, *cfg.hidden_size_mult)
        self.conv_in = _conv(cfg.encoder_conv_in, 3, cfg.hidden_size, factory)
        self.down = nn.ModuleList()
        resolution = cfg.resolution
        for i, kind in enumerate(cfg.encoder_resnet_blocks):
            check_choice(kind, RESNETS, "CausalVAEModel encoder resnet")
            level = nn.Module()
            width_in, width = cfg.hidden_size * mult[i], cfg.hidden_size * mult[i + 1]
            level.block = nn.ModuleList(
                _resnet(kind)(width_in if j == 0 else width, width, cfg.dropout, factory)
                for j in range(cfg.num_res_blocks)
            )
            level.attn = nn.ModuleList(
                _attention(cfg.encoder_attention, width, factory)
                for _ in range(cfg.num_res_blocks) if resolution in cfg.attn_resolutions
            )
            down = _optional(SPATIAL_DOWN, cfg.encoder_spatial_downsample[i], width, factory, "spatial downsample")
            if down is not None:
                level.downsample = down
                resolution //= 2
            time_down = _optional(TEMPORAL_DOWN, cfg.encoder_temporal_downsample[i], width, factory,
                                  "temporal downsample")
            if time_down is not None:
                level.time_downsample = time_down
            self.down.append(level)
        width = cfg.hidden_size * cfg.hidden_size_mult[-1]
        self.mid = _mid(cfg.encoder_mid_resnet, cfg.encoder_attention, width, cfg.dropout, factory)
        self.norm_out = make_norm(width, "groupnorm", **factory)
        self.conv_out = _conv(cfg.encoder_conv_out, width, 2 * cfg.z_channels, factory)

    def forward(self, x: Tensor) -> Tensor:
        h = run_layer(self.conv_in, x, None)  # (B, hidden, T, H, W)
        last_block = h
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
                last_block = h
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # H, W (and T for the 2x2x2 kind) halve
            if hasattr(level, "time_downsample"):
                h = level.time_downsample(h)  # T -> ceil(T / 2)
        h = _run_mid(self.mid, last_block)  # (B, C, t, h, w)
        return run_layer(self.conv_out, F.silu(self.norm_out(h)), None)  # (B, 2z, t, h, w)


class Decoder(nn.Module):
    """Latent (B, z, t, h, w) (after ``post_quant_conv``) -> video (B, 3, 4t - 3, 8h, 8w)."""

    def __init__(self, cfg: CausalVAEConfig, factory: dict):
        super().__init__()
        width = cfg.hidden_size * cfg.hidden_size_mult[-1]
        resolution = cfg.resolution // 2 ** (len(cfg.hidden_size_mult) - 1)
        self.conv_in = _conv(cfg.decoder_conv_in, cfg.z_channels, width, factory)
        self.mid = _mid(cfg.decoder_mid_resnet, cfg.decoder_attention, width, cfg.dropout, factory)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.hidden_size_mult))):
            kind = cfg.decoder_resnet_blocks[i]
            check_choice(kind, RESNETS, "CausalVAEModel decoder resnet")
            level, width_out = nn.Module(), cfg.hidden_size * cfg.hidden_size_mult[i]
            level.block = nn.ModuleList(
                _resnet(kind)(width if j == 0 else width_out, width_out, cfg.dropout, factory)
                for j in range(cfg.num_res_blocks + 1)
            )
            level.attn = nn.ModuleList(
                _attention(cfg.decoder_attention, width_out, factory)
                for _ in range(cfg.num_res_blocks + 1) if resolution in cfg.attn_resolutions
            )
            width = width_out
            up = _optional(SPATIAL_UP, cfg.decoder_spatial_upsample[i], width, factory, "spatial upsample")
            if up is not None:
                level.upsample = up
                resolution *= 2
            time_up = _optional(TEMPORAL_UP, cfg.decoder_temporal_upsample[i], width, factory, "temporal upsample")
            if time_up is not None:
                level.time_upsample = time_up
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # index = level, as the encoder's
        self.norm_out = make_norm(width, "groupnorm", **factory)
        self.conv_out = _conv(cfg.decoder_conv_out, width, 3, factory)

    def forward(self, z: Tensor) -> Tensor:
        h = _run_mid(self.mid, run_layer(self.conv_in, z, None))  # (B, C, t, h, w)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # H, W (and T for the 2x2x2 kind) double
            if hasattr(level, "time_upsample"):
                h = level.time_upsample(h)  # T -> 2T - 1
        return run_layer(self.conv_out, F.silu(self.norm_out(h)), None)  # (B, 3, T, H, W)


# ==================================================================================================
# Model
# ==================================================================================================


class CausalVAEModel(OfficialConstructors, nn.Module):
    """The official ``CausalVAEModel``: ``encode`` -> :class:`DiagonalGaussian`, ``decode`` -> video in [-1, 1].

    Inputs are videos (B, 3, T, H, W) in [-1, 1] (any T >= 1: T -> ceil(T / 4) latent frames; H, W
    multiples of 8); latents (B, embed_dim, t, h, w) decode to (B, 3, 4t - 3, 8h, 8w). No scaling here:
    :class:`~.osp.OpenSoraPlanVAE` applies the diffusion-side 0.18215.
    """

    CONFIG: ClassVar[type] = CausalVAEConfig
    PRESETS: ClassVar[dict[str, CausalVAEConfig]] = CAUSAL_VAE_PRESETS
    OFFICIAL_NAME: ClassVar[str] = "CausalVAEModel"
    IGNORED_KWARGS: ClassVar[dict[str, str]] = {**TRAINING_ONLY_KWARGS, **_NON_ARGUMENTS}

    def __init__(self, config: CausalVAEConfig = _V1_2_D4, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.encoder = Encoder(config, factory)
        self.decoder = Decoder(config, factory)
        if config.use_quant_layer:
            self.quant_conv = CausalConv3d(2 * config.z_channels, 2 * config.embed_dim, 1, **factory)
            self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, 1, **factory)
        self.geometry = config.geometry
        self.ignored_training_keys: list[str] = []
        self._register_load_state_dict_pre_hook(_drop_training_keys, with_module=True)

    @classmethod
    def config_from_kwargs(cls, config: Mapping[str, Any]) -> CausalVAEConfig:
        """``lr``/``loss_type``/``loss_params`` (training only) and the v1.1 file's ``in_channels``/``out_channels``
        (3) are accepted and ignored."""
        for key in _NON_ARGUMENTS:
            if config.get(key, 3) != 3:
                raise ValueError(f"CausalVAEModel: {key}={config[key]} is not supported (RGB only)")
        return super().config_from_kwargs(config)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    # -- untiled (official default) -----------------------------------------------------------------

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) in [-1, 1] -> posterior over (B, embed_dim, ceil(T/4), H/8, W/8)."""
        check_video(x, self.geometry)
        return DiagonalGaussian.from_moments(self.encode_moments(x))

    def encode_moments(self, x: Tensor) -> Tensor:
        moments = self.encoder(x)  # (B, 2z, t, h, w)
        return self.quant_conv(moments) if self.config.use_quant_layer else moments

    def decode(self, z: Tensor) -> Tensor:
        """Latent (B, embed_dim, t, h, w) -> video (B, 3, 4t - 3, 8h, 8w), not clamped."""
        check_latent(z, self.latent_channels)
        if self.config.use_quant_layer:
            z = self.post_quant_conv(z)  # (B, z, t, h, w)
        return self.decoder(z)

    def forward(self, x: Tensor, sample_posterior: bool = True, noise=None) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(noise) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # -- official tiling -----------------------------------------------------------------------------

    def tiled_decode(self, z: Tensor, tiling: CausalVAETiling) -> Tensor:
        """The official ``decode`` with ``enable_tiling()``: untiled when the latent fits in one tile."""
        if not tiling.decode_needs_tiles(z.shape):
            return self.decode(z)
        chunks = tiling.latent_chunks(z.shape[2])
        parts = [_tiles_2d(self.decode, z[:, :, a:b], tiling.decode_plan()) for a, b in chunks]
        return torch.cat([p if i == 0 else p[:, :, 1:] for i, p in enumerate(parts)], dim=2)

    def tiled_encode(self, x: Tensor, tiling: CausalVAETiling) -> DiagonalGaussian:
        """The official ``encode`` with ``enable_tiling()`` (moments blended in latent space)."""
        check_video(x, self.geometry)
        if not tiling.encode_needs_tiles(x.shape):
            return self.encode(x)
        chunks = tiling.pixel_chunks(x.shape[2])
        parts = [_tiles_2d(self.encode_moments, x[:, :, a:b], tiling.encode_plan()) for a, b in chunks]
        moments = torch.cat([p if i == 0 else p[:, :, 1:] for i, p in enumerate(parts)], dim=2)
        return DiagonalGaussian.from_moments(moments)


def loadable_state_dict(module: CausalVAEModel, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A file's state dict as ``module`` loads it strictly: the training loss entries ``loss.*`` dropped
    (recorded in ``module.ignored_training_keys``)."""
    state = dict(state_dict)
    _drop_training_keys(module, state, "")
    return state


def _drop_training_keys(module: CausalVAEModel, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: remove (and record) the training loss entries ``loss.*``. A state dict that
    :func:`loadable_state_dict` already cleaned keeps the record of that first pass."""
    dropped = [k for k in state_dict if k.startswith(prefix + TRAINING_KEY_PREFIX)]
    for key in dropped:
        del state_dict[key]
    if dropped:
        module.ignored_training_keys = [k[len(prefix):] for k in dropped]
        log.info("CausalVAEModel: ignored %d training-only loss.* entries (LPIPS / discriminator weights)",
                 len(dropped))


# ==================================================================================================
# Official tiling (modeling_causalvae.py tiled_encode / tiled_decode / tiled_*2d, blend_v / blend_h)
# ==================================================================================================


@dataclass(frozen=True)
class TilePlan:
    """Spatial tiling in one direction of the official code: input tiles of ``tile_in`` every ``stride``,
    output tiles blended over ``blend`` rows/columns with their upper/left neighbours and cropped to
    ``tile_out - blend`` (``row_limit``)."""

    tile_in: int
    stride: int
    blend: int
    tile_out: int

    @property
    def keep(self) -> int:
        return self.tile_out - self.blend

    def starts(self, size: int) -> list[int]:
        if self.stride < 1:
            raise ValueError(f"tile overlap leaves no stride ({self}); lower tile_overlap_factor")
        return list(range(0, size, self.stride))


def _time_chunks(frames: int, size: int) -> list[tuple[int, int]]:
    """Chunks starting every ``size - 1`` frames, each one frame longer (neighbours share a frame);
    a last short chunk when needed (the official ``t_chunk_start_end``)."""
    starts = list(range(0, frames, size - 1))
    if len(starts) == 1:
        return [(0, frames)]
    chunks = [(starts[i], min(starts[i + 1] + 1, frames)) for i in range(len(starts) - 1)]
    if chunks[-1][1] < frames:
        chunks.append((starts[-1], frames))
    return chunks


@dataclass(frozen=True)
class CausalVAETiling:
    """Tile attributes of the official class (plain instance attributes there).

    ``temporal``: whether this version chunks time (v1.1 and v1.2; v1.0 has spatial tiles only).
    Tiling is used only when the input exceeds a tile (H or W above the spatial tile, T above the
    temporal one). ``for_version`` gives each release's defaults.
    """

    tile_sample_min_size: int = 256
    tile_latent_min_size: int = 32
    tile_overlap_factor: float = 0.125
    tile_sample_min_size_t: int = 33
    tile_latent_min_size_t: int = 16
    temporal: bool = True

    def __post_init__(self):
        if self.tile_latent_min_size < 1 or not 0 <= self.tile_overlap_factor < 1:
            raise ValueError(f"CausalVAETiling: bad tile size / overlap in {self}")
        if self.temporal and min(self.tile_sample_min_size_t, self.tile_latent_min_size_t) < 2:
            raise ValueError(f"CausalVAETiling: temporal tiles need at least 2 frames, got {self}")
        # the official code crops each tile to what its stride covers only when these agree (all releases do)
        ratio = self.tile_sample_min_size // self.tile_latent_min_size
        decode, encode = self.decode_plan(), self.encode_plan()
        if decode.keep != decode.stride * ratio or encode.keep * ratio != encode.stride or decode.stride < 1:
            raise ValueError(
                f"CausalVAETiling: tile_sample_min_size={self.tile_sample_min_size}, tile_latent_min_size="
                f"{self.tile_latent_min_size} and tile_overlap_factor={self.tile_overlap_factor} give tiles whose "
                "kept part differs from their stride (the output would have the wrong size); use a sample tile "
                "8x the latent tile and an overlap that divides both, e.g. 256 / 32 / 0.125 or 0.25"
            )

    @classmethod
    def for_version(cls, version: str, **overrides) -> CausalVAETiling:
        """Defaults of the class at v1.0 / v1.1 / v1.2 (FACTS.md section 7)."""
        if version not in TILING_DEFAULTS:
            raise ValueError(f"unknown CausalVAE version {version!r}; choose one of {', '.join(TILING_DEFAULTS)}")
        return dataclasses.replace(TILING_DEFAULTS[version], **overrides)

    def decode_needs_tiles(self, shape: torch.Size) -> bool:
        t, h, w = shape[-3:]
        return h > self.tile_latent_min_size or w > self.tile_latent_min_size or (
            self.temporal and t > self.tile_latent_min_size_t)

    def encode_needs_tiles(self, shape: torch.Size) -> bool:
        t, h, w = shape[-3:]
        return h > self.tile_sample_min_size or w > self.tile_sample_min_size or (
            self.temporal and t > self.tile_sample_min_size_t)

    def latent_chunks(self, frames: int) -> list[tuple[int, int]]:
        return _time_chunks(frames, self.tile_latent_min_size_t) if self.temporal else [(0, frames)]

    def pixel_chunks(self, frames: int) -> list[tuple[int, int]]:
        return _time_chunks(frames, self.tile_sample_min_size_t) if self.temporal else [(0, frames)]

    def decode_plan(self) -> TilePlan:
        return TilePlan(tile_in=self.tile_latent_min_size, stride=int(self.tile_latent_min_size *
                        (1 - self.tile_overlap_factor)), blend=int(self.tile_sample_min_size * self.tile_overlap_factor),
                        tile_out=self.tile_sample_min_size)

    def encode_plan(self) -> TilePlan:
        return TilePlan(tile_in=self.tile_sample_min_size, stride=int(self.tile_sample_min_size *
                        (1 - self.tile_overlap_factor)), blend=int(self.tile_latent_min_size * self.tile_overlap_factor),
                        tile_out=self.tile_latent_min_size)


TILING_DEFAULTS: dict[str, CausalVAETiling] = {
    "v1.0": CausalVAETiling(256, 32, 0.25, 65, 17, temporal=False),
    "v1.1": CausalVAETiling(256, 32, 0.25, 65, 17),
    "v1.2": CausalVAETiling(256, 32, 0.125, 33, 16),
}


def _tiles_2d(fn, x: Tensor, plan: TilePlan) -> Tensor:
    """Apply ``fn`` to overlapping spatial tiles of ``x`` and blend them as the official ``tiled_*2d``.

    Tiles are processed in raster order; each decoded tile is blended *in place* with the (already
    blended) tile above and then the (already blended) tile to its left, and its top-left
    ``keep`` x ``keep`` corner is written to the output. Only the previous row of tiles is kept.
    """
    rows_above: list[Tensor] = []
    out_rows = []
    for i in plan.starts(x.shape[3]):
        row: list[Tensor] = []
        for j, start in enumerate(plan.starts(x.shape[4])):
            tile = fn(x[:, :, :, i:i + plan.tile_in, start:start + plan.tile_in])  # (B, C, T, th, tw)
            if rows_above:
                _blend_rows(rows_above[j], tile, plan.blend)
            if row:
                _blend_columns(row[-1], tile, plan.blend)
            row.append(tile)
        out_rows.append(torch.cat([t[:, :, :, :plan.keep, :plan.keep] for t in row], dim=4))
        rows_above = row
    return torch.cat(out_rows, dim=3)


def _blend_rows(above: Tensor, tile: Tensor, extent: int) -> None:
    """blend_v: row y < extent of ``tile`` becomes above[-extent + y] * (1 - y/extent) + tile[y] * y/extent."""
    extent = min(above.shape[3], tile.shape[3], extent)
    for y in range(extent):
        tile[:, :, :, y, :] = above[:, :, :, -extent + y, :] * (1 - y / extent) + tile[:, :, :, y, :] * (y / extent)


def _blend_columns(left: Tensor, tile: Tensor, extent: int) -> None:
    """blend_h: the same across columns with the tile to the left."""
    extent = min(left.shape[4], tile.shape[4], extent)
    for x in range(extent):
        tile[:, :, :, :, x] = left[:, :, :, :, -extent + x] * (1 - x / extent) + tile[:, :, :, :, x] * (x / extent)


def causal_vae_parameter_counts(model: CausalVAEModel) -> dict[str, int]:
    """Parameter elements of the encoder, the decoder and the two quant convs (for reports)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    quant = sum(count(getattr(model, n)) for n in ("quant_conv", "post_quant_conv") if hasattr(model, n))
    return {"encoder": count(model.encoder), "decoder": count(model.decoder), "quant": quant}


__all__ = [
    "CAUSAL_VAE_PRESETS",
    "CausalVAEConfig",
    "CausalVAEModel",
    "CausalVAETiling",
    "TILING_DEFAULTS",
    "causal_vae_parameter_counts",
    "loadable_state_dict",
]
