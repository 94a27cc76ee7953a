"""Loading a video VAE from a file or state dict: detect the family and layout, build, load strictly.

``load_vae`` accepts the Open-Sora VAE v1.2 (``hpcai-tech/OpenSora-VAE-v1.2``
``model.safetensors``) and raw SD-VAE files in the diffusers (incl. legacy attention
names) or LDM / ComfyUI layout, with prefixes such as ``first_stage_model.``,
``vae.`` or ``module.``. An SD-VAE becomes the per-frame v1.0/v1.1 wrapper
(:class:`VideoAutoencoderKL`). The architecture is read from the tensor shapes; only
the GroupNorm group count cannot be, and defaults to the released 32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from .autoencoder_kl import AutoencoderKLConfig
from .keys import detect_vae_layout, find_vae, to_diffusers_layout
from .pipeline import (
    OFFICIAL_MICRO_BATCH_SIZE,
    V1_2_MICRO_FRAME_SIZE,
    VideoAutoencoderKL,
    VideoAutoencoderPipeline,
    VideoVAE,
)
from .temporal import TemporalVAEConfig

StateDict = Mapping[str, Tensor]

_FAMILY_NAMES = {
    "vae_v1_2": "the Open-Sora VAE v1.2 (video VAE)",
    "sd_diffusers": "an SD-VAE (image VAE of Open-Sora v1.0/v1.1) in the diffusers layout",
    "sd_ldm": "an SD-VAE (image VAE of Open-Sora v1.0/v1.1) in the LDM/ComfyUI layout",
}


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict]:
    """Weights (read lazily) and the config saved with them (``checkpoints.read_checkpoint``)."""
    from ..checkpoints import read_checkpoint

    checkpoint = read_checkpoint(path)
    return checkpoint.state_dict, checkpoint.config or {}


def load_vae(
    state_dict_or_path: StateDict | str | os.PathLike,
    *,
    expect: Literal["v1.2", "sd"] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    micro_batch_size: int | None = OFFICIAL_MICRO_BATCH_SIZE,
    norm_num_groups: int = 32,
) -> VideoVAE:
    """Detect, build and strictly load a video VAE (eval mode, no gradients).

    expect: ``"v1.2"`` (Open-Sora v1.2 models need the video VAE), ``"sd"`` (v1.0/v1.1 models need
    the SD-VAE) or None (whatever the file holds). ``micro_batch_size`` is the number of frames the
    SD-VAE stage processes at once (official: 4); ``norm_num_groups`` is only for non-released sizes
    (a file saved with ``checkpoints.save_checkpoint(..., config={"norm_num_groups": n})`` carries it).
    """
    source = "state dict" if isinstance(state_dict_or_path, Mapping) else str(state_dict_or_path)
    if isinstance(state_dict_or_path, Mapping):
        state_dict = state_dict_or_path
    else:
        state_dict, saved = read_state_dict(state_dict_or_path)
        norm_num_groups = saved.get("norm_num_groups", norm_num_groups)  # written by our trainer / tests
    layout, prefix = _expect_layout(state_dict, expect, source)
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if layout == "vae_v1_2":
        model = _build_pipeline(state_dict, micro_batch_size, norm_num_groups)
        target = model
    else:
        state_dict = to_diffusers_layout(state_dict)
        arch = infer_autoencoder_config(state_dict, norm_num_groups)
        with torch.device("meta"):
            model = VideoAutoencoderKL(arch, micro_batch_size)
        target = model.module
    load_strict(target, state_dict, source)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _expect_layout(state_dict: StateDict, expect: str | None, source: str) -> tuple[str, str]:
    found = find_vae(state_dict)
    if found is None:
        sample = ", ".join(list(state_dict)[:3])
        raise ValueError(
            f"{source}: not a VAE file (no SD-VAE or Open-Sora VAE v1.2 keys; first keys: {sample}). "
            "Pick the VAE file (e.g. OpenSora-VAE-v1.2 model.safetensors or an SD-VAE .safetensors); "
            "diffusion-transformer and text-encoder files go to their own loaders."
        )
    layout = found[0]
    if expect == "v1.2" and layout != "vae_v1_2":
        raise ValueError(
            f"{source}: this file holds {_FAMILY_NAMES[layout]}, but Open-Sora v1.2 needs the video VAE "
            "(hpcai-tech/OpenSora-VAE-v1.2, model.safetensors); use that file, or an SD-VAE only with v1.0/v1.1 models."
        )
    if expect == "sd" and layout == "vae_v1_2":
        raise ValueError(
            f"{source}: this file holds {_FAMILY_NAMES[layout]}, but Open-Sora v1.0/v1.1 models need the SD-VAE "
            "(stabilityai/sd-vae-ft-ema); use that file, or this VAE with an Open-Sora v1.2 model."
        )
    if expect not in (None, "v1.2", "sd"):
        raise ValueError(f"expect must be None, 'v1.2' or 'sd', got {expect!r}")
    return found


def _build_pipeline(state_dict: StateDict, micro_batch_size: int | None, groups: int) -> VideoAutoencoderPipeline:
    spatial_prefix = "spatial_vae.module."
    spatial = {k[len(spatial_prefix):]: v for k, v in state_dict.items() if k.startswith(spatial_prefix)}
    with torch.device("meta"):
        return VideoAutoencoderPipeline(
            infer_autoencoder_config(to_diffusers_layout(spatial), groups),
            infer_temporal_config(state_dict, "temporal_vae.", groups),
            micro_batch_size=micro_batch_size,
            micro_frame_size=V1_2_MICRO_FRAME_SIZE,
            scale=state_dict["scale"].flatten().tolist() if "scale" in state_dict else 1.0,
            shift=state_dict["shift"].flatten().tolist() if "shift" in state_dict else 0.0,
        )


# ---------------------------------------------------------------------------
# Architecture from shapes
# ---------------------------------------------------------------------------


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


def _shape(state_dict: StateDict, key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"VAE state dict has no {key!r}: the file is incomplete or not this kind of VAE")
    return tuple(state_dict[key].shape)


def _count(state_dict: StateDict, prefix: str) -> int:
    """Number of numbered children directly under ``prefix`` (max index + 1)."""
    found = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
    indices = [int(i) for i in found if i.isdigit()]
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------


def load_strict(module: nn.Module, state_dict: StateDict, source: str = "state dict") -> None:
    """Load names and shapes exactly (LDM / legacy SD-VAE names are converted by the module's hook).

    A module on the meta device takes the tensors as they are (``assign``), so weights are never held twice.
    """
    assign = any(p.is_meta for p in module.parameters())
    result = _try_load(module, state_dict, assign)
    if result:
        raise ValueError(f"{source}: does not fit {type(module).__name__}: {result}")


def _try_load(module: nn.Module, state_dict: StateDict, assign: bool) -> str:
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    except RuntimeError as err:
        text = str(err).split("\n")
        found = detect_vae_layout(state_dict)
        hint = f" (the file holds {_FAMILY_NAMES[found]})" if found else ""
        return " ".join(line.strip() for line in text[:6])[:1500] + hint
    return ""
