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
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from . import media
from .conditioning import (
    MaskGroup,
    PixelCondition,
    apply_mask_strategy,
    describe_mask_strategy,
    extension_drop_frames,
    parse_mask_strategy,
    pixel_conditions_to_groups,
    validate_mask_strategy,
)
from .geometry import PER_FRAME, VAE_V1_2, LatentGeometry, check_frame_count
from .model_args import multi_resolution_args
from .sampling import GeneratorNoise, GuidedModel, check_transform_frames, get_sampler, iddpm_schedule, rflow_schedule
from .text.caption import Caption, null_caption
from .text.prompts import loop_prompt_text, loop_segments, prepare_prompt

log = logging.getLogger("opensora")

# ---------------------------------------------------------------------------
# Model families: what each Open-Sora release does at inference
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFamily:
    """Inference defaults of one Open-Sora release (configs/opensora-v1-*/inference/sample.py)."""

    class_name: str
    release: str
    sampler: str  # "rflow" or "iddpm"
    steps: int
    cfg_channel: int | None  # output channels guided (None: all prediction channels)
    strategy_version: str  # mask-strategy semantics ("v1.1" or "v1.2")
    geometry: LatentGeometry  # of the VAE this model was trained with
    vae_name: str
    aesthetic_score: float | None  # appended to prompts by default
    condition_frame_length: int  # latent frames a loop round continues from
    frame_interval: int  # saved fps = fps / frame_interval
    conditioning: bool = True  # accepts reference frames (x_mask)
    size_args: bool = True  # takes height/width/fps/... model arguments
    schedule_precision: str = "float32"  # IDDPM respaced arrays: float32 torch (v1.1) or float64 numpy (v1.0)


FAMILIES: dict[str, ModelFamily] = {
    "STDiT3": ModelFamily("STDiT3", "v1.2", "rflow", 30, None, "v1.2", VAE_V1_2, "the Open-Sora VAE v1.2", 6.5, 5, 1),
    "STDiT2": ModelFamily("STDiT2", "v1.1", "iddpm", 100, 3, "v1.1", PER_FRAME, "an SD-VAE", None, 4, 3),
    "STDiT": ModelFamily(
        "STDiT", "v1.0", "iddpm", 100, 3, "v1.1", PER_FRAME, "an SD-VAE", None, 4, 3,
        conditioning=False, size_args=False, schedule_precision="float64",
    ),
}


