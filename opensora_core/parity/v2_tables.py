"""Parity handler for the Open-Sora 2.0 logic tables (``cases/tables/tables.json``).

Every recorded row is recomputed with our functions: image sizes (inference and training tables, rounding,
latent and token sizes), shifted schedules, position ids, condition masks of every condition type (the
official failures must fail here too, with ValueError), guidance oscillation and the temporal image-guidance
ramp, prompt suffixes and frame arithmetic. Floats compare to 1e-7 relative; everything else exactly.
"""

from __future__ import annotations

import re

import torch

from ..conditioning.v2 import build_condition
from ..geometry.opensora_v2 import (
    aspect_ratio_sizes,
    image_size,
    latent_frames,
    latent_shape,
    round_up_size,
    sampling_size,
    vae_latent_size,
)
from ..models.mmdit import prepare_inputs
from ..sampling.v2 import GuidanceV2, get_schedule, image_scale_top, oscillation_scale, shift_alpha
from ..text.prompts_v2 import add_fps_info, add_motion_score
from .runner import Case, Comparison, Handler

RTOL = 1e-7
ABSENT = None  # our value for a ratio the training table drops


def _floats(name: str, actual, expected) -> Comparison:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return Comparison(name, torch.as_tensor(actual, dtype=torch.float64), expected, 1e-12, RTOL)


def _shape(text: str) -> list[int]:
    """The first "[1, 16, 12, 2, 2]"-style list in a description."""
    match = re.search(r"\[([\d,\s]+)\]", text)
    if match is None:
        raise ValueError(f"no shape in {text!r}")
    return [int(v) for v in match[1].split(",")]


# ---------------------------------------------------------------------------
# Sizes and schedules
# ---------------------------------------------------------------------------


def _image_sizes(section: dict) -> list[Comparison]:
    checks = []
    for resolution, ratios in section["table"].items():
        training = aspect_ratio_sizes(resolution, training=True)
        for ratio, row in ratios.items():
            name = f"image_sizes.{resolution}.{ratio}"
            h, w = image_size(resolution, ratio)
            hs, ws = round_up_size(h, w)
            shape = latent_shape(1, hs, ws, 1)
            train = row["get_image_size_training"]
            checks += [
                Comparison(f"{name}.inference", [h, w], row["get_image_size_inference"]),
                Comparison(f"{name}.sanitized", [hs, ws], row["after_sanitize_(x16)"]),
                Comparison(f"{name}.training", list(training[ratio]) if ratio in training else ABSENT,
                           ABSENT if isinstance(train, str) else train),
                Comparison(f"{name}.latent_hw", [shape.height, shape.width], row["latent_hw_(/8)"]),
                Comparison(f"{name}.tokens", shape.tokens_per_frame, row["tokens_per_latent_frame_(/16 each)"]),
            ]
    return checks


def _schedule_entry(n: int, e: dict) -> list[Comparison]:
    name = f"schedules[{n}]"
    h, w = sampling_size(e["resolution"], e["aspect_ratio"])
    shape = latent_shape(1, h, w, e["num_frames"])
    return [
        Comparison(f"{name}.size", [h, w], [e["height"], e["width"]]),
        Comparison(f"{name}.latent_frames", shape.frames, e["latent_frames"]),
        Comparison(f"{name}.noise_shape", list(shape.shape), e["noise_shape"]),
        Comparison(f"{name}.image_seq_len", shape.tokens_per_frame, e["image_seq_len"]),
        _floats(f"{name}.shift_alpha", shift_alpha(shape.tokens_per_frame, shape.frames), e["shift_alpha"]),
        _floats(f"{name}.timesteps", get_schedule(e["num_steps"], shape.tokens_per_frame, shape.frames),
                e["timesteps"]),
    ]


def _schedules(section: dict) -> list[Comparison]:
    checks = []
    for n, entry in enumerate(section["entries"]):
        checks += _schedule_entry(n, entry)
    for key, expected in section.items():
        if (match := re.fullmatch(r"unshifted_(\d+)_steps", key)) is not None:
            checks.append(_floats(key, get_schedule(int(match[1]), 256, 1, shift=False), expected))
        elif (match := re.fullmatch(r"explicit_flow_shift_([\d.]+)_(\d+)_steps", key)) is not None:
            ours = get_schedule(int(match[2]), 256, 1, flow_shift=float(match[1]))
            checks.append(_floats(key, ours, expected))
    return checks


# ---------------------------------------------------------------------------
# Ids and conditions
# ---------------------------------------------------------------------------


def _prepare_ids(section: dict) -> list[Comparison]:
    t5_shape, clip_shape = (_shape(part) for part in section["call"].split("t5_embedding")[1].split("clip_embedding"))
    checks = []
    for n, e in enumerate(section["entries"]):
        z = torch.zeros(e["z_shape"])
        inputs = prepare_inputs(z, torch.zeros(t5_shape), torch.zeros(clip_shape))
        name = f"prepare_ids[{n}]"
        checks += [
            Comparison(f"{name}.img_shape", list(inputs["img"].shape), e["img_shape"]),
            Comparison(f"{name}.img_ids", inputs["img_ids"].tolist(), e["img_ids"]),
            Comparison(f"{name}.txt_ids_shape", list(inputs["txt_ids"].shape), e["txt_ids_shape"]),
            Comparison(f"{name}.txt_ids_all_zero", not bool(inputs["txt_ids"].any()), e["txt_ids_all_zero"]),
            Comparison(f"{name}.txt", list(inputs["txt"].shape), e["txt_repeated_to_B"]),
            Comparison(f"{name}.y_vec", list(inputs["y_vec"].shape), e["y_vec_repeated_to_B"]),
        ]
    return checks


