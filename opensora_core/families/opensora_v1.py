"""Open-Sora v1.0, v1.1 and v1.2 (hpcai-tech/Open-Sora): STDiT / STDiT2 / STDiT3, SD-VAE or VAE v1.2, T5.

Values follow the official inference configs (configs/opensora*/inference/*.py at v1.0.0, v1.1.0, v1.2.0);
the model classes are in ``opensora_core.models``, the VAEs in ``opensora_core.vae``.
"""

from __future__ import annotations

from dataclasses import replace

from ..conditioning import MaskStrategyConditioning
from ..geometry import VAE_V1_2
from ..sampling import (
    DIFFUSION_STEPS,
    ScheduleRequest,
    check_transform_frames,
    iddpm_schedule,
    rflow_schedule,
    sample_iddpm,
    sample_rflow,
)
from ..text.prompts import AESTHETIC_SCORE_V1_2
from ..text.t5 import T5_V1_0, T5_V1_1, T5_V1_2, T5_XXL_CHANNELS
from ..vae.shapes import pipeline_for
from .common import SD_VAE_KINDS, T5_FILE
from .registry import Defaults, Family, ModelKind, Sampler, TextEncoder, Training, VAEKind, register

# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

STDIT3_FILE = ModelKind(
    name="STDiT3",
    class_name="STDiT3",
    markers=("spatial_blocks.0.attn.qkv.weight", "temporal_blocks.0.attn.qkv.weight"),
    description="an Open-Sora v1.2 STDiT3 diffusion transformer",
    fix="load it with the Open-Sora model loader as STDiT3 (v1.2)",
)
STDIT2_FILE = ModelKind(
    name="STDiT2",
    class_name="STDiT2",
    markers=("t_block_temp.1.weight", "blocks.0.attn_temp.qkv.weight"),
    shadows=("STDiT",),  # it has STDiT's markers too
    description="an Open-Sora v1.1 STDiT2 diffusion transformer",
    fix="this is a v1.1 checkpoint: pick STDiT2 (v1.1)",
)
STDIT_FILE = ModelKind(
    name="STDiT",
    class_name="STDiT",
    markers=("blocks.0.attn_temp.qkv.weight", "t_block.1.weight"),
    description="an Open-Sora v1.0 STDiT diffusion transformer",
    fix="this is a v1.0 checkpoint: pick STDiT (v1.0)",
    # hpcai-tech/Open-Sora README at v1.0.0: the .pth files omit their fixed position tables
    released_files={
        "OpenSora-v1-16x256x256.pth": "STDiT-XL/2-16x256x256",
        "OpenSora-v1-HQ-16x256x256.pth": "STDiT-XL/2-16x256x256",
        "OpenSora-v1-HQ-16x512x512.pth": "STDiT-XL/2-16x512x512",
    },
)
VAE_V1_2_FILE = VAEKind(
    name="vae_v1_2",
    class_name="VideoAutoencoderPipeline",
    markers=("temporal_vae.encoder.conv_in.conv.weight",),
    prefixed=True,
    shadows=("sd_diffusers",),  # its spatial stage is an SD-VAE under spatial_vae.module.
    geometry=VAE_V1_2,
    description="the Open-Sora VAE v1.2 (spatial + temporal video VAE)",
    fix="this is a VAE file: load it with the VAE loader",
    short_name="the video VAE",
    build=pipeline_for,
    source="hpcai-tech/OpenSora-VAE-v1.2, model.safetensors",
)

# ---------------------------------------------------------------------------
# Samplers: (schedule, sample) over the guided denoiser
# ---------------------------------------------------------------------------


def _rflow_schedule(request: ScheduleRequest):
    """v1.2: 30 steps shifted for the output size (``use_timestep_transform=True``; the official inference
    shift times ``shift_scale``, 1.0 officially)."""
    return rflow_schedule(request.steps, height=request.height, width=request.width,
                          num_frames=request.num_frames, args_dtype=request.args_dtype, scale=request.shift_scale)


