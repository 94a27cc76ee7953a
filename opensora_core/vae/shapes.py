"""VAE architectures read from a state dict's keys and shapes, and the modules built from them.

The architecture of every VAE here follows from its tensor shapes; only the GroupNorm group count
cannot, and is passed in (the released 32 unless the file's saved config says otherwise). Modules are
built on the meta device, so the weights are never held twice while a file is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor

from .autoencoder_kl import AutoencoderKLConfig
from .hunyuan import PRESETS as HUNYUAN_PRESETS
from .hunyuan import HunyuanVAE, HunyuanVAEConfig
from .keys import to_diffusers_layout
from .pipeline import V1_2_MICRO_FRAME_SIZE, VideoAutoencoderKL, VideoAutoencoderPipeline
from .temporal import TemporalVAEConfig

StateDict = Mapping[str, Tensor]

SPATIAL_PREFIX = "spatial_vae.module."  # the SD-VAE inside the VAE v1.2 pipeline
TEMPORAL_PREFIX = "temporal_vae."


def infer_autoencoder_config(state_dict: StateDict, norm_num_groups: int = 32) -> AutoencoderKLConfig:
    """AutoencoderKL architecture of a diffusers-layout state dict (keys relative to the VAE)."""
    levels = _count(state_dict, "encoder.down_blocks.")
    if not levels:
        raise ValueError("not an SD-VAE state dict: no encoder.down_blocks.* keys")
    widths = tuple(_shape(state_dict, f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels))
    return AutoencoderKLConfig(
        in_channels=_shape(state_dict, "encoder.conv_in.weight")[1],
        out_channels=_shape(state_dict, "decoder.conv_out.weight")[0],
        block_out_channels=widths,
        layers_per_block=_count(state_dict, "encoder.down_blocks.0.resnets."),
        latent_channels=_shape(state_dict, "decoder.conv_in.weight")[1],
        norm_num_groups=norm_num_groups,
        use_quant_conv="quant_conv.weight" in state_dict,
        use_post_quant_conv="post_quant_conv.weight" in state_dict,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state_dict,
    )


def infer_temporal_config(state_dict: StateDict, prefix: str = "", num_groups: int = 32) -> TemporalVAEConfig:
    """``VAE_Temporal`` kwargs of a temporal-VAE state dict (keys under ``prefix``)."""
    enc = prefix + "encoder."
    filters, in_out = _shape(state_dict, enc + "conv_in.conv.weight")[:2]
    levels = _count(state_dict, enc + "block_res_blocks.")
    width = [_shape(state_dict, f"{enc}block_res_blocks.{i}.0.conv1.conv.weight")[0] for i in range(levels)]
    return TemporalVAEConfig(
        in_out_channels=in_out,
        latent_embed_dim=_shape(state_dict, enc + "conv2.conv.weight")[0] // 2,
        embed_dim=_shape(state_dict, prefix + "quant_conv.conv.weight")[0] // 2,
        filters=filters,
        num_res_blocks=_count(state_dict, enc + "block_res_blocks.0."),
        channel_multipliers=tuple(w // filters for w in width),
        temporal_downsample=tuple(f"{enc}conv_blocks.{i}.conv.weight" in state_dict for i in range(levels - 1)),
        num_groups=num_groups,
    )


def pipeline_in_diffusers_layout(state_dict: StateDict) -> dict[str, Tensor]:
    """A VAE v1.2 state dict with its spatial SD-VAE in the diffusers layout (legacy names renamed)."""
    spatial = {k[len(SPATIAL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(SPATIAL_PREFIX)}
    rest = {k: v for k, v in state_dict.items() if not k.startswith(SPATIAL_PREFIX)}
    return {**rest, **{SPATIAL_PREFIX + k: v for k, v in to_diffusers_layout(spatial).items()}}


def build_pipeline(state_dict: StateDict, micro_batch_size: int | None, groups: int) -> VideoAutoencoderPipeline:
    """The VAE v1.2 pipeline a (diffusers-layout) state dict fits, on the meta device."""
    spatial = {k[len(SPATIAL_PREFIX):]: v for k, v in state_dict.items() if k.startswith(SPATIAL_PREFIX)}
    with torch.device("meta"):
        return VideoAutoencoderPipeline(
            infer_autoencoder_config(spatial, groups),
            infer_temporal_config(state_dict, TEMPORAL_PREFIX, groups),
            micro_batch_size=micro_batch_size,
            micro_frame_size=V1_2_MICRO_FRAME_SIZE,
            scale=state_dict["scale"].flatten().tolist() if "scale" in state_dict else 1.0,
            shift=state_dict["shift"].flatten().tolist() if "shift" in state_dict else 0.0,
        )


def build_autoencoder_kl(state_dict: StateDict, micro_batch_size: int | None, groups: int) -> VideoAutoencoderKL:
    """The per-frame SD-VAE wrapper a diffusers-layout SD-VAE state dict fits, on the meta device."""
    with torch.device("meta"):
        return VideoAutoencoderKL(infer_autoencoder_config(state_dict, groups), micro_batch_size)


def pipeline_for(state_dict: StateDict, micro_batch_size: int | None, groups: int, config: Mapping | None = None):
    """(VAE v1.2 pipeline on meta, module to load, state dict in its layout) for a VAE v1.2 file (the shapes
    tell the architecture; the saved ``config`` adds nothing but ``groups``, which the loader reads)."""
    state_dict = pipeline_in_diffusers_layout(state_dict)
    model = build_pipeline(state_dict, micro_batch_size, groups)
    return model, model, state_dict


def autoencoder_kl_for(state_dict: StateDict, micro_batch_size: int | None, groups: int,
                       config: Mapping | None = None):
    """(per-frame SD-VAE wrapper on meta, its inner AutoencoderKL to load, diffusers-layout state dict)."""
    state_dict = to_diffusers_layout(state_dict)
    model = build_autoencoder_kl(state_dict, micro_batch_size, groups)
    return model, model.module, state_dict


def infer_hunyuan_config(state_dict: StateDict, norm_num_groups: int = 32) -> HunyuanVAEConfig:
    """``AutoencoderKLCausal3D`` config of a Hunyuan VAE state dict: widths, levels, blocks, channels and the
    mid-block attention from the shapes; the rest (compression ratios, latent scale, tiling) as released."""
    levels = _count(state_dict, "encoder.down_blocks.")
    if not levels:
        raise ValueError("not a Hunyuan VAE state dict: no encoder.down_blocks.* keys")
    widths = tuple(_shape(state_dict, f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight")[0] for i in range(levels))
    return dataclasses.replace(
        HUNYUAN_PRESETS["hunyuan-vae"],
        in_channels=_shape(state_dict, "encoder.conv_in.conv.weight")[1],
        out_channels=_shape(state_dict, "decoder.conv_out.conv.weight")[0],
        latent_channels=_shape(state_dict, "post_quant_conv.weight")[0],
        layers_per_block=_count(state_dict, "encoder.down_blocks.0.resnets."),
        block_out_channels=widths,
        norm_num_groups=norm_num_groups,
        mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in state_dict),
    )


def hunyuan_for(state_dict: StateDict, micro_batch_size: int | None, groups: int, config: Mapping | None = None):
    """(Hunyuan VAE on meta, the same module to load, the state dict as it is) for a ``hunyuan_vae`` file
    (the whole clip is one chunk: ``micro_batch_size`` does not apply; the shapes tell the config, so a saved
    ``config.json`` is not read)."""
    with torch.device("meta"):
        model = HunyuanVAE(infer_hunyuan_config(state_dict, groups))
    return model, model, state_dict


def _shape(state_dict: StateDict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"VAE state dict has no {key!r}: the file is incomplete or not this kind of VAE")
    return tuple(state_dict[key].shape)


def _count(state_dict: StateDict, prefix: str) -> int:
    """Number of numbered children directly under ``prefix`` (max index + 1)."""
    found = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
    indices = [int(i) for i in found if i.isdigit()]
    return max(indices) + 1 if indices else 0


__all__ = [
    "autoencoder_kl_for",
    "build_autoencoder_kl",
    "build_pipeline",
    "hunyuan_for",
    "infer_autoencoder_config",
    "infer_hunyuan_config",
    "infer_temporal_config",
    "pipeline_for",
    "pipeline_in_diffusers_layout",
]