def family_of(model: nn.Module) -> ModelFamily:
    name = getattr(model, "OFFICIAL_NAME", type(model).__name__)
    if name not in FAMILIES:
        raise ValueError(f"{name} is not an Open-Sora diffusion model; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_vae_fits(family: ModelFamily, vae_geometry: LatentGeometry) -> None:
    """Raise if the VAE is not the one the model was trained with (both have 4 latent channels)."""
    if vae_geometry != family.geometry:
        given = "the Open-Sora VAE v1.2" if vae_geometry == VAE_V1_2 else "an SD-VAE (per-frame image VAE)"
        raise ValueError(
            f"{family.class_name} (Open-Sora {family.release}) needs {family.vae_name}, but {given} was given; "
            f"load the VAE that belongs to the model"
        )


# ---------------------------------------------------------------------------
# What the user asks for
# ---------------------------------------------------------------------------


@dataclass
class GenerationSpec:
    """One generation request. Frame positions in ``mask_strategy`` are latent frames unless
    ``pixel_positions`` is set (then every number but loop_id/ref_id/edit_ratio is a pixel frame)."""

    prompts: list[str]  # one per sample; "|0|text|2|text" gives per-round texts
    height: int
    width: int
    num_frames: int
    fps: float = 24.0
    steps: int | None = None  # None: the family's default (30 / 100)
    cfg_scale: float = 7.0
    seed: int = 42
    mask_strategy: str | Sequence[str] = ""  # one for all samples, or one per sample
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
    """A checked request: sizes, steps and the per-round prompts and strategy groups."""

    spec: GenerationSpec
    family: ModelFamily
    latent_size: tuple[int, int, int]  # (t, h, w)
    steps: int
    condition_frames: int
    round_prompts: list[list[str]]  # [round][sample] final text given to T5
    groups: list[list[MaskGroup]]  # per sample: user groups + one continuation group per later round
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
        return self.spec.num_frames + (self.spec.loops - 1) * (self.spec.num_frames - self.drop_frames)

    @property
    def save_fps(self) -> float:
        return self.spec.save_fps or self.spec.fps / self.family.frame_interval

    def reference_latent_frames(self, round_index: int) -> list[int]:
        """Latent frames of every reference available in a round (user references, then earlier clips)."""
        user = [self.geometry.latent_frames(n) for n in self.reference_frames]
        return user + [self.latent_size[0]] * round_index

    def describe(self) -> str:
        """Readable summary: sizes, frames and where each condition lands."""
        t, h, w = self.latent_size
        spec = self.spec
        lines = [
            f"{self.family.class_name} ({self.family.release}), {self.family.sampler} {self.steps} steps, cfg {spec.cfg_scale}",
            f"{spec.num_frames} frames {spec.height}x{spec.width} -> latent {t}x{h}x{w}; "
            f"{spec.loops} round(s), {self.total_frames} frames at {self.save_fps:g} fps",
        ]
        for round_index in range(spec.loops):
            for b, groups in enumerate(self.groups):
                text = describe_mask_strategy(
                    groups, latent_frames=t, ref_latent_frames=self.reference_latent_frames(round_index),
                    loop_i=round_index, version=self.family.strategy_version, align=spec.align,
                    geometry=self.geometry, num_frames=spec.num_frames,
                )
                lines.append(f"round {round_index} sample {b}: " + text.replace("\n", f"\nround {round_index} sample {b}: "))
        return "\n".join(lines)


def plan_generation(family: ModelFamily, spec: GenerationSpec, reference_frames: Sequence[int] = ()) -> GenerationPlan:
    """Check ``spec`` for ``family`` (sizes, frames, strategies, loops) and fix the plan.

    ``reference_frames``: pixel frame count of each reference (1 for an image). Raises
    ``ValueError`` naming the input and the fix; nothing heavy has run yet.
    """
    _check_size(family, spec)
    check_frame_count(spec.num_frames)
    if family.sampler == "rflow":
        check_transform_frames(spec.num_frames)
    if spec.loops < 1:
        raise ValueError(f"loops must be >= 1, got {spec.loops}")
    _check_sampling(family, spec)
    _check_prompts(spec)
    latent_size = family.geometry.latent_size(spec.num_frames, spec.height, spec.width)
    condition = family.condition_frame_length if spec.condition_frame_length is None else spec.condition_frame_length
    drop = extension_drop_frames(condition, spec.num_frames, family.geometry) if spec.loops > 1 else 0
    groups = _plan_groups(family, spec, list(reference_frames), latent_size[0], condition)
    plan = GenerationPlan(
        spec=spec,
        family=family,
        latent_size=latent_size,
        steps=family.steps if spec.steps is None else spec.steps,
        condition_frames=condition,
        round_prompts=[_round_prompts(family, spec, i) for i in range(spec.loops)],
        groups=groups,
        reference_frames=list(reference_frames),
        drop_frames=drop,
    )
    check_memory(plan)
    return plan


def _check_size(family: ModelFamily, spec: GenerationSpec) -> None:
    f = family.geometry.spatial_factor
    if spec.height < 2 * f or spec.width < 2 * f:
        raise ValueError(f"size {spec.height}x{spec.width} (HxW) is too small; use at least {2 * f}x{2 * f} pixels")
    family.geometry.check_output_hw(spec.height, spec.width)
    _check_positive("fps", spec.fps)
    if spec.save_fps is not None:
        _check_positive("save_fps", spec.save_fps)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")


SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes without wrapping around
IDDPM_MAX_STEPS = 1000  # the respaced steps come from the 1000 training steps


def _check_sampling(family: ModelFamily, spec: GenerationSpec) -> None:
    """Numbers a sampler would take silently and turn into garbage (NaN, a wrapped seed, a skipped step)."""
    if not (math.isfinite(spec.cfg_scale) and spec.cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0 (official 7.0), got {spec.cfg_scale}")
    if isinstance(spec.seed, bool) or int(spec.seed) != spec.seed or not SEED_RANGE[0] <= spec.seed <= SEED_RANGE[1]:
        low, high = SEED_RANGE
        raise ValueError(f"seed must be an integer from {low} to {high} (2**64 - 1), got {spec.seed}")
    lowest, highest = (2, IDDPM_MAX_STEPS) if family.sampler == "iddpm" else (1, None)
    if spec.steps is not None and (spec.steps < lowest or (highest is not None and spec.steps > highest)):
        bounds = f"from {lowest} to {highest}" if highest else f">= {lowest}"
        raise ValueError(f"steps must be {bounds} for {family.class_name} ({family.sampler}), got {spec.steps}")
    if spec.condition_frame_length is not None and spec.condition_frame_length < 1:
        raise ValueError(f"condition_frame_length must be >= 1 latent frame, got {spec.condition_frame_length}")
    if not 0.0 <= spec.condition_frame_edit <= 1.0:
        raise ValueError(f"condition_frame_edit must be 0 (keep) .. 1 (regenerate), got {spec.condition_frame_edit}")
    if spec.align is not None and spec.align < 1:
        raise ValueError(f"align must be >= 1 latent frame (official v1.2: 5), or not given; got {spec.align}")
    for name in ("aesthetic_score", "motion_score"):
        value = getattr(spec, name)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")


def _check_prompts(spec: GenerationSpec) -> None:
    for index, prompt in enumerate(spec.prompts):
        if not all(text.strip() for _, text in loop_segments(prompt)):
            log.warning("prompt %d is empty (%r): the video follows no text", index, prompt)


def _strategies(spec: GenerationSpec) -> list[str]:
    strategies = spec.mask_strategy
    if isinstance(strategies, str):
        return [strategies] * len(spec.prompts)
    if len(strategies) != len(spec.prompts):
        raise ValueError(f"{len(strategies)} mask strategies for {len(spec.prompts)} prompts: give one, or one per prompt")
    return list(strategies)


def _plan_groups(family, spec, reference_frames, latent_frames, condition) -> list[list[MaskGroup]]:
    version = family.strategy_version
    ref_latents = [family.geometry.latent_frames(n) for n in reference_frames]
    per_sample = []
    for text in _strategies(spec):
        if (text.strip() or reference_frames) and not family.conditioning:
            raise ValueError(f"{family.class_name} (Open-Sora {family.release}) cannot be conditioned on reference frames")
        if reference_frames and not text.strip():
            raise ValueError(
                f"{len(reference_frames)} reference(s) given but the mask strategy is empty, so none would be used; "
                "give a mask strategy (e.g. '0': reference 0 as the first frame) or leave the references out"
            )
        groups = parse_mask_strategy(text)
        if spec.pixel_positions:
            conditions = [PixelCondition(g.ref_id, g.ref_start, g.target_start, g.length, g.edit_ratio, g.loop_id) for g in groups]
            groups = pixel_conditions_to_groups(
                conditions, geometry=family.geometry, num_frames=spec.num_frames, ref_num_frames=reference_frames
            )
        groups = validate_mask_strategy(
            groups, latent_frames=latent_frames, ref_latent_frames=ref_latents, version=version,
            align=spec.align, loops=spec.loops,
        )
        continuation = [
            MaskGroup(i, len(reference_frames) + i - 1, -condition, 0, condition, spec.condition_frame_edit)
            for i in range(1, spec.loops)
        ]
        per_sample.append(list(groups) + continuation)
    _warn_unused_references(per_sample, len(reference_frames))
    return per_sample


def _warn_unused_references(per_sample: list[list[MaskGroup]], references: int) -> None:
    used = {g.ref_id for groups in per_sample for g in groups}
    unused = [i for i in range(references) if i not in used]
    if unused:
        log.warning("reference(s) %s are not used by any mask-strategy group (ref_id counts from 0)", unused)


def _round_prompts(family: ModelFamily, spec: GenerationSpec, round_index: int) -> list[str]:
    aesthetic = family.aesthetic_score if spec.aesthetic_score == "auto" else spec.aesthetic_score
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
        yield _device_of(module)


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# ---------------------------------------------------------------------------
# Memory planning
# ---------------------------------------------------------------------------

SAMPLING_LIVE_COPIES = 3  # copies of the widest activation alive at once (input, MLP hidden, output): an estimate


def sampling_memory_bytes(model: nn.Module, batch_size: int, latent_size: tuple[int, int, int]) -> int:
    """Rough activation memory of one guided denoising step in bytes, for a memory manager to make room.

    The prompt and null-caption passes run as one batch of 2 x ``batch_size`` over every latent token;
    the widest activation is the MLP's (hidden x mlp_ratio) next to the block input, and attention runs
    through SDPA without materialising the scores. An estimate from the shapes, not calibrated on a GPU.
    """
    cfg = model.config
    tokens = math.prod(math.ceil(n / p) for n, p in zip(latent_size, cfg.patch_size, strict=True))
    width = cfg.hidden_size * (1 + cfg.mlp_ratio)
    element = torch.empty((), dtype=model.dtype).element_size()
    return int(2 * batch_size * tokens * width * element * SAMPLING_LIVE_COPIES)


def video_memory_bytes(plan: GenerationPlan) -> int:
    """Bytes of the finished video as float32 frames (B, T, H, W, 3), the result every caller receives."""
    height, width = plan.geometry.decoded_hw(plan.spec.height, plan.spec.width)
    return plan.batch_size * plan.total_frames * height * width * 3 * 4


def machine_memory_bytes() -> int | None:
    """The largest memory of this machine: RAM, or a GPU's if larger (None if the OS does not say)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        ram = 0
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return max([ram, *gpus]) or None


def check_memory(plan: GenerationPlan, model: nn.Module | None = None) -> None:
    """Refuse, before anything is allocated, a request that cannot fit in this machine's memory.

    Counts the finished video (float32 frames) and, with the model, one guided step's activations
    (:func:`sampling_memory_bytes`); each must fit in the largest memory of the machine.
    """
    available = machine_memory_bytes()
    if available is None:
        return
    needs = {"the decoded video (float32 frames)": video_memory_bytes(plan)}
    if model is not None:
        needs["one sampling step's activations"] = sampling_memory_bytes(model, plan.batch_size, plan.latent_size)
    for what, size in needs.items():
        if size > available:
            spec = plan.spec
            raise ValueError(
                f"{spec.num_frames} frames of {spec.height}x{spec.width} x {spec.loops} loop(s) cannot fit: {what} "
                f"needs about {size / 2**30:.1f} GiB but this machine has {available / 2**30:.1f} GiB; "
                "lower height/width, num_frames or loops"
            )


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
    """Encode prompts and check the caption length against the model's null caption."""
    caption = text_encoder.encode(list(prompts))
    check_caption_length(caption, model)
    return caption


def caption_length(model: nn.Module) -> int:
    """Caption tokens L the model takes (its ``model_max_length``: rows of the learned null caption)."""
    return int(model.y_embedder.y_embedding.shape[0])


def check_caption_length(caption: Caption, model: nn.Module) -> None:
    """Raise unless ``caption`` has the model's caption length and width."""
    length, channels = model.y_embedder.y_embedding.shape
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
    from .vae.posterior import gaussian_noise

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
    family, spec = plan.family, plan.spec
    batch, device = z.shape[0], z.device
    args = {}
    if family.size_args:
        args = multi_resolution_args(batch, (spec.height, spec.width), spec.num_frames, spec.fps, dtype=model.dtype, device=device)
    y_null = negative.y if negative is not None else null_caption(model.y_embedder.y_embedding, batch)
    guided = GuidedModel(
        model, _on(caption, device), y_null.to(device), args, scale=spec.cfg_scale, channels=family.cfg_channel,
        null_mask=None if negative is None else negative.mask.to(device),
    )
    if family.sampler == "rflow":
        schedule = rflow_schedule(
            plan.steps, height=spec.height, width=spec.width, num_frames=spec.num_frames, args_dtype=model.dtype
        )
    else:
        schedule = iddpm_schedule(plan.steps, precision=family.schedule_precision)
    return get_sampler(family.sampler)(guided, z, schedule, mask=mask, noise=noise, callback=callback)


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
        with place.use(model) as device:
            z = torch.randn((plan.batch_size, model.in_channels, *plan.latent_size), generator=generator).to(device)
            z, mask = _insert_references(plan, z, refs, round_index, device)
            negative = negatives[round_index] if negatives else None
            step_cb = _round_callback(callback, round_index, plan)
            latent = sample_clip(model, plan, captions[round_index], z, mask, noise, negative=negative, callback=step_cb)
        clips.append(Clip(latent.float(), spec.num_frames, plan.drop_frames if round_index else 0))
    return clips


def _insert_references(plan, z, refs, round_index, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not plan.family.conditioning:
        return z, None
    on_device = [[r.to(device) for r in sample_refs] for sample_refs in refs]
    return apply_mask_strategy(
        z, on_device, plan.groups, round_index, version=plan.family.strategy_version, align=plan.spec.align
    )


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
    from .vae import decode_with_fallback

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
    check_memory(plan, components.model)
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
