"""Everything at once: prompts -> decoded video (:func:`generate`), or captions -> latent clips
(:func:`sample_video`, what the nodes' sampler runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..families import family_of
from ..sampling import GeneratorNoise, NoiseSource
from ..text.caption import Caption
from .plan import GenerationPlan, GenerationSpec, check_memory, check_vae_fits, plan_generation
from .stages import (
    Clip,
    Components,
    StepInfo,
    TextEncoder,
    check_caption_length,
    decode_clips,
    decode_memory_bytes,
    encode_conditions,
    encode_prompts,
    sample_clips,
)

log = logging.getLogger("opensora")


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
    noise: NoiseSource | None = None,
) -> GenerationResult:
    """Prompts -> decoded video. ``references``: (T, H, W, 3) frames (uint8 or 0..1), an image is T = 1.

    ``noise``: every random draw (reference encodes, then per round the start noise and the sampler's
    steps); default: a CPU generator seeded with ``spec.seed``.
    """
    plan = _checked_plan(components, spec, references)
    if components.text_encoder is None:
        raise ValueError("generate() needs a text encoder; pass Components(text_encoder=...)")
    with components.placement.use(_module_of(components.text_encoder)):
        captions = _encode_rounds(components, plan, plan.round_prompts)
        negatives = None
        if plan.negative_prompts is not None:  # the spec's, or the family's default negative prompt
            negatives = _encode_rounds(components, plan, [plan.negative_prompts] * spec.loops)
    clips = _sample_planned(components, plan, captions, references, negatives, tiling, callback, noise)
    with components.placement.use(components.vae, decode_memory_bytes(components.vae, clips, tiling=tiling)):
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
    noise: NoiseSource | None = None,
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
    clips = _sample_planned(components, plan, list(captions), references, negatives, tiling, callback, noise)
    return SampleResult(clips, plan)



def _checked_plan(components: Components, spec: GenerationSpec, references: Sequence[torch.Tensor]) -> GenerationPlan:
    family = family_of(components.model)
    check_vae_fits(family, components.vae.geometry)
    plan = plan_generation(family, spec, [int(r.shape[0]) for r in references])
    check_memory(plan, components.model)
    log.info("generating:\n%s", plan.describe())
    return plan



def _sample_planned(components, plan, captions, references, negatives, tiling, callback, noise) -> list[Clip]:
    noise = noise if noise is not None else GeneratorNoise.from_seed(int(plan.spec.seed))
    with components.placement.use(components.vae):
        conditions = encode_conditions(components.vae, plan, references, noise)
    return sample_clips(
        components, plan, captions, conditions, noise, negatives=negatives, tiling=tiling, callback=callback
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

