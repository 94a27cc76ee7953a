"""Samplers of Open-Sora: v1.2 rectified flow ("rflow") and v1.0/v1.1 IDDPM ("iddpm").

Typical use (v1.2; a family declares this pair as its ``Sampler``, see ``opensora_core.families``)::

    args = model.model_args(batch, h, w, frames, fps)
    guided = GuidedModel(model, caption, model.null_caption(batch), args, scale=7.0)
    times = rflow_schedule(30, height=h, width=w, num_frames=frames)
    z = sample_rflow(guided, z, times, mask=mask, noise=GeneratorNoise.from_seed(42), callback=cb)

Every sampler has the signature ``(model, x, schedule, *, mask, noise, callback) -> x``;
the schedule is a timestep tensor for "rflow" (:func:`rflow_schedule`) and a
:class:`SpacedSchedule` for "iddpm" (:func:`iddpm_schedule`). Reference frames given
by ``mask`` are handled by :mod:`.frames` for both.
"""

from __future__ import annotations

from collections.abc import Callable

from .core import (
    CALLBACK_KEYS,
    Denoiser,
    GeneratorNoise,
    NoiseSource,
    RecordedNoise,
    SamplingInterrupted,
    ScheduleRequest,
    StepCallback,
    stream_noise,
)
from .frames import FrameSets, IDDPMFrameRule, ReferenceFrames, RFlowFrameRule
from .guidance import CaptionLike, GuidedModel
from .iddpm import DIFFUSION_STEPS, SpacedSchedule, iddpm_schedule, linear_betas, sample_iddpm, space_timesteps
from .rflow import (
    check_transform_frames,
    rflow_schedule,
    rflow_timesteps,
    sample_rflow,
    timestep_transform,
    transform_shift,
)

# Official scheduler names (opensora registry) -> sampler.
SAMPLERS: dict[str, Callable] = {
    "rflow": sample_rflow,
    "iddpm": sample_iddpm,
}


def get_sampler(name: str) -> Callable:
    """The sampler registered under ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "CALLBACK_KEYS",
    "DIFFUSION_STEPS",
    "SAMPLERS",
    "CaptionLike",
    "Denoiser",
    "FrameSets",
    "GeneratorNoise",
    "GuidedModel",
    "IDDPMFrameRule",
    "NoiseSource",
    "RFlowFrameRule",
    "RecordedNoise",
    "ReferenceFrames",
    "SamplingInterrupted",
    "ScheduleRequest",
    "SpacedSchedule",
    "StepCallback",
    "check_transform_frames",
    "get_sampler",
    "iddpm_schedule",
    "linear_betas",
    "rflow_schedule",
    "rflow_timesteps",
    "sample_iddpm",
    "sample_rflow",
    "space_timesteps",
    "stream_noise",
    "timestep_transform",
    "transform_shift",
]
