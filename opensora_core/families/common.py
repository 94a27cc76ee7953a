"""File kinds several families share: the T5 text encoder and the SD-VAE in its two key layouts."""

from __future__ import annotations

from ..geometry import PER_FRAME
from ..vae.shapes import autoencoder_kl_for
from .registry import FileKind, VAEKind

T5_FILE = FileKind(
    name="t5",
    role="text",
    class_name="T5",
    markers=("encoder.block.0.layer.0.SelfAttention.q.weight",),
    description="a T5 text encoder",
    fix="this is a text encoder: load it with the T5 loader",
)

_SD_VAE = dict(
    role="vae",
    class_name="AutoencoderKL",
    geometry=PER_FRAME,
    prefixed=True,  # full SD checkpoints nest it under first_stage_model., others under vae. or module.
    fix="this is an image VAE file: load it with the VAE loader (SD-VAE, for v1.0/v1.1 models)",
    short_name="the SD-VAE",
    source="stabilityai/sd-vae-ft-ema",
    build=autoencoder_kl_for,  # the per-frame wrapper (VideoAutoencoderKL) of v1.0/v1.1
)
SD_VAE_DIFFUSERS = VAEKind(
    name="sd_diffusers",
    markers=("encoder.down_blocks.0.resnets.0.norm1.weight",),
    description="an SD-VAE (image VAE of Open-Sora v1.0/v1.1) in the diffusers layout",
    **_SD_VAE,
)
SD_VAE_LDM = VAEKind(
    name="sd_ldm",
    markers=("encoder.down.0.block.0.norm1.weight",),
    description="an SD-VAE (image VAE of Open-Sora v1.0/v1.1) in the LDM/ComfyUI layout",
    **_SD_VAE,
)
SD_VAE_KINDS = (SD_VAE_DIFFUSERS, SD_VAE_LDM)

__all__ = ["SD_VAE_DIFFUSERS", "SD_VAE_KINDS", "SD_VAE_LDM", "T5_FILE"]
