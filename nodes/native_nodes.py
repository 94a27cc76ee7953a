"""Nodes of the native path: our model as a ComfyUI MODEL for KSampler / SamplerCustomAdvanced.

Loader (MODEL), sampling settings (pixel size, frames, fps and the exact v1.2 shift into the MODEL), the
Open-Sora sigma schedule (SIGMAS), an empty video latent with the VAE's latent frame count, the learned
null caption as a negative (CONDITIONING), and references as a LATENT with a per-frame ``noise_mask``
(from the Mask Builder's strategy). Registered only when ``comfy_bridge.native_api`` finds ComfyUI's
internal API as expected (``nodes/__init__.py``).
"""

from __future__ import annotations

import logging

import torch

from ..opensora_core.families import Family, families_with_geometry
from ..opensora_core.geometry import check_frame_count
from ..opensora_core.pipeline import encode_references, place_references
from . import comfy_bridge as bridge
from . import widgets as w
from .comfy_bridge import io
from .native_adapters import NULL_KEY, SETTINGS_KEY, VideoSettings
from .native_mmdit import NEGATIVE_KEY
from .native_video import stored_settings
from .native_model import family_of_patcher, load_native
from .sampling import check_frames_at_queue, check_pixel_size
from .types import LATENT_INFO, LatentInfo, References, ReferencesSocket, VAEHandle, VAESocket

log = logging.getLogger("opensora")

CATEGORY = f"{w.CATEGORY}/native"
SHIFTS = {"exact": torch.float32, "official bf16 rounding": torch.bfloat16}
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Nodes the settings node's model link may pass through from the native loader (node type -> the input passed on)
NATIVE_MODEL_PASS_THROUGH = {"LoraLoaderModelOnly": "model", "OpenSoraSamplingSettings": "model"}


def _size_inputs(frames_tooltip: str) -> list:
    return [
        w.integer("width", 426, 16, 4096, "Output width in pixels (240p 9:16: 426; decoded as 424).", step=2),
        w.integer("height", 240, 16, 4096, "Output height in pixels.", step=2),
        w.integer("num_frames", 51, 1, 4096, frames_tooltip),
    ]


class OpenSoraNativeModelLoader(io.ComfyNode):
    """Loads Open-Sora v1.2 (STDiT3), v1.1 (STDiT2) or 2.0 (MMDiT) as a ComfyUI MODEL for KSampler,
    SamplerCustomAdvanced, LoraLoaderModelOnly and model patches; ComfyUI loads it partially when the GPU is
    small (--lowvram). Add Open-Sora Sampling Settings after it. v1.2 with euler matches the Open-Sora Sampler;
    2.0 with euler and the Open-Sora 2.0 Guider too; v1.1 is approximate (fixed instead of learned variance),
    and loops and per-round prompts need the Open-Sora Sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraNativeModelLoader", display_name="Open-Sora Model Loader (native MODEL)",
            category=CATEGORY, description=cls.__doc__,
            inputs=[
                w.file_choice("model_name", "diffusion_models", "File in models/diffusion_models, e.g. "
                              "OpenSora-STDiT-v3.safetensors (the stock Load Diffusion Model takes it for PixArt)."),
                w.choice("weight_dtype", list(WEIGHT_DTYPES), "default", "Weight precision; 'default' lets ComfyUI "
                         "pick (bf16 on GPUs that have it, as official inference)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype) -> io.NodeOutput:
        path = bridge.model_path("diffusion_models", model_name)
        return io.NodeOutput(load_native(bridge.native_api(), path, WEIGHT_DTYPES[weight_dtype]))


class OpenSoraSamplingSettings(io.ComfyNode):
    """Tells the native MODEL the video it samples: pixel size, frame count and fps (the model is conditioned
    on them) and the exact shift of the official timestep transform for that size (v1.2:
    sqrt(H*W)/512 * sqrt(floor(frames/17)*5); 2.0: (m S + b) sqrt(latent frames), S tokens per latent frame).
    Use the same size and frames as the empty latent."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraSamplingSettings", display_name="Open-Sora Sampling Settings", category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Model.Input("model", tooltip="Open-Sora Model Loader (native MODEL)."),
                *_size_inputs("Pixel frames (v1.2: 1, or 17 and more; 51 = 2 s)."),
                w.number("fps", 24.0, 1.0, 120.0, "Frame rate the model is conditioned on.", step=1.0),
                w.choice("shift", list(SHIFTS), "exact", "v1.2: 'official bf16 rounding' rounds H*W and the shift "
                         "to bf16 as official bf16 inference does (2.4187 -> 2.4219 at 240p, 51 frames)."),
                w.number("shift_scale", 1.0, 0.05, 20.0, "v1.2: a factor on that shift (1.0 = official). Above 1 "
                         "more of the steps go to high noise, where placement and shape are decided.", step=0.05,
                         optional=True),
            ],
            outputs=[io.Model.Output(display_name="model")],
            hidden=[io.Hidden.unique_id],  # validate_inputs finds its model link in the queued prompt
        )

    @classmethod
    def validate_inputs(cls, width, height, num_frames) -> bool | str:
        """Queue time: the pixel size, and the frame count for the model file the queued prompt loads."""
        found = check_pixel_size(width, height)
        if found is not True:
            return found
        return check_frames_at_queue(cls.hidden.unique_id, num_frames, "OpenSoraNativeModelLoader",
                                     NATIVE_MODEL_PASS_THROUGH)

    @classmethod
    def execute(cls, model, width, height, num_frames, fps, shift, shift_scale=1.0) -> io.NodeOutput:
        family = family_of_patcher(model)
        _check_video(family, width, height, num_frames)
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        video = VideoSettings(height, width, num_frames, float(fps))
        options[SETTINGS_KEY] = video.as_dict()
        value = model.model.adapter.shift(video, SHIFTS[shift], shift_scale)
        if value is not None:
            api = bridge.native_api()
            sampling = api.model_sampling(model.model.model_config, api.ModelType.FLOW)
            sampling.set_parameters(shift=value, multiplier=1000)
            patched.add_object_patch("model_sampling", sampling)
            log.info("Open-Sora shift %.6f for %dx%d, %d frames", value, width, height, num_frames)
        return io.NodeOutput(patched)


