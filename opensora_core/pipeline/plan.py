"""Planning a generation: the request (:class:`GenerationSpec`) checked into a :class:`GenerationPlan`.

Every input is checked before any heavy work: sizes and frame counts (the family's sampler says which
counts its schedule takes), loops, and the mask strategies, which are parsed once (when given as text)
and placed once by the family's conditioning; the plan keeps the placements, the per-round prompts and
the latent size for the stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
from ..families import Family, families
from ..geometry import LatentGeometry, check_frame_count
from ..text.prompts import loop_prompt_text, prepare_prompt

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
    fps: float  # the spec's, else the family default
    cfg_scale: float
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
    latent_size = family.geometry.latent_size(spec.num_frames, spec.height, spec.width)
    condition = spec.condition_frame_length or family.defaults.condition_frame_length
    drop = extension_drop_frames(condition, spec.num_frames, family.geometry) if spec.loops > 1 else 0
    placements = _plan_placements(family, spec, list(reference_frames), condition)
    return GenerationPlan(
        spec=spec,
        family=family,
        latent_size=latent_size,
        fps=family.defaults.fps if spec.fps is None else spec.fps,
        cfg_scale=family.defaults.cfg_scale if spec.cfg_scale is None else spec.cfg_scale,
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
    if spec.fps is not None and not spec.fps > 0:
        raise ValueError(f"fps must be positive, got {spec.fps}")



def _strategies(spec: GenerationSpec) -> list[Strategy]:
    """One strategy (text, groups or a task) per sample."""
    strategies = spec.mask_strategy
    if isinstance(strategies, str | Task) or all(isinstance(g, MaskGroup) for g in strategies):
        return [strategies if isinstance(strategies, str | Task) else list(strategies)] * len(spec.prompts)
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
                raise ValueError(
                    f"{family.model.class_name} ({family.title}) cannot be conditioned on reference frames"
                )
            per_sample.append([])
            continue
        groups = _groups(strategy, family, spec, reference_frames)
        per_sample.append(family.conditioning.place(
            groups, geometry=family.geometry, num_frames=spec.num_frames, reference_frames=reference_frames,
            loops=spec.loops, condition_frames=condition, condition_edit=spec.condition_frame_edit, align=spec.align,
        ))
    return per_sample



def _groups(strategy: Strategy, family: Family, spec: GenerationSpec, reference_frames: list[int]) -> list[MaskGroup]:
    if isinstance(strategy, str):
        return parse_mask_strategy(strategy, PIXEL if spec.pixel_positions else LATENT)
    if isinstance(strategy, Task):
        return strategy.groups(geometry=family.geometry, num_frames=spec.num_frames, ref_num_frames=reference_frames)
    return list(strategy)


def _round_prompts(family: Family, spec: GenerationSpec, round_index: int) -> list[str]:
    aesthetic = family.defaults.aesthetic_score if spec.aesthetic_score == "auto" else spec.aesthetic_score
    return [
        prepare_prompt(loop_prompt_text(p, round_index), aesthetic, spec.motion_score, spec.camera_motion, clean=spec.clean_prompts)
        for p in spec.prompts
    ]

