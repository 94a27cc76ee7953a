"""Open-Sora-Plan (PKU-YuanGroup/Open-Sora-Plan): the v1.3 transformers with the WF-VAE and mT5-XXL, and the
CausalVideoVAE files of v1.0-v1.2.

Two families, one per v1.3 transformer class (the registry ties one diffusion class to one family):

* ``open-sora-plan-v1.3`` - ``OpenSoraT2V_v1_3`` (``any93x640x640/``), text to video;
* ``open-sora-plan-v1.3-i2v`` - ``OpenSoraInpaint_v1_3``, image to video / transition / continuation
  (the inpainting condition of :class:`~opensora_core.conditioning.InpaintConditioning`).

Both share the WF-VAE, mT5-XXL (512 tokens), the Euler-ancestral v-prediction sampler and the sample scripts'
defaults (scripts/text_condition/gpu/sample_t2v_v1_3.sh and sample_inpaint_v1_3.sh @v1.3.1: 93 frames, 100
steps, guidance 7.5, the prompt template and the negative prompt of opensora/utils/sample_utils.py).

The CausalVideoVAE v1.0, v1.1 and v1.2 (D4) files are registered as VAE kinds only: they load and encode /
decode (the VAE nodes work with them), but their transformers (Latte-based v1.0/v1.1, the v1.2
OpenSoraT2V) are not part of this pack, so no family claims them.
"""

from __future__ import annotations

from ..conditioning import InpaintConditioning
from ..geometry import OSP_CAUSAL_VAE, OSP_WF_VAE
from ..sampling.ddpm_schedule import NUM_TRAIN_TIMESTEPS
from ..sampling.euler_ancestral import release_schedule, sample_euler_ancestral, v_prediction_guidance
from ..geometry.open_sora_plan import OSP_V1_3_TRAINED_SIDE_MULTIPLE, check_osp_v1_3_request
from ..sampling.vpred_losses import SNR_GAMMA_V1_3
from ..text.osp_prompts import OSP_V1_3_NEGATIVE_PROMPT, OSP_V1_3_PROMPT_TEMPLATE
from ..text.t5 import MT5_V1_3, T5_XXL_CHANNELS
from ..vae.osp import release_build
from .common import SD_VAE_LDM, T5_FILE
from .registry import (
    Defaults,
    Family,
    FileKind,
    ModelKind,
    Sampler,
    TextEncoder,
    Training,
    VAEKind,
    prompt_as_written,
    register,
    register_kind,
)

HF_REPO = "LanguageBind/Open-Sora-Plan-v1.3.0"

# ---------------------------------------------------------------------------
# Transformers
# ---------------------------------------------------------------------------

_V1_3_MARKERS = ("pos_embed.proj.weight", "adaln_single.linear.weight", "transformer_blocks.0.attn1.to_q.weight")
_ONLY_V1_3 = ("this pack runs the Open-Sora-Plan v1.3 transformers only (OpenSoraT2V_v1_3, OpenSoraInpaint_v1_3); "
              "the v1.0-v1.2 transformers are not supported")

T2V_V1_3_FILE = ModelKind(
    name="OpenSoraT2V_v1_3",
    class_name="OpenSoraT2V_v1_3",
    markers=_V1_3_MARKERS,
    description="an Open-Sora-Plan v1.3 text-to-video transformer (OpenSoraT2V_v1_3)",
    fix="load it with the Open-Sora model loader (Open-Sora-Plan v1.3, text to video)",
)
I2V_V1_3_FILE = ModelKind(
    name="OpenSoraInpaint_v1_3",
    class_name="OpenSoraInpaint_v1_3",
    markers=(*_V1_3_MARKERS, "pos_embed_mask.0.proj.weight", "pos_embed_masked_hidden_states.0.proj.weight"),
    shadows=("OpenSoraT2V_v1_3",),  # it holds the text-to-video model's keys too
    description="an Open-Sora-Plan v1.3 image-to-video / inpainting transformer (OpenSoraInpaint_v1_3)",
    fix="load it with the Open-Sora model loader (Open-Sora-Plan v1.3, image to video)",
)

# ---------------------------------------------------------------------------
# VAEs: the CausalVideoVAE keys contain the LDM SD-VAE marker (encoder.down.0.block.0.norm1.weight)
# ---------------------------------------------------------------------------