def _check_video(family: Family, width: int, height: int, num_frames: int) -> None:
    family.geometry.check_output_hw(height, width)
    check_frame_count(num_frames)
    if family.sampler.check_frames is not None:
        family.sampler.check_frames(num_frames)
    if family.check_size is not None:
        family.check_size(num_frames, height, width)


class OpenSoraSigmas(io.ComfyNode):
    """The Open-Sora schedule as SIGMAS for SamplerCustomAdvanced: v1.2 t = (1 - i/steps) * 1000 through the
    model's shift (exact for any step count, e.g. the official 30); v1.1 the respaced IDDPM timesteps; 2.0
    linspace(1, 0, steps + 1) shifted for the settings' video (official get_schedule)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraSigmas", display_name="Open-Sora Sigmas", category=CATEGORY, description=cls.__doc__,
            inputs=[io.Model.Input("model", tooltip="The MODEL after Open-Sora Sampling Settings (it holds the shift)."),
                    w.integer("steps", 30, 1, 1000,
                              "Sampling steps (official: 30 for v1.2, 100 for v1.1, 50 for 2.0).")],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        family_of_patcher(model)  # refuses a MODEL that is not ours
        options = model.model_options.get("transformer_options", {})
        sigmas = model.model.adapter.sigmas(model.get_model_object("model_sampling"), steps, stored_settings(options))
        return io.NodeOutput(sigmas)


def _latent_families(vae: VAEHandle) -> list[Family]:
    return families_with_geometry(vae.geometry)


class OpenSoraEmptyLatentVideo(io.ComfyNode):
    """An empty video LATENT with the latent frame count of the VAE (v1.2: 51 frames -> 15 latent frames,
    17-frame chunks of 5) and size / 8, for KSampler. Loading the VAE here also turns on its live preview."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraEmptyLatentVideo", display_name="Open-Sora Empty Latent Video", category=CATEGORY,
            description=cls.__doc__,
            inputs=[VAESocket.Input("vae", tooltip="The VAE that decodes it (it gives the latent geometry)."),
                    *_size_inputs("Pixel frames (v1.2: 1, or 17 and more; 51 = 2 s)."),
                    w.integer("batch_size", 1, 1, 64, "Videos sampled at once.")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, width, height) -> bool | str:
        return check_pixel_size(width, height)

    @classmethod
    def execute(cls, vae: VAEHandle, width, height, num_frames, batch_size) -> io.NodeOutput:
        for family in _latent_families(vae):
            _check_video(family, width, height, num_frames)
        t, h, w_ = vae.geometry.latent_size(num_frames, height, width)
        samples = torch.zeros(batch_size, vae.module.latent_channels, t, h, w_)  # (B, C, t, h, w)
        return io.NodeOutput({"samples": samples, LATENT_INFO: _info(vae, t, num_frames, height, width).as_dict()})


