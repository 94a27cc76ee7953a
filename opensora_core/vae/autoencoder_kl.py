"""SD-VAE: the image autoencoder (``AutoencoderKL``) of Stable Diffusion / SDXL.

Our own implementation with the **diffusers key layout** as its native state dict
(``encoder.down_blocks.0.resnets.0.conv1.weight``, mid attention as
``to_q/to_k/to_v/to_out.0`` linear layers). State dicts in the original LDM /
ComfyUI layout (``encoder.down.0.block.0...``, ``vae-ft-mse-840000-ema-pruned``,
``sdxl_vae.safetensors``) and the legacy diffusers attention names
(``query/key/value/proj_attn``) load as well: a load-state-dict pre-hook renames them
with the one table in :mod:`.keys`.

Architecture (diffusers ``AutoencoderKL`` with DownEncoderBlock2D / UpDecoderBlock2D):
8x spatial compression with 4 levels, GroupNorm (eps 1e-6) + SiLU ResNet blocks, a
single-head self-attention in the mid block, a 2C-channel posterior (mean, logvar).
The module only computes moments and decodes; scaling (0.18215 in Open-Sora) and
posterior sampling belong to the video wrappers in :mod:`.pipeline`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.inplace import activate, add
from ..models.tensors import gemm_rows
from .keys import to_diffusers_layout

log = logging.getLogger("opensora")

NORM_EPS = 1e-6  # every GroupNorm of the SD-VAE


# ---------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """Constructor arguments of diffusers' ``AutoencoderKL`` that change the network.

    ``sample_size`` and ``scaling_factor`` are kept for information only: the
    Open-Sora wrappers hard-code the scale 0.18215 and accept any size.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    sample_size: int = 256
    scaling_factor: float = 0.18215

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> AutoencoderKLConfig:
        """From a diffusers ``config.json`` dict (bookkeeping keys ``_*`` and unused options are ignored)."""
        config = dict(config)
        blocks = len(config.get("block_out_channels", cls.block_out_channels))
        _check_block_types(config.pop("down_block_types", None), "DownEncoderBlock2D", blocks)
        _check_block_types(config.pop("up_block_types", None), "UpDecoderBlock2D", blocks)
        known = {f.name for f in fields(cls)}
        unused = sorted(k for k in config if k not in known and not k.startswith("_") and k not in _IGNORED_KEYS)
        if unused:
            log.warning("AutoencoderKL config: ignoring unknown option(s) %s", ", ".join(unused))
        values = {k: v for k, v in config.items() if k in known and v is not None}
        if "block_out_channels" in values:
            values["block_out_channels"] = tuple(values["block_out_channels"])
        result = cls(**values)
        result.check()
        return result

    def check(self) -> None:
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"AutoencoderKL act_fn {self.act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"AutoencoderKL block_out_channels {list(self.block_out_channels)} are not divisible by "
                f"norm_num_groups={self.norm_num_groups}; fix one of the two"
            )


# options diffusers stores that do not change the network
_IGNORED_KEYS = {"shift_factor", "latents_mean", "latents_std", "force_upcast"}


def _check_block_types(types: list[str] | None, expected: str, blocks: int) -> None:
    if types is None:
        return
    if len(types) != blocks or any(t != expected for t in types):
        raise ValueError(f"AutoencoderKL: only {blocks} x {expected} blocks are supported, got {types}")


# SD 1.x (sd-vae-ft-ema / -mse) and SDXL VAEs share one architecture; they differ in weights and scaling_factor.
AUTOENCODER_KL_PRESETS: dict[str, AutoencoderKLConfig] = {
    "sd-vae": AutoencoderKLConfig(sample_size=256, scaling_factor=0.18215),
    "sdxl-vae": AutoencoderKLConfig(sample_size=1024, scaling_factor=0.13025),
}

# hub ids named by the official configs -> preset (never downloaded: only the architecture is needed)
KNOWN_AUTOENCODERS: dict[str, str] = {
    "stabilityai/sd-vae-ft-ema": "sd-vae",
    "stabilityai/sd-vae-ft-mse": "sd-vae",
    "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers": "sdxl-vae",
    "stabilityai/sdxl-vae": "sdxl-vae",
}


