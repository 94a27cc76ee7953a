"""Planning a generation: the request (:class:`GenerationSpec`) checked into a :class:`GenerationPlan`.

Every input is checked before any heavy work: sizes and frame counts (the family's sampler says which
counts its schedule takes), loops, and the mask strategies, which are parsed once (when given as text)
and placed once by the family's conditioning; the plan keeps the placements, the per-round prompts and
the latent size for the stages.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..conditioning import (
    LATENT,
    PIXEL,
    MaskGroup,
    PlacedGroup,
    Task,
    extension_drop_frames,
    extension_total_frames,
    parse_mask_strategy,
)
from ..families import Family, PromptSettings, families
from ..geometry import LatentGeometry, check_frame_count
from ..models.block_swap import resident_bytes
from ..text.prompts import apply_template, loop_prompt_text, loop_segments

log = logging.getLogger("opensora")

Strategy = str | Sequence[MaskGroup] | Task  # one sample's mask strategy


def check_vae_fits(family: Family, vae_geometry: LatentGeometry) -> None:
    """Raise if the VAE is not one the model was trained with (its latent geometry differs)."""
    if vae_geometry != family.geometry:
        given = next((f.vae_name for f in families() if f.geometry == vae_geometry), "a VAE of another latent geometry")
        raise ValueError(
            f"{family.model.class_name} ({family.title}) needs {family.vae_name}, but {given} was given; "
            f"load the VAE that belongs to the model"
        )



@dataclass
class GenerationSpec:
    """One generation request.

    ``mask_strategy``: one strategy for every sample, or one per sample; a strategy is text (parsed once,
    when the plan is made; its frame numbers are latent frames unless ``pixel_positions`` is set), already
    typed :class:`~.conditioning.MaskGroup` objects (which carry their own units), or a named
    :class:`~.conditioning.Task` (resolved with the clip length and the references)."""

    prompts: list[str]  # one per sample; "|0|text|2|text" gives per-round texts
    height: int
    width: int
    num_frames: int
    fps: float | None = None  # None: the family's default (24)
    steps: int | None = None  # None: the family's default (30 / 100)
    cfg_scale: float | None = None  # None: the family's default (7.0)
    seed: int = 42
    mask_strategy: Strategy | Sequence[Strategy] = ""
    pixel_positions: bool = False
    loops: int = 1
    condition_frame_length: int | None = None  # latent frames; None: family default (5 / 4)
    condition_frame_edit: float = 0.0
    align: int | None = None  # snap strategy starts to multiples of this (v1.2 sample config: 5)
    aesthetic_score: float | None | Literal["auto"] = "auto"  # "auto": 6.5 for v1.2, none before
    motion_score: float | str | None = "auto"  # "auto": the family default (2.0: 4; v1.x: none)
    camera_motion: str | None = None
    clean_prompts: bool = True  # Open-Sora's caption cleaning, where the family preprocesses prompts
    # one for all samples or one per sample; None: the family's default (Defaults.negative_prompt: Open-Sora-Plan's
    # release negative prompt, 2.0's empty prompt; v1.x: the model's learned null caption), as the official scripts
    negative_prompts: list[str] | None = None
    # "auto": the family's (Defaults.prompt_template: Open-Sora-Plan's), None: none, or a template with one "{}"
    prompt_template: str | None | Literal["auto"] = "auto"
    save_fps: float | None = None  # None: fps / frame_interval of the family
    # Options of some families only (None: the family default; refused for a family that does not take them,
    # see Defaults): 2.0 image guidance scale, guidance oscillation and condition type; v1.2 shift scale.
    image_cfg_scale: float | None = None
    oscillation: bool | None = None
    condition_type: str | None = None
    shift_scale: float | None = None

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
    fps: float  # the spec's, else the family default
    cfg_scale: float
    steps: int
    condition_frames: int | None  # None: the family has no loop mode
    round_prompts: list[list[str]]  # [round][sample] final text given to the text encoder
    placements: list[list[PlacedGroup]]  # per sample, placed once: user groups, then one continuation per later round
    reference_frames: list[int]  # pixel frames of each user reference
    drop_frames: int  # pixel frames each later clip drops when joined
    negative_prompts: list[str] | None = None  # per sample, encoded for guidance (None: the model's null caption)
    denoiser_options: dict = field(default_factory=dict)  # family options for the sampler's denoiser
    schedule_options: dict = field(default_factory=dict)  # family options for the sampler's schedule

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
        return self.spec.save_fps or self.fps / self.family.defaults.frame_interval

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
            f"cfg {self.cfg_scale}",
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
    _check_sampling(family, spec)
    _check_prompts(spec)
    latent_size = family.geometry.latent_size(spec.num_frames, spec.height, spec.width)
    condition = _given_or(spec.condition_frame_length, family.defaults.condition_frame_length)
    if spec.loops > 1 and condition is None:
        raise ValueError(f"{family.model.class_name} ({family.title}) has no loop (extension) mode: loops must be 1, "
                         f"got {spec.loops}")
    drop = extension_drop_frames(condition, spec.num_frames, family.geometry) if spec.loops > 1 else 0
    conditioning_options = family_options(family, spec, CONDITIONING_OPTIONS)
    placements = _plan_placements(family, spec, list(reference_frames), condition, conditioning_options)
    fps = _given_or(spec.fps, family.defaults.fps)
    plan = GenerationPlan(
        spec=spec,
        family=family,
        latent_size=latent_size,
        fps=fps,
        cfg_scale=_given_or(spec.cfg_scale, family.defaults.cfg_scale),
        steps=_given_or(spec.steps, family.defaults.steps),
        condition_frames=condition,
        round_prompts=[_round_prompts(family, spec, i, fps) for i in range(spec.loops)],
        placements=placements,
        reference_frames=list(reference_frames),
        drop_frames=drop,
        negative_prompts=_negative_prompts(family, spec),
        denoiser_options=family_options(family, spec, DENOISER_OPTIONS),
        schedule_options=family_options(family, spec, SCHEDULE_OPTIONS),
    )
    check_memory(plan)
    return plan


def place_references(family: Family, strategy: Strategy, *, height: int, width: int, num_frames: int,
                     reference_frames: Sequence[int], condition_type: str | None = None) -> list[PlacedGroup]:
    """One clip's reference placements (no loop rounds), checked as :func:`plan_generation` checks them; for
    a sampler outside the pipeline (ComfyUI's, on the native MODEL), which needs only the latent and its mask
    (Open-Sora 2.0: the condition). ``condition_type``: the family option of that name (2.0: i2v_head, ...)."""
    spec = GenerationSpec(prompts=["(references only)"], height=height, width=width, num_frames=num_frames,
                          mask_strategy=strategy, condition_type=condition_type)
    _check_size(family, spec)
    check_frame_count(num_frames)
    if family.sampler.check_frames is not None:
        family.sampler.check_frames(num_frames)
    condition = family.defaults.condition_frame_length
    options = family_options(family, spec, CONDITIONING_OPTIONS)
    return _plan_placements(family, spec, list(reference_frames), condition, options)[0]


def _given_or(value, default):
    """The request's value, else the family default; 0 is a value (checked), not "not given"."""
    return default if value is None else value


# Request fields only some families take (``Defaults`` says which: None there = not taken), by the component that
# receives them as keywords of the same name.
DENOISER_OPTIONS = ("image_cfg_scale", "oscillation")  # -> family.sampler.denoiser(...)
CONDITIONING_OPTIONS = ("condition_type",)  # -> family.conditioning.place(...)
SCHEDULE_OPTIONS = ("shift_scale",)  # -> ScheduleRequest(...) for family.sampler.schedule


def family_options(family: Family, spec: GenerationSpec, names: Sequence[str]) -> dict:
    """{name: the request's value, else the family default} for the options the family takes; a value given
    for an option the family does not take is refused."""
    options = {}
    for name in names:
        value, default = getattr(spec, name), getattr(family.defaults, name)
        if default is None and value is not None:
            raise ValueError(f"{name} is not an option of {family.title} ({family.model.class_name}); leave it out")
        if default is not None:
            options[name] = _given_or(value, default)
    return options


def _negative_prompts(family: Family, spec: GenerationSpec) -> list[str] | None:
    """One negative prompt per sample: the spec's (one for all, or one per prompt), else the family's default
    (``Defaults.negative_prompt``; None: the model's learned null caption)."""
    if spec.negative_prompts is not None:
        if len(spec.negative_prompts) not in (1, len(spec.prompts)):
            raise ValueError(f"{len(spec.negative_prompts)} negative prompts for {len(spec.prompts)} prompts: give "
                             "one, or one per prompt")
        return list(spec.negative_prompts) * (len(spec.prompts) // len(spec.negative_prompts))
    default = family.defaults.negative_prompt
    return None if default is None else [default] * len(spec.prompts)



def _check_size(family: Family, spec: GenerationSpec) -> None:
    f = family.geometry.spatial_factor
    if spec.height < 2 * f or spec.width < 2 * f:
        raise ValueError(f"size {spec.height}x{spec.width} (HxW) is too small; use at least {2 * f}x{2 * f} pixels")
    family.geometry.check_output_hw(spec.height, spec.width)
    if family.check_size is not None:
        family.check_size(spec.num_frames, spec.height, spec.width)
    for name in ("fps", "save_fps"):
        value = getattr(spec, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")


SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes without wrapping around


def _check_sampling(family: Family, spec: GenerationSpec) -> None:
    """Numbers a sampler would take silently and turn into garbage (NaN, a wrapped seed, a skipped step)."""
    if spec.cfg_scale is not None and not (math.isfinite(spec.cfg_scale) and spec.cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0 (official 7.0), got {spec.cfg_scale}")
    if isinstance(spec.seed, bool) or int(spec.seed) != spec.seed or not SEED_RANGE[0] <= spec.seed <= SEED_RANGE[1]:
        low, high = SEED_RANGE
        raise ValueError(f"seed must be an integer from {low} to {high} (2**64 - 1), got {spec.seed}")
    _check_steps(family, spec.steps)
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
    if spec.image_cfg_scale is not None and not (math.isfinite(spec.image_cfg_scale) and spec.image_cfg_scale >= 0):
        raise ValueError(f"image_cfg_scale must be a finite number >= 0 (official 3.0), got {spec.image_cfg_scale}")
    if spec.shift_scale is not None and not (math.isfinite(spec.shift_scale) and spec.shift_scale > 0):
        raise ValueError(f"shift_scale must be a finite number > 0 (official 1.0), got {spec.shift_scale}")


def _check_steps(family: Family, steps: int | None) -> None:
    """The step counts the family's sampler takes (``Sampler.step_range``; IDDPM respaces 1000 steps)."""
    lowest, highest = family.sampler.step_range
    if steps is not None and (steps < lowest or (highest is not None and steps > highest)):
        bounds = f"from {lowest} to {highest}" if highest else f">= {lowest}"
        raise ValueError(f"steps must be {bounds} for {family.model.class_name} ({family.sampler.name}), got {steps}")


def _check_prompts(spec: GenerationSpec) -> None:
    for index, prompt in enumerate(spec.prompts):
        if not all(text.strip() for _, text in loop_segments(prompt)):
            log.warning("prompt %d is empty (%r): the video follows no text", index, prompt)



def _strategies(spec: GenerationSpec) -> list[Strategy]:
    """One strategy (text, groups or a task) per sample."""
    strategies = spec.mask_strategy
    if isinstance(strategies, str | Task) or all(isinstance(g, MaskGroup) for g in strategies):
        return [strategies if isinstance(strategies, str | Task) else list(strategies)] * len(spec.prompts)
    if len(strategies) != len(spec.prompts):
        raise ValueError(f"{len(strategies)} mask strategies for {len(spec.prompts)} prompts: give one, or one per prompt")
    return list(strategies)



def _plan_placements(family: Family, spec: GenerationSpec, reference_frames: list[int],
                     condition: int | None, options: dict) -> list[list[PlacedGroup]]:
    """Per sample: its strategy parsed (when text), checked against the frame counts and placed, once."""
    per_sample = []
    for strategy in _strategies(spec):
        if family.conditioning is None:
            if (strategy.strip() if isinstance(strategy, str) else strategy) or reference_frames:
                raise ValueError(
                    f"{family.model.class_name} ({family.title}) cannot be conditioned on reference frames"
                )
            per_sample.append([])
            continue
        per_sample.append(family.conditioning.place(
            _typed(strategy, spec), geometry=family.geometry, num_frames=spec.num_frames,
            reference_frames=reference_frames, loops=spec.loops, condition_frames=condition,
            condition_edit=spec.condition_frame_edit, align=spec.align, **options,
        ))
    _warn_unused_references(per_sample, len(reference_frames))
    return per_sample


def _warn_unused_references(per_sample: list[list[PlacedGroup]], references: int) -> None:
    used = {placed.ref_id for placements in per_sample for placed in placements}
    unused = [i for i in range(references) if i not in used]
    if unused:
        log.warning("reference(s) %s are not used by any mask-strategy group (ref_id counts from 0)", unused)



def _typed(strategy: Strategy, spec: GenerationSpec) -> list[MaskGroup] | Task:
    """Text parsed once into groups (units from ``pixel_positions``); groups and named tasks as they are (the
    family's conditioning resolves a task with the clip length and the references)."""
    if isinstance(strategy, str):
        return parse_mask_strategy(strategy, PIXEL if spec.pixel_positions else LATENT)
    return strategy if isinstance(strategy, Task) else list(strategy)


def _round_prompts(family: Family, spec: GenerationSpec, round_index: int, fps: float) -> list[str]:
    """Round ``round_index``'s text of every prompt as the family prepares it (``Family.prepare_prompt``: score
    phrases, cleaning, frame rate), then wrapped in the prompt template (``Defaults.prompt_template``)."""
    settings = _prompt_settings(family, spec, fps)
    template = family.defaults.prompt_template if spec.prompt_template == "auto" else spec.prompt_template
    return [apply_template(family.prepare_prompt(loop_prompt_text(p, round_index), settings), template)
            for p in spec.prompts]


def _prompt_settings(family: Family, spec: GenerationSpec, fps: float) -> PromptSettings:
    """The request's score phrases resolved against the family defaults; a phrase the family was not trained
    with (``Family.takes_phrase``) is refused."""
    phrases = {
        "aesthetic_score": family.defaults.aesthetic_score if spec.aesthetic_score == "auto" else spec.aesthetic_score,
        "motion_score": family.defaults.motion_score if spec.motion_score == "auto" else spec.motion_score,
        "camera_motion": spec.camera_motion,
    }
    refused = [name for name, value in phrases.items() if value is not None and not family.takes_phrase(name)]
    if refused:
        what = " or ".join(name.replace("_", " ") for name in refused)
        raise ValueError(f"{', '.join(refused)}: {family.title} prompts take no {what} (the model was not trained "
                         "with score phrases for them); leave them out")
    return PromptSettings(fps=fps, clean=spec.clean_prompts, **phrases)


# ---------------------------------------------------------------------------
# Memory: refused before anything is allocated
# ---------------------------------------------------------------------------


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
    (``model.sampling_memory_bytes``); each must fit in the largest memory of the machine.
    """
    available = machine_memory_bytes()
    if available is None:
        return
    needs = {"the decoded video (float32 frames)": video_memory_bytes(plan)}
    if model is not None:
        needs["one sampling step's activations"] = model.sampling_memory_bytes(plan.batch_size, plan.latent_size)
    for what, size in needs.items():
        if size > available:
            spec = plan.spec
            raise ValueError(
                f"{spec.num_frames} frames of {spec.height}x{spec.width} x {spec.loops} loop(s) cannot fit: {what} "
                f"needs about {size / 2**30:.1f} GiB but this machine has {available / 2**30:.1f} GiB; "
                "lower height/width, num_frames or loops"
            )


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None for other devices (the CPU's RAM is :func:`check_memory`'s)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def check_device_memory(plan: GenerationPlan, model: nn.Module, device: torch.device | str) -> None:
    """Refuse, before sampling, a request whose weights on ``device`` plus one step's working memory
    (``model.sampling_memory_bytes``, a shape-based estimate) exceed the device's memory."""
    total = device_memory_bytes(torch.device(device))
    if total is None:
        return
    weights = resident_bytes(model)
    working = model.sampling_memory_bytes(plan.batch_size, plan.latent_size)
    if weights + working > total:
        spec, gib = plan.spec, 2**30
        raise ValueError(
            f"{spec.num_frames} frames of {spec.height}x{spec.width} (batch {plan.batch_size}) cannot fit on {device}: "
            f"about {(weights + working) / gib:.1f} GiB (weights on the device {weights / gib:.1f} GiB + one step "
            f"{working / gib:.1f} GiB, an estimate from the shapes) of {total / gib:.1f} GiB; lower the size, the "
            "frames or the batch, or keep fewer weights on the device (fp8 weights, block swap) where the model has them"
        )
