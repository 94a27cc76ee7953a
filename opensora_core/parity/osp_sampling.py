"""Parity handlers for the Open-Sora-Plan v1.3 sampling and condition cases.

* ``sampler_t2v_v1_3`` / ``sampler_i2v_v1_3``: the pipelines end to end from the stored token ids: tiny
  ``MT5EncoderModel`` -> :class:`~opensora_core.sampling.guidance.NegativePromptGuidance` around the tiny
  transformer (i2v: the sampler's ``mask`` is the condition our :mod:`opensora_core.conditioning.osp_inpaint`
  builds from the stored image, appended after the input scaling) -> Euler-ancestral steps with the
  recorded initial and ancestral noise. Compared: text embeddings, condition tensors, timesteps, sigmas,
  every trajectory step, the transformer inputs/outputs per step (per-step tolerances of the case).
* ``inpaint_cond_v1_3``: every mask type and image layout: pixel mask, masked pixels, latent mask (exact)
  and the masked latent (WF-VAE with the recorded posterior noise).

The referenced components (``../t2v_v1_3_forward`` weights, ``../wfvae_video`` VAE) are read from the case's
sibling folders, as the case configs name them.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch

from ..conditioning.osp_inpaint import (
    EncodeFn,
    build_inpaint_condition,
    inpaint_pixels,
    resize_condition_frames,
    resolve_mask_type,
)
from ..families import build_model
from ..sampling.core import RecordedNoise, SamplingInterrupted
from ..sampling.euler_ancestral import VPredictionDenoiser, euler_ancestral_schedule, sample_euler_ancestral
from ..sampling.guidance import NegativePromptGuidance
from ..text.caption import Caption
from ..text.t5 import encode_token_ids, encoder_class
from ..vae.osp import OpenSoraPlanVAE
from .runner import Case, Comparison, Handler

SIGMA_RTOL = 1e-6  # the float32 sigma table differs by a few ulps between CPUs (zero-SNR cancellation)
EMBED_TOLERANCE = (1e-5, 1e-4)  # dbg.prompt_embeds (README)
IMAGE_CONDITIONS = {"img_i2v": 1, "img_transition": 2, "img_3": 3}


# ---------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------


def _referenced_path(case: Case, description: str) -> Path:
    """The file a component description points to ("../x/weights.safetensors (not copied)")."""
    match = re.search(r"(\.\./[\w./-]+\.safetensors)", description)
    if match is None:
        raise ValueError(f"{case.name}: cannot find a weights path in {description!r}")
    path = (case.path / match[1]).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{case.name}: referenced weights {path} not found")
    return path


def _transformer(case: Case) -> torch.nn.Module:
    from safetensors.torch import load_file

    weights = _referenced_path(case, case.config["components"]["transformer"]["weights"])
    source = json.loads((weights.parent / "config.json").read_text())
    model = build_model(source["class"], source["constructor_kwargs"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.float().eval()


def _text_encoder(case: Case) -> torch.nn.Module:
    from safetensors.torch import load_file
    from transformers import MT5Config

    spec = case.config["components"]["text_encoder"]
    if spec.get("class") != "transformers.MT5EncoderModel":
        raise ValueError(f"{case.name}: unsupported text encoder {spec.get('class')!r}")
    model = encoder_class("mt5")(MT5Config(**spec["config"]))
    model.load_state_dict(load_file(str(case.path / "text_encoder.safetensors")), strict=True)
    return model.float().eval()


def wfvae_encoder(case: Case, description: str, posterior_noise: torch.Tensor) -> EncodeFn:
    """The WF-VAE wrapper's encode (posterior sample with the recorded ``posterior_noise``, then (z - shift) * scale)
    of the VAE a case references (built from that case's config.json, loaded strictly)."""
    from safetensors.torch import load_file

    weights = _referenced_path(case, description)
    source = json.loads((weights.parent / "config.json").read_text())
    vae = OpenSoraPlanVAE.from_official_config(source["class"], source["constructor_kwargs"])
    vae.vae.load_state_dict(load_file(str(weights)), strict=True)
    vae = vae.float().eval()
    return lambda pixels: vae.encode(pixels, noise=posterior_noise)


# ---------------------------------------------------------------------------
# Condition cases
# ---------------------------------------------------------------------------


def _is_condition_case(case: Case) -> bool:
    cfg = case.config
    return (isinstance(cfg.get("tags"), list) and "pipeline_settings" in cfg and "vae" in cfg
            and case.has("io.safetensors"))


def _tag_pixels(case: Case, tag: dict):
    io, T = case.io, tag["num_frames"]
    name = tag["tag"].split("_", 1)[1]
    if tag["condition"] == "images":
        count = IMAGE_CONDITIONS[name]
        frames = io[f"in.f{T}.images_uint8"][:count]
        mask_type, indices = resolve_mask_type("images", count, T, None, tag["conditional_pixel_values_indices"]
                                               if count > 2 else None)
    else:
        frames = io[f"in.f{T}.video_uint8"]
        mask_type, indices = resolve_mask_type("video", 1, T, name)
    seed = tag["python_random_seed"]
    rng = None if seed is None else random.Random(seed)
    return mask_type, inpaint_pixels(frames, T, mask_type, indices, rng=rng)


def _run_condition_case(case: Case) -> list[Comparison]:
    io, checks = case.io, []
    atol, rtol = case.tolerance("out.*.masked_latent")
    for tag in case.config["tags"]:
        name = tag["tag"]
        mask_type, pixels = _tag_pixels(case, tag)
        checks.append(Comparison(f"{name}.mask_type", mask_type.name, tag["mask_type_resolved"]))
        checks.append(Comparison(f"out.{name}.pixel_mask", pixels.pixel_mask, io[f"out.{name}.pixel_mask"]))
        checks.append(Comparison(f"out.{name}.masked_pixel_values", pixels.masked_pixels,
                                 io[f"out.{name}.masked_pixel_values"]))
        encode = wfvae_encoder(case, case.config["vae"]["weights"], io[f"rng.{name}.posterior_noise"])
        cond = build_inpaint_condition(pixels, encode)
        latent, mask = torch.cat([cond.masked_latent] * 2), torch.cat([cond.latent_mask] * 2)  # guidance halves
        checks.append(Comparison(f"out.{name}.latent_mask", mask, io[f"out.{name}.latent_mask"]))
        checks.append(Comparison(f"out.{name}.masked_latent", latent, io[f"out.{name}.masked_latent"], atol, rtol))
    return checks


# ---------------------------------------------------------------------------
# Sampler cases
# ---------------------------------------------------------------------------


def _is_sampler_case(case: Case) -> bool:
    components = case.config.get("components")
    return (
        isinstance(components, dict)
        and components.get("transformer", {}).get("class") in ("OpenSoraT2V_v1_3", "OpenSoraInpaint_v1_3")
        and isinstance(case.config.get("tags"), dict)
        and case.has("io.safetensors")
    )


class _Recorder:
    """The transformer, keeping every call's input and output."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.inputs, self.outputs = model, [], []

    def __call__(self, x, t, y, **kwargs):
        out = self.model(x, t, y, **kwargs)
        self.inputs.append(x)
        self.outputs.append(out)
        return out


def _captions(case: Case) -> tuple[Caption, Caption, list[Comparison]]:
    io, encoder = case.io, _text_encoder(case)
    positive = encode_token_ids(encoder, io["in.input_ids_pos"], io["in.attention_mask_pos"])
    negative = encode_token_ids(encoder, io["in.input_ids_neg"], io["in.attention_mask_neg"])
    checks = [
        Comparison("dbg.prompt_embeds", positive.y[:, 0], io["dbg.prompt_embeds"], *EMBED_TOLERANCE),
        Comparison("dbg.negative_prompt_embeds", negative.y[:, 0], io["dbg.negative_prompt_embeds"], *EMBED_TOLERANCE),
    ]
    return positive, negative, checks


def _i2v_condition(case: Case, posterior_noise: torch.Tensor, record: bool) -> tuple[torch.Tensor, list[Comparison]]:
    """(1, 12, t, h, w) condition channels from the stored image; comparisons of the recorded tensors."""
    io, inputs = case.io, case.config["inputs"]
    T, H, W = inputs["num_frames"], inputs["height"], inputs["width"]
    image = io["in.image_uint8_hwc"].permute(2, 0, 1)[None]  # (1, 3, h, w) uint8
    frames = resize_condition_frames([image], H, W, crop_for_hw=inputs["crop_for_hw"])
    mask_type, indices = resolve_mask_type("images", 1, T, inputs["mask_type"])
    pixels = inpaint_pixels(frames, T, mask_type, indices)
    encode = wfvae_encoder(case, case.config["components"]["vae"], posterior_noise)
    cond = build_inpaint_condition(pixels, encode)
    if not record:
        return cond.channels(), []
    atol, rtol = _step_tolerance(case, "n4", 0)
    checks = [
        Comparison("dbg.pixel_mask", pixels.pixel_mask, io["dbg.pixel_mask"]),
        Comparison("dbg.masked_pixel_values", pixels.masked_pixels, io["dbg.masked_pixel_values"]),
        Comparison("dbg.latent_mask", torch.cat([cond.latent_mask] * 2), io["dbg.latent_mask"]),
        Comparison("dbg.masked_latent", torch.cat([cond.masked_latent] * 2), io["dbg.masked_latent"], atol, rtol),
    ]
    return cond.channels(), checks


def _step_tolerance(case: Case, tag: str, step: int) -> tuple[float, float]:
    entry = case.config["recommended_tolerance"][f"out.{tag}.trajectory[k]"][step]
    return float(entry["atol"]), float(entry["rtol"])


def _sample_tag(case: Case, tag: str, model, positive: Caption, negative: Caption, condition) -> list[Comparison]:
    io, spec = case.io, case.config["tags"][tag]
    schedule = euler_ancestral_schedule(spec["num_inference_steps"])
    recorder = _Recorder(model)
    guided = NegativePromptGuidance(recorder, positive, negative, scale=case.config["inputs"]["guidance_scale"])
    states, executed = [], spec["executed_steps"]

    def keep(info: dict) -> None:
        states.append(info["x"])
        if info["i"] + 1 == executed < info["total"]:
            raise SamplingInterrupted()

    noise = RecordedNoise(list(io[f"rng.{tag}.step_noise"].unbind(0)))
    try:
        sample_euler_ancestral(VPredictionDenoiser(guided), io["in.initial_noise"], schedule, mask=condition,
                               noise=noise, callback=keep)
    except SamplingInterrupted:
        pass
    return _tag_checks(case, tag, schedule, states, recorder)


def _tag_checks(case: Case, tag: str, schedule, states: list, recorder: _Recorder) -> list[Comparison]:
    io, spec = case.io, case.config["tags"][tag]
    n = spec["executed_steps"]
    checks = [
        Comparison(f"{tag}.timesteps", schedule.timesteps[:n].tolist(), spec["timesteps"]),
        Comparison(f"{tag}.sigmas", schedule.sigmas[: len(spec["sigmas"])], torch.tensor(spec["sigmas"]), 0.0,
                   SIGMA_RTOL),
        Comparison(f"out.{tag}.latents", states[-1], io[f"out.{tag}.latents"], *case.tolerance(f"out.{tag}.latents")),
    ]
    for k in range(n):
        tol = _step_tolerance(case, tag, k)
        checks.append(Comparison(f"out.{tag}.trajectory[{k}]", states[k], io[f"out.{tag}.trajectory"][k], *tol))
        checks.append(Comparison(f"dbg.{tag}.model_input[{k}]", recorder.inputs[k], io[f"dbg.{tag}.model_input"][k],
                                 *tol))
        checks.append(Comparison(f"dbg.{tag}.model_output[{k}]", recorder.outputs[k], io[f"dbg.{tag}.model_output"][k],
                                 *tol))
    checks.append(Comparison(f"out.{tag}.trajectory", len(states), io[f"out.{tag}.trajectory"].shape[0]))
    return checks


def _run_sampler_case(case: Case) -> list[Comparison]:
    model = _transformer(case)
    positive, negative, checks = _captions(case)
    i2v = case.config["components"]["transformer"]["class"] == "OpenSoraInpaint_v1_3"
    for tag in case.config["tags"]:
        condition = None
        if i2v:
            condition, cond_checks = _i2v_condition(case, case.io[f"rng.{tag}.posterior_noise"], record=tag == "n4")
            checks += cond_checks
        checks += _sample_tag(case, tag, model, positive, negative, condition)
    return checks


HANDLERS = [
    Handler("osp-v1.3-sampler", _is_sampler_case, _run_sampler_case),
    Handler("osp-v1.3-inpaint-condition", _is_condition_case, _run_condition_case),
]
