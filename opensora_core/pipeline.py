"""The one generation path: prompts, size, references and a mask strategy -> latents -> frames.

The ComfyUI nodes, the ``opensora-generate`` command line and the trainer's validation
samples all run this code. :func:`generate` chains the stages; the nodes call them
one by one (text encoding, sampling and decoding are separate nodes there):

1. :func:`plan_generation` checks every input before any heavy work and fixes the
   per-round prompts and mask-strategy groups (:class:`GenerationPlan`);
2. :func:`encode_prompts` turns each round's prompts into a caption;
3. :func:`encode_references` fits reference images/videos to the output size and
   encodes them with the VAE;
4. :func:`sample_clips` runs the loop rounds: draw noise, insert references, sample;
   from the second round on, the previous clip is decoded and encoded again and its
   last ``condition_frame_length`` latent frames start the new clip (official loop mode);
5. :func:`decode_clips` decodes every clip and joins them, dropping the frames a clip
   shares with the one before.

Randomness comes from one CPU ``torch.Generator`` seeded with ``spec.seed`` (the same
video on every device), drawn in the official order: reference encodes, then per
round the start noise and the sampler's per-step draws.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from . import media
from .conditioning import (
    LATENT,
    PIXEL,
    MaskGroup,
    PlacedGroup,
    extension_drop_frames,
    extension_total_frames,
    insert_references,
    parse_mask_strategy,
)
from .families import Family, families, family_of
from .geometry import LatentGeometry, check_frame_count
from .sampling import GeneratorNoise, ScheduleRequest
from .text.caption import Caption
from .text.prompts import loop_prompt_text, prepare_prompt

log = logging.getLogger("opensora")

def check_vae_fits(family: Family, vae_geometry: LatentGeometry) -> None:
    """Raise if the VAE is not one the model was trained with (its latent geometry differs)."""
    if vae_geometry != family.geometry:
        given = next((f.vae_name for f in families() if f.geometry == vae_geometry), "a VAE of another latent geometry")
        raise ValueError(
            f"{family.model.class_name} ({family.title}) needs {family.vae_name}, but {given} was given; "
            f"load the VAE that belongs to the model"
        )


# ---------------------------------------------------------------------------
# What the user asks for
# ---------------------------------------------------------------------------


@dataclass
class GenerationSpec:
    """One generation request.

    ``mask_strategy``: one strategy for every sample, or one per sample; a strategy is text (parsed once,
    when the plan is made; its frame numbers are latent frames unless ``pixel_positions`` is set) or
    already typed :class:`~.conditioning.MaskGroup` objects, which carry their own units."""

    prompts: list[str]  # one per sample; "|0|text|2|text" gives per-round texts
    height: int
    width: int
    num_frames: int
    fps: float = 24.0
    steps: int | None = None  # None: the family's default (30 / 100)
    cfg_scale: float = 7.0
    seed: int = 42
    mask_strategy: str | Sequence[MaskGroup] | Sequence[str | Sequence[MaskGroup]] = ""
    pixel_positions: bool = False
    loops: int = 1
    condition_frame_length: int | None = None  # latent frames; None: family default (5 / 4)
    condition_frame_edit: float = 0.0
    align: int | None = None  # snap strategy starts to multiples of this (v1.2 sample config: 5)
    aesthetic_score: float | None | Literal["auto"] = "auto"  # "auto": 6.5 for v1.2, none before
    motion_score: float | None = None
    camera_motion: str | None = None
    clean_prompts: bool = True
    negative_prompts: list[str] | None = None  # None: the model's learned null caption (official)
    save_fps: float | None = None  # None: fps / frame_interval of the family

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not self.prompts:
            raise ValueError("prompts must hold at least one prompt")


@dataclass
class GenerationPlan:
    """A checked request: sizes, steps, the per-round prompts and where every reference group lands."""

    spec: GenerationSpec
    family: Family
    latent_size: tuple[int, int, int]  # (t, h, w)
    steps: int
    condition_frames: int
    round_prompts: list[list[str]]  # [round][sample] final text given to T5
    placements: list[list[PlacedGroup]]  # per sample, placed once: user groups, then one continuation per later round
    reference_frames: list[int]  # pixel frames of each user reference
    drop_frames: int  # pixel frames each later clip drops when joined

    @property
    def batch_size(self) -> int:
        return len(self.spec.prompts)

    @property
    def geometry(self) -> LatentGeometry:
        return self.family.geometry

    @property
    def total_frames(self) -> int:
        return extension_total_frames(self.spec.num_frames, self.spec.loops, self.condition_frames, self.geometry)

    @property
    def save_fps(self) -> float:
        return self.spec.save_fps or self.spec.fps / self.family.defaults.frame_interval

    @property
    def groups(self) -> list[list[MaskGroup]]:
        """Per sample, the latent groups as written (before alignment and clipping)."""
        return [[placed.group for placed in sample] for sample in self.placements]

    def describe(self) -> str:
        """Readable summary: sizes, frames and where each condition lands."""
        t, h, w = self.latent_size
        spec = self.spec
        lines = [
            f"{self.family.model.class_name} ({self.family.release}), {self.family.sampler.name} {self.steps} steps, "
            f"cfg {spec.cfg_scale}",
            f"{spec.num_frames} frames {spec.height}x{spec.width} -> latent {t}x{h}x{w}; "
            f"{spec.loops} round(s), {self.total_frames} frames at {self.save_fps:g} fps",
        ]
        conditioning = self.family.conditioning
        for round_index in range(spec.loops if conditioning is not None else 0):
            for b, placements in enumerate(self.placements):
                text = conditioning.describe(placements, loop_i=round_index, geometry=self.geometry,
                                             num_frames=spec.num_frames)
                lines.append(f"round {round_index} sample {b}: " + text.replace("\n", f"\nround {round_index} sample {b}: "))
        return "\n".join(lines)


def plan_generation(family: Family, spec: GenerationSpec, reference_frames: Sequence[int] = ()) -> GenerationPlan:
    """Check ``spec`` for ``family`` (sizes, frames, strategies, loops) and fix the plan.

    ``reference_frames``: pixel frame count of each reference (1 for an image). Raises
    ``ValueError`` naming the input and the fix; nothing heavy has run yet.
    """
    _check_size(family, spec)
    check_frame_count(spec.num_frames)
    if family.sampler.check_frames is not None:
        family.sampler.check_frames(spec.num_frames)
    if spec.loops < 1:
        raise ValueError(f"loops must be >= 1, got {spec.loops}")
    latent_size = family.geometry.latent_size(spec.num_frames, spec.height, spec.width)
    condition = spec.condition_frame_length or family.defaults.condition_frame_length
    drop = extension_drop_frames(condition, spec.num_frames, family.geometry) if spec.loops > 1 else 0
    placements = _plan_placements(family, spec, list(reference_frames), condition)
    return GenerationPlan(
        spec=spec,
        family=family,
        latent_size=latent_size,
        steps=spec.steps or family.defaults.steps,
        condition_frames=condition,
        round_prompts=[_round_prompts(family, spec, i) for i in range(spec.loops)],
        placements=placements,
        reference_frames=list(reference_frames),
        drop_frames=drop,
    )


def _check_size(family: Family, spec: GenerationSpec) -> None:
    f = family.geometry.spatial_factor
    if spec.height < 2 * f or spec.width < 2 * f:
        raise ValueError(f"size {spec.height}x{spec.width} (HxW) is too small; use at least {2 * f}x{2 * f} pixels")
    if not spec.fps > 0:
        raise ValueError(f"fps must be positive, got {spec.fps}")


def _strategies(spec: GenerationSpec) -> list[str | list[MaskGroup]]:
    """One strategy (text or groups) per sample."""
    strategies = spec.mask_strategy
    if isinstance(strategies, str) or all(isinstance(g, MaskGroup) for g in strategies):
        return [strategies if isinstance(strategies, str) else list(strategies)] * len(spec.prompts)
    if len(strategies) != len(spec.prompts):
        raise ValueError(f"{len(strategies)} mask strategies for {len(spec.prompts)} prompts: give one, or one per prompt")
    return list(strategies)


def _plan_placements(family: Family, spec: GenerationSpec, reference_frames: list[int],
                     condition: int) -> list[list[PlacedGroup]]:
    """Per sample: its strategy parsed (when text), checked against the frame counts and placed, once."""
    per_sample = []
    for strategy in _strategies(spec):
        if family.conditioning is None:
            if (strategy.strip() if isinstance(strategy, str) else strategy) or reference_frames:
                raise ValueError(f"{family.model.class_name} ({family.title}) cannot be conditioned on reference frames")
            per_sample.append([])
            continue
        groups = parse_mask_strategy(strategy, PIXEL if spec.pixel_positions else LATENT) if isinstance(
            strategy, str) else strategy
        per_sample.append(family.conditioning.place(
            groups, geometry=family.geometry, num_frames=spec.num_frames, reference_frames=reference_frames,
            loops=spec.loops, condition_frames=condition, condition_edit=spec.condition_frame_edit, align=spec.align,
        ))
    return per_sample


def _round_prompts(family: Family, spec: GenerationSpec, round_index: int) -> list[str]:
    aesthetic = family.defaults.aesthetic_score if spec.aesthetic_score == "auto" else spec.aesthetic_score
    return [
        prepare_prompt(loop_prompt_text(p, round_index), aesthetic, spec.motion_score, spec.camera_motion, clean=spec.clean_prompts)
        for p in spec.prompts
    ]


# ---------------------------------------------------------------------------
# Devices: where each module runs while it is used
# ---------------------------------------------------------------------------


class Placement(Protocol):
    """Moves a module to its compute device for a stage and back (ComfyUI's memory manager in the nodes)."""

    def use(self, module: nn.Module) -> contextlib.AbstractContextManager[torch.device]: ...


class StayPut:
    """Default placement: modules stay where the caller put them."""

    @contextlib.contextmanager
    def use(self, module: nn.Module) -> Iterator[torch.device]:
        yield device_of(module)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s weights are (the CPU for a module without weights)."""
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

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
    """Fit each reference (T, H, W, 3) to the output size and encode it: (C, t, h, w) float32 latents.

    Images are resized with bicubic and videos with bilinear filtering to cover the
    size, then centre-cropped (opensora/datasets/utils.py); the VAE samples its posterior.
    """
    from .vae.posterior import gaussian_noise

    fit_h, fit_w = vae.geometry.decoded_hw(height, width)
    latents = []
    for frames in references:
        mode = "bicubic" if frames.shape[0] == 1 else "bilinear"
        fitted = media.resize_cover_crop(frames, fit_h, fit_w, mode=mode)
        x = media.to_model_range(fitted).unsqueeze(0)  # (1, 3, T, H, W)
        z = vae.encode(x, noise=gaussian_noise(generator))
        latents.append(z[0].float())  # (C, t, h, w)
    return latents


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
    args = model.model_args(batch, spec.height, spec.width, spec.num_frames, spec.fps, device=device)
    y_null = negative.y if negative is not None else model.null_caption(batch)
    denoiser = sampler.denoiser(
        model, _on(caption, device), y_null.to(device), args, scale=spec.cfg_scale, channels=sampler.guidance_channels,
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
            with place.use(vae):
                previous.frames = decode_frames(vae, previous.latent, spec.num_frames, tiling=tiling)
                again = encode_references(vae, list(previous.frames), spec.height, spec.width, generator)
            for b in range(plan.batch_size):
                refs[b].append(again[b])
        with place.use(model) as device:
            z = torch.randn((plan.batch_size, model.in_channels, *plan.latent_size), generator=generator).to(device)
            z, mask = _insert_references(plan, z, refs, round_index, device)
            negative = negatives[round_index] if negatives else None
            step_cb = _round_callback(callback, round_index, plan)
            latent = sample_clip(model, plan, captions[round_index], z, mask, noise, negative=negative, callback=step_cb)
        clips.append(Clip(latent.float(), spec.num_frames, plan.drop_frames if round_index else 0))
    return clips


def _insert_references(plan, z, refs, round_index, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if plan.family.conditioning is None:
        return z, None
    on_device = [[r.to(device) for r in sample_refs] for sample_refs in refs]
    placed = [[p for p in sample if p.group.loop_id == round_index] for sample in plan.placements]
    return insert_references(z, on_device, placed)


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
    from .vae import decode_with_fallback

    if tiling is None:
        video = decode_with_fallback(vae, latent, num_frames)  # (B, 3, T, H, W) in about [-1, 1]
    else:
        video = vae.decode(latent, num_frames, tiling=tiling)
    return torch.stack([media.from_model_range(v) for v in video.float().cpu()])


def decode_clips(vae: nn.Module, clips: Sequence[Clip], *, tiling=None) -> torch.Tensor:
    """Decode every clip (reusing frames a later round already decoded) and join them: (B, T, H, W, 3)."""
    parts = []
    for clip in clips:
        frames = clip.frames if clip.frames is not None else decode_frames(vae, clip.latent, clip.num_frames, tiling=tiling)
        parts.append(frames[:, clip.drop :])
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------


@dataclass
class GenerationResult:
    frames: torch.Tensor  # (B, T, H, W, 3) float32 in 0..1
    fps: float  # frames per second to save at
    clips: list[Clip]
    plan: GenerationPlan


def generate(
    components: Components,
    spec: GenerationSpec,
    references: Sequence[torch.Tensor] = (),
    *,
    tiling=None,
    callback: Callable[[StepInfo], None] | None = None,
) -> GenerationResult:
    """Prompts -> decoded video. ``references``: (T, H, W, 3) frames (uint8 or 0..1), an image is T = 1."""
    plan = _checked_plan(components, spec, references)
    if components.text_encoder is None:
        raise ValueError("generate() needs a text encoder; pass Components(text_encoder=...)")
    with components.placement.use(_module_of(components.text_encoder)):
        captions = _encode_rounds(components, plan, plan.round_prompts)
        negatives = None
        if spec.negative_prompts is not None:
            negatives = _encode_rounds(components, plan, [list(spec.negative_prompts)] * spec.loops)
    clips = _sample_planned(components, plan, captions, references, negatives, tiling, callback)
    with components.placement.use(components.vae):
        frames = decode_clips(components.vae, clips, tiling=tiling)
    return GenerationResult(frames, plan.save_fps, clips, plan)


@dataclass
class SampleResult:
    clips: list[Clip]  # one per loop round, not decoded (except those a later round needed)
    plan: GenerationPlan


def sample_video(
    components: Components,
    spec: GenerationSpec,
    captions: Sequence[Caption],
    references: Sequence[torch.Tensor] = (),
    *,
    negatives: Sequence[Caption] | None = None,
    tiling=None,
    callback: Callable[[StepInfo], None] | None = None,
) -> SampleResult:
    """Already encoded captions -> latent clips: :func:`generate` without text encoding and final decode.

    ``captions[i]`` / ``negatives[i]`` are round i's captions (one per loop round; ``spec.prompts`` only
    labels the request). Everything is checked (:func:`plan_generation`, caption lengths) before the
    VAE or the model runs.
    """
    plan = _checked_plan(components, spec, references)
    for name, given in (("captions", captions), ("negatives", negatives)):
        if given is None:
            continue
        if len(given) != spec.loops:
            raise ValueError(f"{len(given)} {name} for {spec.loops} loop round(s); give one caption per round")
        for caption in given:
            check_caption_length(caption, components.model)
            if caption.batch_size != plan.batch_size:
                raise ValueError(f"{name}: a caption holds {caption.batch_size} prompt(s) for {plan.batch_size} sample(s)")
    clips = _sample_planned(components, plan, list(captions), references, negatives, tiling, callback)
    return SampleResult(clips, plan)


def _checked_plan(components: Components, spec: GenerationSpec, references: Sequence[torch.Tensor]) -> GenerationPlan:
    family = family_of(components.model)
    check_vae_fits(family, components.vae.geometry)
    plan = plan_generation(family, spec, [int(r.shape[0]) for r in references])
    log.info("generating:\n%s", plan.describe())
    return plan


def _sample_planned(components, plan, captions, references, negatives, tiling, callback) -> list[Clip]:
    generator = torch.Generator().manual_seed(int(plan.spec.seed))
    with components.placement.use(components.vae):
        ref_latents = encode_references(components.vae, references, plan.spec.height, plan.spec.width, generator)
    return sample_clips(
        components, plan, captions, ref_latents, generator, negatives=negatives, tiling=tiling, callback=callback
    )


def _encode_rounds(components: Components, plan: GenerationPlan, round_prompts: list[list[str]]) -> list[Caption]:
    cache: dict[tuple[str, ...], Caption] = {}
    captions = []
    for prompts in round_prompts:
        key = tuple(prompts)
        if key not in cache:
            cache[key] = encode_prompts(components.text_encoder, prompts, components.model)
        captions.append(cache[key])
    return captions


def _module_of(text_encoder: TextEncoder) -> nn.Module:
    """The module to place while encoding (a T5TextEncoder's ``model``); an empty one if there is none."""
    module = getattr(text_encoder, "model", text_encoder)
    return module if isinstance(module, nn.Module) else nn.Module()
