"""Open-Sora 2.0 (hpcai-tech/Open-Sora main, the 2.0 code): the 11B MMDiT, the Hunyuan video VAE, T5-XXL +
CLIP-L, the shifted flow schedule with three-pass guidance, and the condition types.

Values follow configs/diffusion/inference/256px.py (768px.py inherits them; only the resolution differs) and
scripts/diffusion/inference.py (prompt suffixes, fps_save); see ``shared/reference/v2_0/FACTS.md``. The model
class is ``opensora_core.models.mmdit``, the VAE ``opensora_core.vae.hunyuan``, the sampler
``opensora_core.sampling.v2``, the conditioning ``opensora_core.conditioning.v2``, the text
``opensora_core.text.v2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..conditioning.v2 import ConditionTypes
from ..geometry import HUNYUAN_VAE
from ..geometry.opensora_v2 import RESOLUTIONS, check_num_frames, check_size, image_size, training_buckets
from ..sampling.v2 import ThreePassGuidance, sample_v2, schedule_v2, start_noise_v2
from ..text import prompts_v2
from ..text.clip import CLIP_MAX_LENGTH
from ..text.t5 import T5_V2_0, T5_XXL_CHANNELS
from ..text.v2 import NEGATIVE_PROMPT, TextEncoderV2, load_text_encoders_v2
from ..vae.shapes import hunyuan_for
from .common import T5_FILE
from .registry import (
    Defaults,
    Family,
    FileKind,
    ModelKind,
    PromptSettings,
    Sampler,
    TextEncoder,
    TextFile,
    Training,
    VAEKind,
    register,
    register_kind,
)

CLIP_L_CHANNELS = 768  # pooled width of CLIP ViT-L/14's text tower (the MMDiT's vec_in_dim)

# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

_MMDIT_MARKERS = ("double_blocks.0.img_attn.q_proj.weight", "single_blocks.0.v_mlp.weight", "cond_in.weight")

MMDIT_FILE = ModelKind(
    name="MMDiT",
    class_name="MMDiTModel",
    markers=_MMDIT_MARKERS,
    description="the Open-Sora 2.0 MMDiT (Open_Sora_v2.safetensors)",
    fix="load it with the Open-Sora model loader (Open-Sora 2.0)",
    released_files={"Open_Sora_v2.safetensors": "OpenSora-v2-MMDiT"},
    fp8_weights=True,
    block_swap=True,
)
MMDIT_FP8_FILE = ModelKind(
    name="MMDiT_fp8",
    class_name="MMDiTModel",
    markers=(*_MMDIT_MARKERS, "double_blocks.0.img_attn.q_proj.scale_weight"),
    shadows=("MMDiT",),  # the same keys plus the per-layer scales
    description="the Open-Sora 2.0 MMDiT with fp8 (e4m3fn) weights and per-layer scales",
    fix="load it with the Open-Sora model loader (Open-Sora 2.0); it runs with fp8 weights",
    fp8_weights=True,
    stores_fp8=True,
    block_swap=True,
)
FLUX_FILE = FileKind(  # named so a wrong file gets a useful message; ComfyUI's own nodes run it
    name="flux",
    role="diffusion",
    class_name="Flux",
    markers=("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"),
    prefixed=True,
    description="a FLUX.1 image model (e.g. flux1-dev.safetensors), not a video model",
    fix="load it with ComfyUI's 'Load Diffusion Model' (UNETLoader): the Open-Sora 2.0 text-to-image-to-video "
        "workflow makes its first frame with it",
)
HUNYUAN_VAE_FILE = VAEKind(
    name="hunyuan_vae",
    class_name="AutoencoderKLCausal3D",
    markers=("encoder.down_blocks.0.resnets.0.conv1.conv.weight", "post_quant_conv.weight"),
    prefixed=True,
    shadows=("sd_diffusers",),  # its resnets carry the diffusers SD-VAE's norm names too
    geometry=HUNYUAN_VAE,
    description="the Hunyuan video VAE of Open-Sora 2.0 (hunyuan_vae.safetensors, HunyuanVideo's causal 3D VAE)",
    fix="this is a VAE file: load it with the VAE loader (for Open-Sora 2.0 models)",
    short_name="the Hunyuan video VAE",
    source="hpcai-tech/Open-Sora-v2, hunyuan_vae.safetensors",
    build=hunyuan_for,
)
CLIP_L_FILE = FileKind(
    name="clip_l",
    role="text",
    class_name="CLIPTextModel",
    markers=("text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.final_layer_norm.weight"),
    prefixed=True,
    description="a CLIP text encoder (clip_l.safetensors or openai/clip-vit-large-patch14)",
    fix="this is a text encoder: load it as the CLIP of the Open-Sora 2.0 text encoders",
)
register_kind(MMDIT_FP8_FILE)
register_kind(FLUX_FILE)

# ---------------------------------------------------------------------------
# Prompts and text encoders
# ---------------------------------------------------------------------------


def prepare_prompt_v2(text: str, settings: PromptSettings) -> str:
    """The frame rate and the motion score as text (``text.prompts_v2``: "a cat. 24 FPS. 4 motion score.");
    no caption cleaning, no aesthetic or camera phrases (the 2.0 inference script adds none; the plan refuses
    them: ``Family.takes_phrase``)."""
    return prompts_v2.prepare_prompt(text, fps=settings.fps, motion_score=settings.motion_score)


def load_text_v2(files: Sequence[TextFile], *, max_length: int, dtype: torch.dtype, device) -> TextEncoderV2:
    """T5 and CLIP (files in ``V2_0.text`` order): single files need their tokenizer folders."""
    t5, clip = files
    return load_text_encoders_v2(t5.path, clip.path, t5_tokenizer=t5.tokenizer, clip_tokenizer=clip.tokenizer,
                                 max_length=max_length, dtype=dtype, device=device)


# ---------------------------------------------------------------------------
# The family
# ---------------------------------------------------------------------------

FLOW_V2 = Sampler(
    name="flow-v2",
    schedule=schedule_v2,  # linspace(1, 0) shifted for the tokens per frame and the frame count
    sample=sample_v2,  # Euler; the i2v reference frames are put back into item 0 afterwards (official)
    denoiser=ThreePassGuidance.for_sampler,  # text / image / neither, one call of 3B rows
    check_frames=check_num_frames,  # 4k + 1 frames (the causal VAE), a warning above 129
    start_noise=start_noise_v2,  # get_noise(seed): its own generator, in the model dtype
)

V2_0 = register(Family(
    name="opensora-v2.0",
    system="Open-Sora",
    release="v2.0",
    model=MMDIT_FILE,
    vae=(HUNYUAN_VAE_FILE,),
    vae_name="the Hunyuan video VAE (hunyuan_vae.safetensors)",
    text=(
        TextEncoder(kind=T5_FILE, name="T5-XXL (google/t5-v1_1-xxl; t5xxl_fp16.safetensors)",
                    max_length=T5_V2_0.max_length, channels=T5_XXL_CHANNELS),  # 512 tokens, no attention mask
        TextEncoder(kind=CLIP_L_FILE, name="CLIP-L (openai/clip-vit-large-patch14; clip_l.safetensors)",
                    max_length=CLIP_MAX_LENGTH, channels=CLIP_L_CHANNELS),  # pooled output
    ),
    sampler=FLOW_V2,
    conditioning=ConditionTypes(),
    defaults=Defaults(
        steps=50, cfg_scale=7.5, num_frames=129, fps=float(prompts_v2.DEFAULT_FPS), aesthetic_score=None,
        condition_frame_length=None,  # no loop mode
        frame_interval=1, motion_score=float(prompts_v2.DEFAULT_MOTION_SCORE), negative_prompt=NEGATIVE_PROMPT,
        image_cfg_scale=3.0, oscillation=True, condition_type="t2v", resolution="256px", aspect_ratio="16:9",
    ),
    prompt_syntax="v1.2",  # JSON options after a prompt (reference_path) as the v1.2 command line reads them
    prepare_prompt=prepare_prompt_v2,
    load_text=load_text_v2,
    check_size=check_size,  # sides multiples of 16 (VAE 8 x patch 2)
    image_size=image_size,  # 256px / 768px, aspect ratios as W:H ("16:9" -> 192x336)
    # For the trainer (train/mmdit_task.py): the captions carry " <fps> FPS."; 4k+1 frames (the geometry) in the
    # 256px / 768px bucket tables with the 2.0 bucket draws; the shifted flow objective of the 2.0 trainer
    # (sampling.v2_losses); T5 and CLIP each replaced by the null caption with probability 0.31622777
    # (configs/diffusion/train/image.py ``dropout_ratio``); fp8 base and block swap for LoRA on one GPU.
    training=Training(objective="v2_flow", aspect_ratio=None, fps_per_frame_interval=None, frame_masks=False,
                      caption_suffix=prompts_v2.training_caption, bucket_resolutions=RESOLUTIONS,
                      bucket_sizes=training_buckets, bucket_rule="v2",
                      caption_dropout=(("t5", 0.31622777), ("clip", 0.31622777)), fp8_base=True, block_swap=True),
))

__all__ = [
    "CLIP_L_FILE", "FLOW_V2", "FLUX_FILE", "HUNYUAN_VAE_FILE", "MMDIT_FILE", "MMDIT_FP8_FILE", "V2_0", "load_text_v2",
    "prepare_prompt_v2",
]