def autoencoder_config_for(name: str | None) -> AutoencoderKLConfig:
    """Architecture of a pretrained AutoencoderKL named by an official config (hub id or preset name)."""
    preset = KNOWN_AUTOENCODERS.get(name or "", name)
    if preset not in AUTOENCODER_KL_PRESETS:
        raise ValueError(
            f"unknown AutoencoderKL {name!r}: its architecture is not known offline. Known names: "
            f"{', '.join([*KNOWN_AUTOENCODERS, *AUTOENCODER_KL_PRESETS])}; otherwise pass the diffusers "
            f"config dict as autoencoder_config"
        )
    return AUTOENCODER_KL_PRESETS[preset]


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "mish": nn.Mish,
}

# default layer factory; ComfyUI's `operations` (comfy.ops) has the same attribute names
TORCH_OPS = SimpleNamespace(Conv2d=nn.Conv2d, Conv3d=nn.Conv3d, GroupNorm=nn.GroupNorm, Linear=nn.Linear)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1 conv) shortcut.

    follows diffusers ResnetBlock2D as used by AutoencoderKL (no time embedding, output scale 1).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, act: type[nn.Module], ops, **factory):
        super().__init__()
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=NORM_EPS, **factory)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1, **factory)
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=NORM_EPS, **factory)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1, **factory)
        self.nonlinearity = act()
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = ops.Conv2d(in_channels, out_channels, 1, **factory)

    def forward(self, x: Tensor) -> Tensor:
        # one statement per op, so each temporary is freed as soon as the next exists; without autograd the
        # activations overwrite the norms' outputs and the sum the last conv's: 3 frame-sized tensors at most
        h = activate(self.nonlinearity, self.norm1(x))  # (N, C_in, H, W)
        h = self.conv1(h)  # (N, C_out, H, W)
        h = activate(self.nonlinearity, self.norm2(h))
        h = self.conv2(h)
        return add(h, x if self.conv_shortcut is None else self.conv_shortcut(x))  # h + x


class Downsample2D(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv: H -> floor(H / 2)."""

    def __init__(self, channels: int, ops, **factory):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, stride=2, padding=0, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (N, C, H/2, W/2)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int, ops, **factory):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (N, C, 2H, 2W)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, with residual.

    follows diffusers Attention(_from_deprecated_attn_block=True) in UNetMidBlock2D: GroupNorm, q/k/v
    linear layers over channels, softmax(q k^T / sqrt(C)) v, output linear, residual add.
    """

    def __init__(self, channels: int, groups: int, ops, **factory):
        super().__init__()
        self.group_norm = ops.GroupNorm(groups, channels, eps=NORM_EPS, **factory)
        self.to_q = ops.Linear(channels, channels, **factory)
        self.to_k = ops.Linear(channels, channels, **factory)
        self.to_v = ops.Linear(channels, channels, **factory)
        self.to_out = nn.ModuleList([ops.Linear(channels, channels, **factory)])

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = gemm_rows(self.group_norm(x).flatten(2).transpose(1, 2))  # (N, HW, C), one copy for 3 GEMMs
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (N, HW, C)
        out = self.to_out[0](gemm_rows(out)).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return x + out


class MidBlock2D(nn.Module):
    """ResNet, attention, ResNet at the lowest resolution (follows diffusers UNetMidBlock2D)."""

    def __init__(self, channels: int, groups: int, attention: bool, act, ops, **factory):
        super().__init__()
        # registration order = diffusers' state-dict order (attentions before resnets)
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups, ops, **factory)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups, act, ops, **factory) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, downsample: bool, groups, act, ops, **factory):
        super().__init__()
        widths = [in_channels] + [out_channels] * layers
        self.resnets = nn.ModuleList(
            ResnetBlock2D(widths[i], out_channels, groups, act, ops, **factory) for i in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, ops, **factory)] if downsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for block in [*self.resnets, *self.downsamplers]:
            x = block(x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, upsample: bool, groups, act, ops, **factory):
        super().__init__()
        widths = [in_channels] + [out_channels] * layers
        self.resnets = nn.ModuleList(
            ResnetBlock2D(widths[i], out_channels, groups, act, ops, **factory) for i in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, ops, **factory)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks():
            x = block(x)
        return x

    def blocks(self) -> list[nn.Module]:
        """The ResNet blocks, then the upsampler if any, in order."""
        return [*self.resnets, *self.upsamplers]


