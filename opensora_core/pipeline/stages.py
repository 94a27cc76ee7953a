"""The stages of a generation, one function each: encode prompts, encode references, sample the loop
rounds, decode and join the clips (:func:`opensora_core.pipeline.generate` chains them; the nodes call
them one by one).

Randomness comes from one CPU ``torch.Generator`` seeded with ``spec.seed`` (the same video on every
device), drawn in the official order: reference encodes, then per round the start noise and the
sampler's per-step draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from .. import media
from ..sampling import GeneratorNoise, ScheduleRequest
from ..text.caption import Caption
from ..vae import decode_with_fallback
from ..vae.posterior import gaussian_noise
from .placement import Placement, StayPut
from .plan import GenerationPlan


class TextEncoder(Protocol):
    """Turns prompts into a caption (``opensora_core.text.t5.T5TextEncoder``, or the nodes' CLIP adapter)."""

    def encode(self, texts: list[str]) -> Caption: ...



StepInfo = dict  # the sampler's callback dict plus "round", "rounds", "step", "steps"



@dataclass
class Components:
    """What a generation needs; ``text_encoder`` may be None when captions are given directly."""

    model: nn.Module
    vae: nn.Module  # a opensora_core.vae.VideoVAE
    text_encoder: TextEncoder | None = None
    placement: Placement = field(default_factory=StayPut)



def encode_prompts(text_encoder: TextEncoder, prompts: list[str], model: nn.Module) -> Caption:
    """Encode prompts and check the caption against the model's caption shape."""
    caption = text_encoder.encode(list(prompts))
    check_caption_length(caption, model)
    return caption



def check_caption_length(caption: Caption, model: nn.Module) -> None:
    """Raise unless ``caption`` has the model's caption length and width (``model.caption_shape``)."""
    length, channels = model.caption_shape
    if caption.max_length != length:
        raise ValueError(
            f"the text encoder gives {caption.max_length} tokens but {type(model).__name__} expects {length} "
            f"(model_max_length); set the T5 max length to {length}"
        )
    if caption.y.shape[-1] != channels:
        raise ValueError(
            f"the caption has {caption.y.shape[-1]} channels but {type(model).__name__} expects {channels} "
            f"(caption_channels); use the T5 the model was trained with (T5-XXL: 4096)"
        )



def encode_references(
    vae: nn.Module, references: Sequence[torch.Tensor], height: int, width: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Fit each reference (T, H, W, 3) to the requested size and encode it: (C, t, h, w) float32 latents.

    As ``collect_references_batch`` + ``read_from_path(..., transform_name="resize_crop")``: images are
    resized with bicubic and videos with bilinear filtering to cover ``height`` x ``width`` (the requested
    size, e.g. 240x426, not the decoded 240x424), centre-cropped to it, and encoded one by one; the VAE
    floors sizes that are not multiples of 8 and samples its posterior.
    """
    latents = []
    for frames in references:
        mode = "bicubic" if frames.shape[0] == 1 else "bilinear"
        fitted = media.resize_cover_crop(frames, height, width, mode=mode)
        x = media.to_model_range(fitted).unsqueeze(0)  # (1, 3, T, H, W)
        latents.append(encode_video(vae, x, generator)[0])  # (C, t, h, w)
    return latents


def encode_video(vae: nn.Module, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Encode (B, 3, T, H, W) in about [-1, 1] as it is, sampling the posterior: (B, C, t, h, w) float32."""
    return vae.encode(video, noise=gaussian_noise(generator)).float()



def sample_clip(
    model: nn.Module,
    plan: GenerationPlan,
    caption: Caption,
    z: torch.Tensor,
    mask: torch.Tensor | None,
    noise: GeneratorNoise,
    *,
    negative: Caption | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """One clip from start latent ``z`` (B, C, t, h, w) with references already inserted."""
    sampler, spec = plan.family.sampler, plan.spec
    batch, device = z.shape[0], z.device
    args = model.model_args(batch, spec.height, spec.width, spec.num_frames, plan.fps, device=device)
    y_null = negative.y if negative is not None else model.null_caption(batch)
    denoiser = sampler.denoiser(
        model, _on(caption, device), y_null.to(device), args, scale=plan.cfg_scale, channels=sampler.guidance_channels,
        null_mask=None if negative is None else negative.mask.to(device),
    )
    schedule = sampler.schedule(ScheduleRequest(plan.steps, spec.height, spec.width, spec.num_frames, model.dtype))
    return sampler.sample(denoiser, z, schedule, mask=mask, noise=noise, callback=callback)



def _on(caption: Caption, device: torch.device) -> Caption:
    return Caption(caption.y.to(device), caption.mask.to(device))



@dataclass
class Clip:
    """One round's latent and how it joins the video."""

    latent: torch.Tensor  # (B, C, t, h, w) float32
    num_frames: int  # pixel frames it decodes to
    drop: int  # pixel frames dropped from its start when joined
    frames: torch.Tensor | None = None  # decoded (B, T, H, W, 3) in 0..1 when a later round needed them



def sample_clips(
    components: Components,
    plan: GenerationPlan,
    captions: Sequence[Caption],
    references: Sequence[torch.Tensor],
    generator: torch.Generator,
    *,
    negatives: Sequence[Caption | None] | None = None,
    tiling=None,
    callback: Callable[[StepInfo], None] | None = None,
) -> list[Clip]:
    """Run every loop round; ``captions[i]`` is round i's caption, ``references`` the encoded user references."""
    model, vae, place = components.model, components.vae, components.placement
    spec, clips = plan.spec, []
    refs = [list(references) for _ in range(plan.batch_size)]  # per sample
    noise = GeneratorNoise(generator)
    for round_index in range(spec.loops):
        if round_index > 0:
            previous = clips[-1]
            with place.use(vae):  # append_generated: the decoded clip, not clamped, is encoded as it is
                video = decode_video(vae, previous.latent, spec.num_frames, tiling=tiling)  # (B, 3, T, H, W)
                previous.frames = frames_from_video(video)
                again = encode_video(vae, video, generator)  # (B, C, t, h, w)
            for b in range(plan.batch_size):
                refs[b].append(again[b])
        working = model.sampling_memory_bytes(plan.batch_size, plan.latent_size)  # activations of one step
        with place.use(model, working) as device:
            z = torch.randn((plan.batch_size, model.in_channels, *plan.latent_size), generator=generator).to(device)
            z, mask = _insert_references(plan, z, refs, round_index, device)
            negative = negatives[round_index] if negatives else None
            step_cb = _round_callback(callback, round_index, plan)
            latent = sample_clip(model, plan, captions[round_index], z, mask, noise, negative=negative, callback=step_cb)
        clips.append(Clip(latent.float(), spec.num_frames, plan.drop_frames if round_index else 0))
    return clips



def _insert_references(plan, z, refs, round_index, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    conditioning = plan.family.conditioning
    if conditioning is None:
        return z, None
    on_device = [[r.to(device) for r in sample_refs] for sample_refs in refs]
    return conditioning.insert(z, on_device, plan.placements, round_index)


def _round_callback(callback, round_index: int, plan: GenerationPlan):
    if callback is None:
        return None

    def report(info: dict) -> None:
        step = round_index * plan.steps + info["i"] + 1
        callback({**info, "round": round_index, "rounds": plan.spec.loops, "step": step, "steps": plan.steps * plan.spec.loops})

    return report



def decode_frames(vae: nn.Module, latent: torch.Tensor, num_frames: int, *, tiling=None) -> torch.Tensor:
    """Decode (B, C, t, h, w) to (B, T, H, W, 3) float32 frames in 0..1.

    ``tiling=None`` decodes exactly as the official code and retries tiled on out-of-memory;
    a :class:`~opensora_core.vae.TilingOptions` decodes tiled from the start.
    """
    return frames_from_video(decode_video(vae, latent, num_frames, tiling=tiling))


def decode_video(vae: nn.Module, latent: torch.Tensor, num_frames: int, *, tiling=None) -> torch.Tensor:
    """Decode (B, C, t, h, w) to the VAE's raw (B, 3, T, H, W) output in about [-1, 1] (not clamped)."""
    if tiling is None:
        return decode_with_fallback(vae, latent, num_frames)
    return vae.decode(latent, num_frames, tiling=tiling)


def frames_from_video(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) float32 frames in 0..1 (clamped) on the CPU."""
    return torch.stack([media.from_model_range(v) for v in video.float().cpu()])



def decode_clips(vae: nn.Module, clips: Sequence[Clip], *, tiling=None) -> torch.Tensor:
    """Decode every clip (reusing frames a later round already decoded) and join them: (B, T, H, W, 3)."""
    parts = []
    for clip in clips:
        frames = clip.frames if clip.frames is not None else decode_frames(vae, clip.latent, clip.num_frames, tiling=tiling)
        parts.append(frames[:, clip.drop :])
    return torch.cat(parts, dim=1)