_VAE_FIX = "this is a VAE file: load it with the VAE loader"
_CAUSAL_MARKERS = ("decoder.conv_in.conv.weight", "encoder.down.0.block.0.norm1.weight")

CAUSAL_VAE_V1_0_FILE = register_kind(VAEKind(
    name="osp_causalvae_v1_0",
    class_name="CausalVAEModel",
    markers=(*_CAUSAL_MARKERS, "encoder.conv_in.conv.weight"),  # all-3D: a causal conv_in
    shadows=(SD_VAE_LDM.name,),
    geometry=OSP_CAUSAL_VAE,
    description="the Open-Sora-Plan v1.0 CausalVideoVAE (CausalVAEModel_4x8x8, all-3D layout)",
    fix=f"{_VAE_FIX} (it encodes and decodes; {_ONLY_V1_3})",
    short_name="the CausalVideoVAE v1.0",
    source="LanguageBind/Open-Sora-Plan-v1.0.0, vae/",
    build=release_build("CausalVAEModel_4x8x8-v1.0"),
))
CAUSAL_VAE_V1_1_FILE = register_kind(VAEKind(
    name="osp_causalvae_v1_1",
    class_name="CausalVAEModel",
    markers=(*_CAUSAL_MARKERS, "encoder.conv_in.weight", "encoder.down.1.time_downsample.mix_factor"),
    shadows=(SD_VAE_LDM.name,),
    geometry=OSP_CAUSAL_VAE,
    description="the Open-Sora-Plan v1.1 CausalVideoVAE (CausalVAEModel_4x8x8, TimeDownsampleRes2x layout)",
    fix=f"{_VAE_FIX} (it encodes and decodes; {_ONLY_V1_3})",
    short_name="the CausalVideoVAE v1.1",
    source="LanguageBind/Open-Sora-Plan-v1.1.0, vae/",
    build=release_build("CausalVAEModel_4x8x8-v1.1"),
))
CAUSAL_VAE_V1_2_FILE = register_kind(VAEKind(
    name="osp_causalvae_v1_2",
    class_name="CausalVAEModel",
    markers=(*_CAUSAL_MARKERS, "encoder.conv_in.weight", "encoder.down.1.downsample.conv.conv.weight"),
    shadows=(SD_VAE_LDM.name,),
    geometry=OSP_CAUSAL_VAE,
    description="the Open-Sora-Plan v1.2 CausalVideoVAE (CausalVAEModel_D4_4x8x8)",
    fix=f"{_VAE_FIX} (it encodes and decodes; {_ONLY_V1_3})",
    short_name="the CausalVideoVAE v1.2",
    source="LanguageBind/Open-Sora-Plan-v1.2.0, vae/",
    build=release_build("CausalVAEModel_D4_4x8x8"),
))

_WFVAE = dict(
    class_name="WFVAEModel",
    geometry=OSP_WF_VAE,
    fix=_VAE_FIX,
    short_name="the WF-VAE",
    source=f"{HF_REPO}, vae/ (config.json + diffusion_pytorch_model.safetensors)",
    build=release_build("WFVAEModel_D8_4x8x8"),
)
WFVAE_FILE = VAEKind(
    name="osp_wfvae",
    markers=("encoder.down1.0.weight", "encoder.wavelet_tranform_l2.h_conv.conv.weight"),  # v1.3.1 spelling
    description="the Open-Sora-Plan v1.3 WF-VAE (WFVAEModel_D8_4x8x8)",
    **_WFVAE,
)
WFVAE_MAIN_FILE = VAEKind(
    name="osp_wfvae_main",
    markers=("encoder.down1.0.weight", "encoder.wavelet_transform_l2.h_conv.conv.weight"),  # main after PR #536
    description="the Open-Sora-Plan v1.3 WF-VAE (WFVAEModel_D8_4x8x8, key names of the later main branch)",
    **_WFVAE,
)

# ---------------------------------------------------------------------------
# Text: mT5-XXL has T5's keys (a 250k-row vocabulary); a config's model_type "mt5" or the class tells them apart
# ---------------------------------------------------------------------------