def _info(vae: VAEHandle, latent_frames: int, num_frames: int, height: int, width: int) -> LatentInfo:
    family = _latent_families(vae)[0]
    fps = family.defaults.fps / family.defaults.frame_interval  # the family's save rate (v1.2: 24)
    return LatentInfo([latent_frames], [num_frames], [0], fps, height=height, width=width)


class OpenSoraNullConditioning(io.ComfyNode):
    """The negative of official inference: v1.x the model's learned null caption under the prompt's token
    mask; 2.0 the empty prompt that Open-Sora Text Encode encoded beside the prompt (without the fps and
    motion suffixes). Any other negative (an empty prompt, ConditioningZeroOut) changes the video."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraNullConditioning", display_name="Open-Sora Null Conditioning (negative)",
            category=CATEGORY, description=cls.__doc__,
            inputs=[io.Conditioning.Input("positive", tooltip="The prompt's conditioning (gives the token mask).")],
            outputs=[io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive) -> io.NodeOutput:
        return io.NodeOutput([_negative_entry(cond, extras) for cond, extras in positive])


def _negative_entry(cond, extras: dict) -> list:
    """2.0: the encoded negative Text Encode put beside the prompt; v1.x: the learned null caption marker."""
    if NEGATIVE_KEY in extras:
        txt, y_vec = extras[NEGATIVE_KEY]
        return [txt, {"pooled_output": y_vec}]
    return [cond, {**extras, NULL_KEY: True}]


class OpenSoraReferenceLatent(io.ComfyNode):
    """References (Mask Builder) placed into an empty Open-Sora latent, with a per-frame noise_mask (0 keep,
    1 generate, r edit) that the native MODEL applies with Open-Sora's rule: image to video, stitching and
    video to video through KSampler. References are encoded as the Open-Sora Sampler does (fitted to the
    size, posterior sampled with seed)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraReferenceLatent", display_name="Open-Sora References to Latent", category=CATEGORY,
            description=cls.__doc__,
            inputs=[ReferencesSocket.Input("references", tooltip="Open-Sora Mask Builder output."),
                    VAESocket.Input("vae"),
                    io.Latent.Input("latent", tooltip="Open-Sora Empty Latent Video (gives size and frames)."),
                    w.seed(tooltip="Seed of the reference encoding (posterior sample), as the Open-Sora Sampler.")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, references: References, vae: VAEHandle, latent, seed) -> io.NodeOutput:
        info = LatentInfo.of(latent)
        if info is None or info.height is None:
            raise ValueError("latent: connect Open-Sora Empty Latent Video (it records the pixel size and frames)")
        family = _conditioned_family(vae)
        num_frames = info.clip_num_frames[0]
        placed = place_references(family, references.strategy, height=info.height, width=info.width,
                                  num_frames=num_frames, reference_frames=references.frame_counts)
        generator = torch.Generator().manual_seed(int(seed))
        with bridge.ComfyPlacement([vae.managed]).use(vae.module):
            refs = [r.cpu() for r in encode_references(vae.module, references.frames, info.height, info.width, generator)]
        samples = latent["samples"]
        batch = samples.shape[0]
        z, mask = family.conditioning.insert(torch.zeros_like(samples), [refs] * batch, [placed] * batch, 0)
        mask = torch.ones(samples.shape[0], samples.shape[2]) if mask is None else mask.float()  # (B, T)
        return io.NodeOutput({**latent, "samples": z, "noise_mask": mask[:, None, :, None, None]})


def _conditioned_family(vae: VAEHandle) -> Family:
    found = [f for f in _latent_families(vae) if f.conditioning is not None]
    if not found:
        raise ValueError("vae: models of this latent space take no reference frames")
    return found[0]  # one per latent space (v1.2: the video VAE; v1.1: the SD-VAE; v1.0 takes none)


NATIVE_NODES: list[type[io.ComfyNode]] = [
    OpenSoraNativeModelLoader,
    OpenSoraSamplingSettings,
    OpenSoraSigmas,
    OpenSoraEmptyLatentVideo,
    OpenSoraNullConditioning,
    OpenSoraReferenceLatent,
]
