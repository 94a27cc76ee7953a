"""Parity handlers for the sampler cases: v1.2 RFLOW and v1.1 IDDPM driving a tiny STDiT.

Each case names the official scheduler and model in ``config.json``; the handler builds
our model with :func:`opensora_core.families.build_model`, loads ``weights.safetensors``
strictly, replays the recorded random draws (``rng.*``) and compares every output, plus
the per-step records (``trace.*`` / ``traj.*``) and schedule arrays (``sched.*``) when present.
When a case inserts references with a mask strategy, our own
:func:`~opensora_core.conditioning.apply_mask_strategy` builds the latent and mask from
the raw inputs, and both are compared with the recorded ones.
"""

from __future__ import annotations

import re

import torch

from ..conditioning import apply_mask_strategy
from ..families import build_model
from ..model_args import MODEL_ARG_NAMES  # prepare_multi_resolution_info
from ..sampling import (
    GeneratorNoise,
    GuidedModel,
    RecordedNoise,
    iddpm_schedule,
    rflow_timesteps,
    sample_iddpm,
    sample_rflow,
    timestep_transform,
)
from ..text.caption import Caption, null_caption
from .runner import Case, Comparison, Handler

TIMESTEP_ATOL = 1e-3  # timesteps are on the 0..1000 scale (NOTES.md of the rflow cases)


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


class _Recorder:
    """Wraps the model and keeps every call's inputs and output."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.calls: list[dict] = []

    def __call__(self, x, timestep, y, **kwargs):
        out = self.model(x, timestep, y, **kwargs)
        self.calls.append({"x": x, "t": timestep, "x_mask": kwargs.get("x_mask"), "out": out})
        return out


def _build_model(class_name: str, kwargs: dict, case: Case) -> torch.nn.Module:
    model = build_model(class_name, kwargs)
    model.load_state_dict(case.weights, strict=True)
    return model.eval()


def _draws(case: Case, prefix: str) -> list[torch.Tensor]:
    """Recorded draws under ``prefix`` in call order; a single stacked tensor is split along dim 0."""
    keys = sorted(k for k in case.io if k.startswith(prefix))
    if len(keys) == 1 and not re.search(r"\.\d+$", keys[0]):
        return list(case.io[keys[0]].unbind(0))
    return [case.io[k] for k in keys]


def _noise(case: Case, prefix: str, seed: int | None):
    draws = _draws(case, prefix)
    if draws:
        return RecordedNoise(draws)
    return None if seed is None else GeneratorNoise.from_seed(seed)


def _references(case: Case, prefix: str, batch: int) -> list[list[torch.Tensor]]:
    """``<prefix>.<sample>.<ref>`` tensors as per-sample lists."""
    refs: list[dict[int, torch.Tensor]] = [{} for _ in range(batch)]
    for key, value in case.io.items():
        match = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(\d+)", key)
        if match:
            refs[int(match[1])][int(match[2])] = value
    return [[r[j] for j in sorted(r)] for r in refs]


def _compare(name: str, actual, case: Case, atol: float | None = None, rtol: float | None = None) -> Comparison:
    case_atol, case_rtol = case.tolerance()
    return Comparison(
        name, actual, case.io[name], case_atol if atol is None else atol, case_rtol if rtol is None else rtol
    )


def _stack_calls(calls: list[dict], field: str) -> torch.Tensor:
    return torch.stack([call[field] for call in calls])


# ---------------------------------------------------------------------------
# v1.2 RFLOW
# ---------------------------------------------------------------------------


def _is_rflow(case: Case) -> bool:
    return case.config.get("class") == "RFLOW" and case.has("io.safetensors")


def _caption_keys(description: str) -> tuple[str, str, str]:
    """io keys of y, token mask and null caption from the fake text encoder's description."""
    found = [
        re.search(pattern, description)
        for pattern in (r"y:\s*([\w.]+)", r"mask:\s*([\w.]+)", r"null\(n\)\s*->\s*([\w.]+)")
    ]
    if not all(found):
        raise ValueError(f"cannot read the caption tensors from text_encoder description {description!r}")
    return tuple(m[1] for m in found)


def _rflow_latent(case: Case, batch: int) -> tuple[torch.Tensor, torch.Tensor | None, list[Comparison]]:
    call, strategy = case.config["sample_call"], case.config.get("mask_strategy")
    if strategy is None:
        mask = None if call.get("mask") is None else case.io[call["mask"]]
        return case.io[call["z"]], mask, []
    refs = _references(case, "in.ref", batch)
    z, mask = apply_mask_strategy(
        case.io["in.z_noise"],
        refs,
        strategy["strings"],
        strategy.get("loop_i", 0),
        version="v1.2",
        align=strategy.get("align"),
    )
    checks = [Comparison(call["z"], z, case.io[call["z"]]), Comparison(call["mask"], mask, case.io[call["mask"]])]
    return z, mask, checks


def _rflow_timesteps(case: Case, args: dict, batch: int) -> torch.Tensor:
    kwargs = case.config["scheduler_constructor_kwargs"]
    total = kwargs.get("num_timesteps", 1000)
    times = rflow_timesteps(kwargs["num_sampling_steps"], total, discrete=kwargs.get("use_discrete_timesteps", False))
    times = times[:, None].expand(-1, batch)  # (N + 1, B)
    if not kwargs.get("use_timestep_transform", False):
        return times
    shifted = timestep_transform(times[:-1], args["height"], args["width"], args["num_frames"], num_timesteps=total)
    return torch.cat([shifted, times[-1:]])