# ---------------------------------------------------------------------------
# Encoder, decoder, autoencoder
# ---------------------------------------------------------------------------


class Encoder(nn.Module):
    """Image [N, 3, H, W] -> moments [N, 2 * latent, H/8, W/8] (before quant_conv)."""

    def __init__(self, cfg: AutoencoderKLConfig, ops, **factory):
        super().__init__()
        chans, groups, act = cfg.block_out_channels, cfg.norm_num_groups, ACTIVATIONS[cfg.act_fn]
        self.conv_in = ops.Conv2d(cfg.in_channels, chans[0], 3, padding=1, **factory)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, i < len(chans) - 1, groups, act, ops, **factory
            )
            for i in range(len(chans))
        )
        self.mid_block = MidBlock2D(chans[-1], groups, cfg.mid_block_add_attention, act, ops, **factory)
        self.conv_norm_out = ops.GroupNorm(groups, chans[-1], eps=NORM_EPS, **factory)
        self.conv_act = act()
        self.conv_out = ops.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.head(x))

    def head(self, x: Tensor) -> Tensor:
        """The high-resolution levels: image -> features at 2x the latent resolution (tileable)."""
        x = self.conv_in(x)  # (N, C0, H, W)
        for block in self.down_blocks[:-2]:
            x = block(x)
        return x  # (N, C, H/4, W/4) for 4 levels

    def tail(self, x: Tensor) -> Tensor:
        """The low-resolution levels, mid-block attention over the whole frame, moments."""
        for block in self.down_blocks[-2:]:
            x = block(x)
        x = self.mid_block(x)  # (N, C_last, H/8, W/8)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # (N, 2L, H/8, W/8)