MT5_FILE = FileKind(
    name="mt5",
    role="text",
    class_name="MT5EncoderModel",
    markers=T5_FILE.markers,
    description="an mT5 text encoder",
    fix="this is a text encoder: load it with the T5 loader (google/mt5-xxl for Open-Sora-Plan)",
)

# ---------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------

EULER_ANCESTRAL = Sampler(
    name="euler-ancestral", schedule=release_schedule, sample=sample_euler_ancestral, denoiser=v_prediction_guidance,
    step_range=(1, NUM_TRAIN_TIMESTEPS),
    check_frames=OSP_WF_VAE.check_num_frames,  # 4n+1 (the causal VAEs' rule; also checked by check_size)
)
# sample_t2v_v1_3.sh / sample_inpaint_v1_3.sh @v1.3.1: 93x352x640, 100 steps, guidance 7.5; fps 18 is what the
# scripts save at (the model takes none); the prompt goes to mT5 as written, wrapped in the release template, and
# guidance runs against the release negative prompt (opensora/utils/sample_utils.py); no size presets
V1_3_DEFAULTS = Defaults(steps=100, cfg_scale=7.5, num_frames=93, fps=18.0, aesthetic_score=None,
                         condition_frame_length=None, frame_interval=1, negative_prompt=OSP_V1_3_NEGATIVE_PROMPT,
                         prompt_template=OSP_V1_3_PROMPT_TEMPLATE, resolution=None, aspect_ratio=None,
                         size=(352, 640))


def v1_3_training_call(model, x, t, y, mask, x_mask, sizes):
    """OpenSoraT2V_v1_3's call in train_t2v_diffusers.py: the caption mask is ``encoder_attention_mask``, the
    latent mask all ones (no bucket padding here), no size arguments; there are no condition frames."""
    if x_mask is not None:
        raise ValueError("OpenSoraT2V_v1_3 trains without condition-frame masks; leave mask_ratios out")
    return model(x, t, y, encoder_attention_mask=mask)


# train_t2v_v1_3.sh: v-prediction, zero SNR, --snr_gamma 5.0, --hw_stride 32, 16 fps
V1_3_TRAINING = Training(objective="vprediction", aspect_ratio=None, fps_per_frame_interval=False, zero_snr=True,
                         snr_gamma=SNR_GAMMA_V1_3, side_multiple=OSP_V1_3_TRAINED_SIDE_MULTIPLE, fps=16.0,
                         forward=v1_3_training_call, frame_masks=False)
_V1_3 = dict(
    system="Open-Sora-Plan",
    release="v1.3",
    label="Open-Sora-Plan v1.3",
    vae=(WFVAE_FILE, WFVAE_MAIN_FILE),
    vae_name="the Open-Sora-Plan v1.3 WF-VAE",
    text=(TextEncoder(kind=MT5_FILE, name="mT5-XXL (google/mt5-xxl)", max_length=MT5_V1_3.max_length,
                      channels=T5_XXL_CHANNELS),),
    sampler=EULER_ANCESTRAL,
    defaults=V1_3_DEFAULTS,
    prepare_prompt=prompt_as_written,
    check_size=check_osp_v1_3_request,  # 4n+1 frames, sides multiples of 16 (32 recommended)
    image_size=None,
)

V1_3_T2V = register(Family(name="open-sora-plan-v1.3", model=T2V_V1_3_FILE, conditioning=None,
                           training=V1_3_TRAINING, **_V1_3))
# the inpainting model's training (condition channels from masked videos) is not part of the trainer
V1_3_I2V = register(Family(name="open-sora-plan-v1.3-i2v", model=I2V_V1_3_FILE, conditioning=InpaintConditioning(),
                           training=None, **_V1_3))

__all__ = [
    "CAUSAL_VAE_V1_0_FILE",
    "CAUSAL_VAE_V1_1_FILE",
    "CAUSAL_VAE_V1_2_FILE",
    "EULER_ANCESTRAL",
    "HF_REPO",
    "I2V_V1_3_FILE",
    "MT5_FILE",
    "T2V_V1_3_FILE",
    "V1_3_DEFAULTS",
    "V1_3_I2V",
    "V1_3_T2V",
    "V1_3_TRAINING",
    "WFVAE_FILE",
    "WFVAE_MAIN_FILE",
]