def _run_rflow(case: Case) -> list[Comparison]:
    cfg, io = case.config, case.io
    call, kwargs = cfg["sample_call"], cfg["scheduler_constructor_kwargs"]
    model = _Recorder(_build_model(cfg["model"]["class"], cfg["model"]["constructor_kwargs"], case))
    y_key, mask_key, null_key = _caption_keys(call["text_encoder"])
    batch = io[y_key].shape[0]
    args = {name: io[key] for name, key in call["additional_args"].items()}
    z, mask, checks = _rflow_latent(case, batch)
    scale = call.get("guidance_scale") or kwargs.get("cfg_scale", 4.0)
    guided = GuidedModel(model, Caption(io[y_key], io[mask_key]), io[null_key], args, scale=scale)
    times = _rflow_timesteps(case, args, batch)
    noise = _noise(case, "rng.", call.get("torch_manual_seed_before_sample"))
    out = sample_rflow(guided, z, times, mask=mask, noise=noise, num_timesteps=kwargs.get("num_timesteps", 1000))
    checks += [_compare("out.z_final", out, case), _compare("out.timesteps", times[:-1], case, TIMESTEP_ATOL, 0.0)]
    traces = {
        "trace.model_in_x": "x",
        "trace.model_in_t": "t",
        "trace.model_in_x_mask": "x_mask",
        "trace.model_out": "out",
    }
    for key, field in traces.items():
        if key in io:
            checks.append(_compare(key, _stack_calls(model.calls, field), case))
    return checks


# ---------------------------------------------------------------------------
# v1.1 IDDPM
# ---------------------------------------------------------------------------


def _is_iddpm(case: Case) -> bool:
    scheduler = case.config.get("scheduler")
    return isinstance(scheduler, dict) and scheduler.get("class") == "IDDPM" and case.has("io.safetensors")


def _iddpm_latent(case: Case, batch: int) -> tuple[torch.Tensor, torch.Tensor | None, list[Comparison]]:
    strategy = case.config.get("mask_strategy")
    if strategy is None:
        return case.io["in.z"], None, []
    refs = _references(case, "in.refs_x", batch)
    z, mask = apply_mask_strategy(
        case.io["in.z_noise"], refs, strategy["per_sample"], strategy.get("loop_i", 0), version="v1.1"
    )
    checks = [
        Comparison("in.z_after_reference_insertion", z, case.io["in.z_after_reference_insertion"]),
        Comparison("in.masks", mask, case.io["in.masks"]),
    ]
    return z, mask, checks


def _iddpm_runs(case: Case) -> list[tuple[dict, str, str]]:
    """(scheduler kwargs, output key, rng prefix) of each recorded sampling run."""
    scheduler = case.config["scheduler"]
    runs = [(scheduler["kwargs"], "out.samples", "rng.")]
    if "second_run_kwargs" in scheduler:
        outputs = [k for k in case.outputs() if k != "out.samples"]
        prefixes = sorted({k.split(".")[0] + "." for k in case.io if k.startswith("rng") and not k.startswith("rng.")})
        if len(outputs) != 1 or len(prefixes) != 1:
            raise ValueError(f"cannot pair the second run with one output and one rng prefix: {outputs}, {prefixes}")
        runs.append((scheduler["second_run_kwargs"], outputs[0], prefixes[0]))
    return runs


def _iddpm_schedule_checks(case: Case, schedule) -> list[Comparison]:
    return [
        Comparison(k, getattr(schedule, k[len("sched.") :]), v) for k, v in case.io.items() if k.startswith("sched.")
    ]


def _iddpm_trajectory(case: Case, states: list[torch.Tensor], calls: list[dict]) -> list[Comparison]:
    """State after every step (first, conditional half of the recorded doubled batch) and the model's x_mask."""
    checks, io = [], case.io
    for k, state in enumerate(states):
        key, mask_key = f"traj.step{k:03d}", f"traj.x_mask.step{k:03d}"
        if key in io:
            checks.append(Comparison(key, state, io[key][: state.shape[0]], *case.tolerance()))
        if mask_key in io:
            checks.append(Comparison(mask_key, calls[k]["x_mask"], io[mask_key]))
    return checks


def _run_iddpm(case: Case) -> list[Comparison]:
    cfg, io = case.config, case.io
    net = _build_model(cfg["class"], cfg["constructor_kwargs"], case)
    caption = Caption(io["in.y"], io["in.mask"])
    y_null = null_caption(net.y_embedder.y_embedding, caption.batch_size)  # official: the model's buffer
    names = cfg["call"].get("additional_args") or [n for n in MODEL_ARG_NAMES if f"in.{n}" in io]
    args = {name: io[f"in.{name}"] for name in names}
    z, mask, checks = _iddpm_latent(case, caption.batch_size)
    for run, (kwargs, out_key, prefix) in enumerate(_iddpm_runs(case)):
        schedule, model, states = iddpm_schedule(kwargs["num_sampling_steps"]), _Recorder(net), []
        guided = GuidedModel(
            model, caption, y_null, args, scale=kwargs["cfg_scale"], channels=kwargs.get("cfg_channel")
        )
        noise = _noise(case, prefix, cfg["call"].get("torch_manual_seed_before_sample"))
        out = sample_iddpm(
            guided, z, schedule, mask=mask, noise=noise, callback=lambda info, kept=states: kept.append(info["x"])
        )
        checks.append(_compare(out_key, out, case))
        if run == 0:
            checks += _iddpm_schedule_checks(case, schedule) + _iddpm_trajectory(case, states, model.calls)
    return checks


HANDLERS = [
    Handler("rflow_sample", _is_rflow, _run_rflow),
    Handler("iddpm_sample", _is_iddpm, _run_iddpm),
]
