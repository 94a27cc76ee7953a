"""The stages of a generation, one function each: encode prompts, encode references, sample the loop
rounds, decode and join the clips (:func:`opensora_core.pipeline.generate` chains them; the nodes call
them one by one).

Randomness comes from one :class:`~opensora_core.sampling.NoiseSource` (by default a CPU ``torch.Generator``
seeded with ``spec.seed``: the same video on every device), drawn in the official order: reference
encodes, then per round the start noise (``Sampler.start_noise``: Open-Sora 2.0 draws it from its own
seeded generator, as the official code) and the sampler's per-step draws. Recorded draws
(:class:`~opensora_core.sampling.RecordedNoise`) replay a reference run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from .. import conditioning, media
from ..sampling import NoiseSource, ScheduleRequest
from ..text.caption import Caption
from ..vae import NoiseFn, decode_with_fallback
from ..vae.posterior import gaussian_noise
from .placement import Placement, StayPut
from .plan import GenerationPlan, check_device_memory


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
    """Raise unless ``caption`` has the model's caption length (None: any) and width (``model.caption_shape``)."""
    length, channels = model.caption_shape
    if length is not None and caption.max_length != length:
        raise ValueError(
            f"the text encoder gives {caption.max_length} tokens but {type(model).__name__} expects {length} "
            f"(model_max_length); set the T5 max length to {length}"
        )
    if caption.channels != channels:
        raise ValueError(
            f"the caption has {caption.channels} channels but {type(model).__name__} expects {channels} "
            f"(caption_channels); use the T5 the model was trained with (T5-XXL: 4096)"
        )



_DRAW_LIKE = torch.empty(0)  # draws are float32 on the CPU (a noise source's device), as the official CPU runs


def posterior_noise(noise: NoiseSource) -> NoiseFn:
    """The VAE posterior's ``NoiseFn`` drawing from ``noise`` (float32, the generator's stream)."""
    return lambda stage, shape: noise.draw(shape, _DRAW_LIKE)


def encode_references(
    vae: nn.Module, references: Sequence[torch.Tensor], height: int, width: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Open-Sora's reference encode (:func:`opensora_core.conditioning.encode_references`) with posterior
    draws from ``generator``: (C, t, h, w) float32 latents."""
    return conditioning.encode_references(vae, references, height, width, gaussian_noise(generator))


def encode_conditions(vae: nn.Module, plan: GenerationPlan, references: Sequence[torch.Tensor],
                      noise: NoiseSource) -> list[list[torch.Tensor]]:
    """Per sample, the references as the family's conditioning inserts them (``Conditioning.encode``: Open-Sora
    latents, Open-Sora-Plan inpainting channels, Open-Sora 2.0 reference clips); none without a conditioning."""
    family_conditioning, spec = plan.family.conditioning, plan.spec
    if family_conditioning is None:
        return [[] for _ in range(plan.batch_size)]
    return family_conditioning.encode(vae, references, plan.placements, height=spec.height, width=spec.width,
                                      num_frames=spec.num_frames, noise=posterior_noise(noise))


def encode_video(vae: nn.Module, video: torch.Tensor, noise: torch.Generator | NoiseSource) -> torch.Tensor:
    """Encode (B, 3, T, H, W) in about [-1, 1] as it is, sampling the posterior: (B, C, t, h, w) float32."""
    draw = gaussian_noise(noise) if isinstance(noise, torch.Generator) else posterior_noise(noise)
    return vae.encode(video, noise=draw).float()



def sample_clip(
    model: nn.Module,
    plan: GenerationPlan,
    caption: Caption,
    z: torch.Tensor,
    mask: torch.Tensor | None,
    noise: NoiseSource,
    *,
    negative: Caption | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """One clip from start latent ``z`` (B, C, t, h, w) with references already inserted."""
    sampler, spec = plan.family.sampler, plan.spec
    batch, device = z.shape[0], z.device
    args = model.model_args(batch, spec.height, spec.width, spec.num_frames, plan.fps, device=device)
    text, y_null, null_mask = caption.guidance_inputs(negative, model, device)
    denoiser = sampler.denoiser(
        model, text, y_null, args, scale=plan.cfg_scale, channels=sampler.guidance_channels, null_mask=null_mask,
        **plan.denoiser_options,
    )
    schedule = sampler.schedule(ScheduleRequest(plan.steps, spec.height, spec.width, spec.num_frames, model.dtype,
                                                **plan.schedule_options))
    return sampler.sample(denoiser, z, schedule, mask=mask, noise=noise, callback=callback)



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
    references: Sequence[Sequence[torch.Tensor]],
    noise: NoiseSource,
    *,
    negatives: Sequence[Caption | None] | None = None,
    tiling=None,
    callback: Callable[[StepInfo], None] | None = None,
) -> list[Clip]:
    """Run every loop round; ``captions[i]`` is round i's caption, ``references[b]`` sample b's encoded
    references (:func:`encode_conditions`)."""
    model, vae, place = components.model, components.vae, components.placement
    spec, clips = plan.spec, []
    refs = [list(sample) for sample in references]  # per sample; loop rounds append the previous clip
    for round_index in range(spec.loops):
        if round_index > 0:
            previous = clips[-1]
            with place.use(vae):  # append_generated: the decoded clip, not clamped, is encoded as it is
                video = decode_video(vae, previous.latent, spec.num_frames, tiling=tiling)  # (B, 3, T, H, W)
                previous.frames = frames_from_video(video)
                again = encode_video(vae, video, noise)  # (B, C, t, h, w)
            for b in range(plan.batch_size):
                refs[b].append(again[b])
        working = model.sampling_memory_bytes(plan.batch_size, plan.latent_size)  # activations of one step
        with place.use(model, working) as device:
            check_device_memory(plan, model, device)
            shape = (plan.batch_size, plan.geometry.latent_channels, *plan.latent_size)
            z = plan.family.sampler.start_noise(shape, spec.seed, noise, model.dtype).to(device)
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



def decode_memory_bytes(vae: nn.Module, clips: Sequence[Clip], *, tiling=None) -> int:
    """Working memory :func:`decode_clips` asks of the placement: the largest clip's decode (clips decode one
    after another; a clip a later round already decoded needs none), from the VAE's own shape model."""
    return max((vae.decode_memory_bytes(tuple(clip.latent.shape), clip.num_frames, tiling=tiling)
                for clip in clips if clip.frames is None), default=0)


def decode_clips(vae: nn.Module, clips: Sequence[Clip], *, tiling=None) -> torch.Tensor:
    """Decode every clip (reusing frames a later round already decoded) and join them: (B, T, H, W, 3)."""
    parts = []
    for clip in clips:
        frames = clip.frames if clip.frames is not None else decode_frames(vae, clip.latent, clip.num_frames, tiling=tiling)
        parts.append(frames[:, clip.drop :])
    return torch.cat(parts, dim=1)