def _tagged_references(cond_type: str, shape: list[int]) -> list[list[torch.Tensor]]:
    """The table's references: i2v 1-frame latents of value 100 (200 for the loop tail), v2v latents of
    T frames with value 100 + frame."""
    B, C, T, H, W = shape
    if cond_type.startswith("v2v"):
        clip = (100.0 + torch.arange(T, dtype=torch.float32))[None, :, None, None].expand(C, T, H, W)
        return [[clip.clone()] for _ in range(B)]
    tail = 200.0 if cond_type == "i2v_loop" else 100.0
    head = torch.full((C, 1, H, W), 100.0)
    refs = [head, torch.full((C, 1, H, W), tail)] if cond_type == "i2v_loop" else [head]
    return [list(refs) for _ in range(B)]


def _condition_row(cond_type: str, shape: list[int]):
    """(mask per latent frame, reference value per latent frame) of item 0, or "error" on ValueError."""
    z = torch.zeros(shape)
    try:
        condition = build_condition(z, cond_type, None if cond_type == "t2v" else _tagged_references(cond_type, shape))
    except ValueError:
        return "error"
    return condition.masks[0, 0, :, 0, 0].tolist(), condition.masked_ref[0, 0, :, 0, 0].tolist()


def _condition_masks(section: dict) -> list[Comparison]:
    shape = _shape(section["call"])
    checks = []
    for cond_type, row in section["entries"].items():
        ours = _condition_row(cond_type, shape)
        if "error" in row:
            checks.append(Comparison(f"condition_masks.{cond_type}", ours, "error"))
            continue
        ref_key = next(k for k in row if k.startswith("masked_ref_per_latent_frame"))
        expected = (row["mask_per_latent_frame"], row[ref_key])
        checks.append(Comparison(f"condition_masks.{cond_type}", ours, list(expected)))
    if "single_frame_latent_i2v_head_mask" in section:
        single = [*shape[:2], 1, *shape[3:]]
        mask = _condition_row("i2v_head", single)[0]
        checks.append(Comparison("condition_masks.single_frame", mask, section["single_frame_latent_i2v_head_mask"]))
    return checks


# ---------------------------------------------------------------------------
# Guidance, prompts, frames
# ---------------------------------------------------------------------------


def _oscillation(section: dict) -> list[Comparison]:
    checks = []
    for key, expected in section.items():
        match = re.fullmatch(r"(text|image)_([\d.]+)", key)
        if match:
            ours = [oscillation_scale(float(match[2]), i) for i in range(len(expected))]
            checks.append(_floats(f"guidance_oscillation.{key}", ours, expected))
    return checks


def _ramp(section: dict) -> list[Comparison]:
    guidance = GuidanceV2(guidance_img=section["guidance_img"], image_osci=section["image_osci"])
    steps, frames, checks = section["num_steps"], section["latent_frames"], []
    for e in section["entries"]:
        name = f"image_guidance_temporal_ramp[{e['step']}]"
        ours = guidance.image_scale(e["step"], steps, frames, "i2v_head")
        if "scalar" in e:
            checks.append(Comparison(f"{name}.scalar", ours if isinstance(ours, float) else "ramp", e["scalar"]))
            continue
        if not isinstance(ours, torch.Tensor):
            checks.append(Comparison(f"{name}.per_latent_frame", "scalar", "ramp"))
            continue
        top = image_scale_top(guidance.guidance_img, e["step"], steps)
        checks += [
            _floats(f"{name}.upper", top, e["upper"]),
            _floats(f"{name}.per_latent_frame", ours, e["per_latent_frame"]),
        ]
    return checks


def _prompts(section: dict) -> list[Comparison]:
    checks = []
    for key, rows in section.items():
        fps = re.search(r"fps=(\d+)", key)
        motion = re.search(r"add_motion_score_to_text\('([^']*)'\)", key)
        fps_value = int(fps[1]) if fps else int(re.search(r"fps=(\d+)", next(iter(section)))[1])
        for text, expected in rows.items():
            ours = add_fps_info(text, fps_value)
            if motion:
                ours = add_motion_score(ours, motion[1])
            checks.append(Comparison(f"prompt_suffixes[{key}][{text!r}]", ours, expected))
    return checks


def _frames(section: dict) -> list[Comparison]:
    """Latent frames of the sampler; of the VAE's get_latent_size only T (the table does not record the
    pixel size its H/W entries came from)."""
    checks = []
    for n, row in section["entries"].items():
        frames = int(n)
        checks.append(Comparison(f"latent_frames[{n}].sampler", latent_frames(frames), row["sampler"]))
        checks.append(Comparison(f"latent_frames[{n}].vae_t", vae_latent_size(frames, 8, 8)[0], row["vae"][0]))
    return checks


SECTIONS = {
    "image_sizes": _image_sizes,
    "schedules": _schedules,
    "prepare_ids": _prepare_ids,
    "condition_masks": _condition_masks,
    "guidance_oscillation": _oscillation,
    "image_guidance_temporal_ramp": _ramp,
    "prompt_suffixes": _prompts,
    "latent_frames": _frames,
}


def _is_tables(case: Case) -> bool:
    return case.has("tables.json") and {"image_sizes", "schedules", "condition_masks"} <= set(case.json("tables.json"))


def _run(case: Case) -> list[Comparison]:
    table = case.json("tables.json")
    unknown = sorted(set(table) - set(SECTIONS) - {"source_commit"})
    if unknown:
        raise ValueError(f"tables.json has sections this handler does not know: {unknown}")
    checks = []
    for key, section in table.items():
        if key in SECTIONS:
            checks += SECTIONS[key](section)
    return checks


HANDLERS = [Handler("tables_v2", _is_tables, _run)]
