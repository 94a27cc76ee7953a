"""Parity handlers for Open-Sora 2.0: the MMDiT forward, the sampler (``api_fn``) and the logic tables.

* ``mmdit_forward``: built with :func:`opensora_core.models.build_model`, strict load, every tag of the case
  run with the recorded call; the packed inputs, position ids and condition are also rebuilt from the raw
  latent / reference with our :func:`pack`, :func:`position_ids` and :func:`build_condition` and compared.
* ``sampler_*``: our :func:`sample_v2` (:class:`ThreePassGuidance` around the model) with the recorded noise ``rng.z`` (also redrawn from the seed and
  compared), text tables looked up per prompt, the reference latents; compares the schedule, every model
  call's inputs/outputs (``trace.*``) and ``out.latent``.

The logic tables (``tables``) are in :mod:`.v2_tables`.
"""

from __future__ import annotations

import re

import torch

from ..conditioning.v2 import build_condition, check_cond_type
from ..geometry.opensora_v2 import latent_shape, sampling_size
from ..families import build_model
from ..models.mmdit import pack, position_ids
from ..models.mmdit_layers import rope_tables
from ..sampling.v2 import GuidanceV2, ThreePassGuidance, get_noise, get_schedule, sample_v2
from ..text.v2 import TextV2
from .runner import Case, Comparison, Handler

RELEASED_HEAD_DIM, RELEASED_AXES, RELEASED_THETA = 128, (16, 56, 56), 10000
TIMESTEP_ATOL = 1e-7  # the schedule is a float32 computation done the same way: exact up to rounding


def _tolerance(case: Case, key: str) -> tuple[float, float]:
    tol = case.config.get("recommended_tolerance", {})
    return case.tolerance(key) if isinstance(tol.get(key), dict) else case.tolerance()


# ==================================================================================================
# MMDiT forward
# ==================================================================================================


def _is_forward(case: Case) -> bool:
    cfg = case.config
    call = cfg.get("call")
    return (
        cfg.get("class") == "MMDiTModel" and isinstance(cfg.get("constructor_kwargs"), dict)
        and isinstance(call, dict) and str(call.get("method", "")).startswith("forward") and case.has("io.safetensors")
    )


def _run_forward(case: Case) -> list[Comparison]:
    cfg, io = case.config, case.io
    model = build_model("MMDiTModel", cfg["constructor_kwargs"])
    model.load_state_dict(case.weights, strict=True)
    model.eval()
    atol, rtol = case.tolerance()
    checks = _forward_inputs(case)
    for tag in _forward_tags(case):
        kwargs = {name: io[key] for name, key in _forward_call(cfg["call"], tag).items()}
        out = model(**kwargs)
        checks.append(Comparison(f"out.{tag}.output", out, io[f"out.{tag}.output"], atol, rtol))
    if "out.rope_released.cos" in io:
        cos, sin = rope_tables(io["in.rope_released.ids"], RELEASED_AXES, RELEASED_THETA)
        checks += [Comparison("out.rope_released.cos", cos, io["out.rope_released.cos"], 1e-6, 0.0),
                   Comparison("out.rope_released.sin", sin, io["out.rope_released.sin"], 1e-6, 0.0)]
    return checks


def _forward_tags(case: Case) -> list[str]:
    tags = case.config.get("tags") or {}
    return [t for t in tags if f"out.{t}.output" in case.io]


def _forward_call(call: dict, tag: str) -> dict[str, str]:
    """{argument: io key} of the recorded call (``in.<tag>.cond`` resolved for the tag)."""
    keys = {}
    for name, key in call["keyword_tensors"].items():
        key = key.split(" ")[0].replace("<tag>", tag)
        keys[name] = key
    return keys


def _forward_inputs(case: Case) -> list[Comparison]:
    """Our packing, ids and condition from the raw latent / reference, against the recorded inputs."""
    io, checks = case.io, []
    if "in.z_unpacked" not in io:
        return checks
    z = io["in.z_unpacked"]
    B, _, T, H, W = z.shape
    checks.append(Comparison("in.img", pack(z), io["in.img"]))
    checks.append(Comparison("in.img_ids", position_ids(B, T, H, W), io["in.img_ids"]))
    for tag, spec in (case.config.get("tags") or {}).items():
        if f"in.{tag}.cond" not in io:
            continue
        cond_type = spec.get("cond_type_for_masks", "t2v")
        refs = None if cond_type == "t2v" else [[r] for r in io["in.ref_latent"]]
        condition = build_condition(z, cond_type, refs)
        checks += [
            Comparison(f"in.{tag}.masks", condition.masks, io[f"in.{tag}.masks"]),
            Comparison(f"in.{tag}.masked_ref", condition.masked_ref, io[f"in.{tag}.masked_ref"]),
            Comparison(f"in.{tag}.cond", pack(torch.cat((condition.masks, condition.masked_ref), 1)),
                       io[f"in.{tag}.cond"]),
        ]
    return checks


# ==================================================================================================
# Sampler (prepare_api -> api_fn)
# ==================================================================================================


def _is_sampler(case: Case) -> bool:
    cfg = case.config
    return str(cfg.get("function", "")).startswith("opensora.utils.sampling.prepare_api") and case.has("io.safetensors")