def _iddpm_schedule(request: ScheduleRequest):
    """v1.1: the respaced arrays in float32 torch arithmetic."""
    return iddpm_schedule(request.steps, precision="float32")


def _iddpm_schedule_v1_0(request: ScheduleRequest):
    """v1.0: the respaced arrays in float64 numpy, cast to float32 when gathered (v1.0.0 gaussian_diffusion.py)."""
    return iddpm_schedule(request.steps, precision="float64")


RFLOW = Sampler(name="rflow", schedule=_rflow_schedule, sample=sample_rflow, check_frames=check_transform_frames)
# v1.0 / v1.1 guide 3 of the 4 noise channels (cfg_channel = 3); the steps respace the 1000 training steps
IDDPM = Sampler(name="iddpm", schedule=_iddpm_schedule, sample=sample_iddpm, guidance_channels=3,
                step_range=(2, DIFFUSION_STEPS))
IDDPM_V1_0 = replace(IDDPM, schedule=_iddpm_schedule_v1_0)

# ---------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------

V1_2 = register(Family(
    name="opensora-v1.2",
    system="Open-Sora",
    release="v1.2",
    model=STDIT3_FILE,
    vae=(VAE_V1_2_FILE,),
    vae_name="the Open-Sora VAE v1.2",
    text=(TextEncoder(kind=T5_FILE, name="T5-XXL", max_length=T5_V1_2.max_length, channels=T5_XXL_CHANNELS),),
    sampler=RFLOW,
    conditioning=MaskStrategyConditioning("v1.2"),
    defaults=Defaults(steps=30, cfg_scale=7.0, num_frames=51, fps=24.0, aesthetic_score=AESTHETIC_SCORE_V1_2,
                      condition_frame_length=5, frame_interval=1, shift_scale=1.0),
    score_phrases=True,  # trained with aesthetic / motion / camera-motion phrases
    training=Training(objective="rflow", aspect_ratio="height/width", fps_per_frame_interval=True),
))

V1_1 = register(Family(
    name="opensora-v1.1",
    system="Open-Sora",
    release="v1.1",
    model=STDIT2_FILE,
    vae=SD_VAE_KINDS,
    vae_name="an SD-VAE",
    text=(TextEncoder(kind=T5_FILE, name="T5-XXL", max_length=T5_V1_1.max_length, channels=T5_XXL_CHANNELS),),
    sampler=IDDPM,
    conditioning=MaskStrategyConditioning("v1.1"),
    prompt_syntax="v1.1",  # scripts/inference-long.py: a trailing JSON object or array
    defaults=Defaults(steps=100, cfg_scale=7.0, num_frames=16, fps=24.0, aesthetic_score=None,
                      condition_frame_length=4, frame_interval=3),
    # the official v1.1 dataset gives ar = W / H and the source fps (a training quirk)
    training=Training(objective="iddpm", aspect_ratio="width/height", fps_per_frame_interval=False),
))

V1_0 = register(Family(
    name="opensora-v1.0",
    system="Open-Sora",
    release="v1.0",
    model=STDIT_FILE,
    vae=SD_VAE_KINDS,
    vae_name="an SD-VAE",
    text=(TextEncoder(kind=T5_FILE, name="T5-XXL", max_length=T5_V1_0.max_length, channels=T5_XXL_CHANNELS),),
    sampler=IDDPM_V1_0,
    conditioning=None,  # STDiT takes no reference frames (no x_mask)
    prompt_syntax="v1.1",  # as v1.1 (v1.0 reads no options; references are refused anyway)
    defaults=Defaults(steps=100, cfg_scale=7.0, num_frames=16, fps=24.0, aesthetic_score=None,
                      condition_frame_length=4, frame_interval=3),
))

__all__ = [
    "IDDPM", "IDDPM_V1_0", "RFLOW", "STDIT2_FILE", "STDIT3_FILE", "STDIT_FILE", "V1_0", "V1_1", "V1_2", "VAE_V1_2_FILE",
]