def backend_layout(x: Tensor) -> Tensor:
    """``x`` [N, C, H, W] in the memory layout the decoder's convolutions run in without copying their input.

    On the CPU that is channels-last: oneDNN convolves NHWC tensors directly but reorders every NCHW input
    into its blocked layout first, a copy of each conv's input (the official decode runs channels-last by
    accident: diffusers' mid-block attention returns an NHWC view that its residual sum passes on). Every
    later op (GroupNorm, SiLU, nearest upsampling, the convs, the attention's tokens) keeps the layout.
    Other devices keep the layout they are given.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


class Decoder(nn.Module):
    """Latent [N, latent, h, w] (after post_quant_conv) -> image [N, 3, 8h, 8w]."""

    def __init__(self, cfg: AutoencoderKLConfig, ops, **factory):
        super().__init__()
        chans, groups, act = cfg.block_out_channels[::-1], cfg.norm_num_groups, ACTIVATIONS[cfg.act_fn]
        self.conv_in = ops.Conv2d(cfg.latent_channels, chans[0], 3, padding=1, **factory)
        self.up_blocks = nn.ModuleList(  # registered before mid_block, as in diffusers' state-dict order
            UpDecoderBlock2D(
                chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, i < len(chans) - 1,
                groups, act, ops, **factory,
            )
            for i in range(len(chans))
        )
        self.mid_block = MidBlock2D(chans[0], groups, cfg.mid_block_add_attention, act, ops, **factory)
        self.conv_norm_out = ops.GroupNorm(groups, chans[-1], eps=NORM_EPS, **factory)
        self.conv_act = act()
        self.conv_out = ops.Conv2d(chans[-1], cfg.out_channels, 3, padding=1, **factory)

    def forward(self, z: Tensor) -> Tensor:
        # one flat loop over the blocks of every level: a nested loop would keep each level's input alive
        # (its caller's reference) until the level ends, which at the last level is the largest tensor
        x = self.mid_block(self.conv_in(backend_layout(z)))  # (N, C_last, h, w)
        for block in self._level_blocks(0):
            x = block(x)
        return self._out(x)

    def trunk(self, z: Tensor) -> Tensor:
        """The low-resolution levels, mid-block attention over the whole frame: latent -> 2x latent resolution."""
        x = self.mid_block(self.conv_in(backend_layout(z)))  # (N, C_last, h, w)
        return self.up_blocks[0](x)  # (N, C_last, 2h, 2w)

    def tail(self, x: Tensor) -> Tensor:
        """The high-resolution levels (tileable): features at 2x the latent resolution -> image."""
        x = backend_layout(x)  # a tile: a strided view of the trunk's output
        for block in self._level_blocks(1):
            x = block(x)
        return self._out(x)

    def _level_blocks(self, first: int) -> list[nn.Module]:
        return [block for level in self.up_blocks[first:] for block in level.blocks()]

    def _out(self, x: Tensor) -> Tensor:
        return self.conv_out(activate(self.conv_act, self.conv_norm_out(x)))  # (N, 3, 8h, 8w)


class AutoencoderKL(nn.Module):
    """SD-VAE with diffusers parameter names. ``encode_moments`` and ``decode`` work on image batches.

    For tiling, both directions split where the features are at twice the latent resolution
    (``split_factor``): the high-resolution part (``encode_head`` / ``decode_tail``) can run on tiles,
    the small low-resolution part with the global mid-block attention runs on the whole frame.
    """

    spatial_factor = 8
    split_factor = 2

    def __init__(
        self,
        config: AutoencoderKLConfig = AUTOENCODER_KL_PRESETS["sd-vae"],
        *,
        operations=TORCH_OPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        config.check()
        if 2 ** (len(config.block_out_channels) - 1) != self.spatial_factor:
            raise ValueError(
                "AutoencoderKL needs 4 levels (8x downsampling), got block_out_channels "
                f"{list(config.block_out_channels)}"
            )
        self.config = config
        factory = {"device": device, "dtype": dtype}
        latent = config.latent_channels
        self.encoder = Encoder(config, operations, **factory)
        self.decoder = Decoder(config, operations, **factory)
        self.quant_conv = operations.Conv2d(2 * latent, 2 * latent, 1, **factory) if config.use_quant_conv else None
        self.post_quant_conv = operations.Conv2d(latent, latent, 1, **factory) if config.use_post_quant_conv else None
        self.register_load_state_dict_pre_hook(_accept_other_layouts)

    @classmethod
    def from_official_config(cls, config: dict[str, Any]) -> AutoencoderKL:
        """From diffusers ``AutoencoderKL`` kwargs (a ``config.json`` dict)."""
        return cls(AutoencoderKLConfig.from_diffusers(config))

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> AutoencoderKL:
        return cls(autoencoder_config_for(name), **kwargs)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode_moments(self, x: Tensor) -> Tensor:
        """Images [N, C_in, H, W] -> posterior moments [N, 2 * latent, H/8, W/8] (mean, logvar)."""
        return self.encode_tail(self.encode_head(x))

    def encode_head(self, x: Tensor) -> Tensor:
        return self.encoder.head(x)  # (N, C, H/4, W/4)

    def encode_tail(self, h: Tensor) -> Tensor:
        moments = self.encoder.tail(h)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [N, latent, h, w] -> images [N, C_out, 8h, 8w] (not clamped)."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)  # trunk and tail in one pass: no caller holds the trunk's output

    def decode_trunk(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder.trunk(z)  # (N, C, 2h, 2w)

    def decode_tail(self, h: Tensor) -> Tensor:
        return self.decoder.tail(h)


def _accept_other_layouts(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: rename LDM / legacy-diffusers keys under ``prefix`` to our layout."""
    ours = [k for k in state_dict if k.startswith(prefix)]
    converted = to_diffusers_layout({k[len(prefix):]: state_dict.pop(k) for k in ours})
    state_dict.update({prefix + name: tensor for name, tensor in converted.items()})