class _Recorder:
    """Wraps the model; keeps each call's keyword inputs and output."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.calls.append({**kwargs, "out": out})
        return out


def _api_arguments(cfg: dict) -> dict:
    """seed / patch_size / channel of the recorded ``api_fn(...)`` call."""
    found = {}
    for name, default in (("seed", None), ("patch_size", 2), ("channel", 64)):
        match = re.search(rf"\b{name}=(\d+)", cfg.get("api_call", ""))
        found[name] = int(match[1]) if match else default
    return found


def _texts(case: Case) -> TextV2:
    """Prompt / negative rows from the look-up tables ``in.t5.<i>`` / ``in.clip.<i>`` over [prompts..., ""]."""
    cfg, io = case.config, case.io
    unique = list(cfg["prompts"]) + [""]
    seen = cfg.get("text_list_seen_by_encoders") or unique[:-1] + [""] * (2 * len(cfg["prompts"]))
    rows = [unique.index(text) for text in seen]
    t5 = torch.stack([io[f"in.t5.{i}"] for i in rows])
    clip = torch.stack([io[f"in.clip.{i}"] for i in rows])
    B = len(cfg["prompts"])
    return TextV2(txt=t5[:B], y_vec=clip[:B], neg_txt=t5[B : 2 * B], neg_y_vec=clip[B : 2 * B])


def _references(case: Case, batch: int) -> list[list[torch.Tensor] | None]:
    """``in.ref_latent.<b>`` (one latent) or ``in.ref_latent.<b>.<j>`` (several) per item."""
    refs: list[dict[int, torch.Tensor]] = [{} for _ in range(batch)]
    for key, value in case.io.items():
        match = re.fullmatch(r"in\.ref_latent\.(\d+)(?:\.(\d+))?", key)
        if match:
            refs[int(match[1])][int(match[2] or 0)] = value
    return [[r[j] for j in sorted(r)] if r else None for r in refs]


def _run_sampler(case: Case) -> list[Comparison]:
    cfg, io = case.config, case.io
    opt, api = cfg["sampling_option"], _api_arguments(cfg)
    cond_type = check_cond_type(cfg.get("cond_type", "t2v"))
    model = build_model("MMDiTModel", cfg["model"]["constructor_kwargs"])
    model.load_state_dict(case.weights, strict=True)
    recorder = _Recorder(model.eval())

    B, patch = len(cfg["prompts"]), api["patch_size"]
    height, width = sampling_size(opt.get("resolution"), opt.get("aspect_ratio"), opt.get("height"), opt.get("width"))
    shape = latent_shape(B, height, width, opt["num_frames"], channels=api["channel"] // patch**2, patch_size=patch,
                         temporal_reduction=opt.get("temporal_reduction", 4), causal=opt.get("is_causal_vae", True))
    times = get_schedule(opt["num_steps"], shape.tokens_per_frame, shape.frames, shift=opt.get("shift", True),
                         flow_shift=opt.get("flow_shift"))
    z = io["rng.z"]
    checks = [Comparison("in.timesteps", torch.tensor(times, dtype=torch.float64), io["in.timesteps"], TIMESTEP_ATOL)]
    if api["seed"] is not None:
        redrawn = get_noise(shape.shape, api["seed"], dtype=z.dtype)
        checks.append(Comparison("rng.z", redrawn, z))
    condition = build_condition(z, cond_type, None if cond_type == "t2v" else _references(case, B),
                                causal=opt.get("is_causal_vae", True))
    guidance = GuidanceV2(**{k: opt[k] for k in ("guidance", "guidance_img", "text_osci", "image_osci",
                                                  "scale_temporal_osci") if k in opt})
    latent = sample_v2(ThreePassGuidance(recorder, _texts(case), guidance, patch_size=patch), z, times, mask=condition)
    checks.append(Comparison("out.latent", latent, io["out.latent"], *_tolerance(case, "out.latent")))
    return checks + _trace_checks(case, recorder.calls, B)


def _full_rows(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A call's rows as the official 3B-row call: a 2B-row call (all-zero condition, third pass = second)
    gets the second pass repeated."""
    return torch.cat([value, value[batch:]]) if value.shape[0] == 2 * batch else value


def _trace_checks(case: Case, calls: list[dict], batch: int) -> list[Comparison]:
    io, checks = case.io, []
    atol, rtol = _tolerance(case, "trace.model_out")
    if "trace.model_out" in io:
        out = torch.stack([_full_rows(c["out"], batch) for c in calls])
        checks.append(Comparison("trace.model_out", out, io["trace.model_out"], atol, rtol))
    if "trace.model_in_img" in io:
        img = torch.stack([c["img"][:batch] for c in calls])
        checks.append(Comparison("trace.model_in_img", img, io["trace.model_in_img"], atol, rtol))
    if "trace.model_in_t" in io:
        t = torch.stack([_full_rows(c["timesteps"], batch) for c in calls])
        checks.append(Comparison("trace.model_in_t", t, io["trace.model_in_t"], TIMESTEP_ATOL))
    for name in ("img_ids", "txt", "txt_ids", "y_vec", "cond"):
        key = f"trace.model_kwargs.{name}"
        if key in io:
            checks.append(Comparison(key, _full_rows(calls[0][name], batch), io[key], atol, rtol))
    return checks


HANDLERS = [
    Handler("mmdit_forward", _is_forward, _run_forward),
    Handler("sampler_v2", _is_sampler, _run_sampler),
]
