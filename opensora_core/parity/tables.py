"""Parity handlers for pure-logic tables: mask strategies (v1.1, v1.2) and the v1.2 timestep transform.

Every recorded row is replayed and compared, so held-out tables with other rows pass
as long as they keep the format. Mask-strategy rows are replayed on tagged latents:
frame f of reference j holds 1000*(j+1)+f and the target starts at -1, so the result
shows which reference frame landed where.
"""

from __future__ import annotations

import torch

from ..conditioning import FIELDS, apply_mask_strategy, extension_total_frames, find_nearest_point, parse_mask_strategy
from ..geometry import PER_FRAME
from ..sampling import rflow_schedule, timestep_transform
from ..text.cleaning import text_preprocessing
from ..text.prompts import loop_prompt_text, parse_prompt_options
from .runner import Case, Comparison, Handler
from .strategies import append_generated, gradio_v1_1_length_plan, loop_strategies, split_mask_strategy

TIMESTEP_ATOL = 1e-3

# ---------------------------------------------------------------------------
# Tagged latents
# ---------------------------------------------------------------------------


def _tagged_refs(frame_counts: list[int]) -> list[torch.Tensor]:
    """References (1, T_ref, 1, 1) whose frame f of reference j holds 1000*(j+1)+f."""
    return [
        (1000.0 * (j + 1) + torch.arange(n, dtype=torch.float32))[None, :, None, None]
        for j, n in enumerate(frame_counts)
    ]


def _placement(z: torch.Tensor) -> list[list[tuple[int, int] | None]]:
    """Per sample and frame: (reference, reference frame) copied there, or None."""
    return [[None if v == -1 else (int(v) // 1000 - 1, int(v) % 1000) for v in row[0, :, 0, 0].tolist()] for row in z]


def _apply_tagged(frames: int, refs: list[list[int]], strategies: list, loop_i: int, version: str, align=None):
    z = torch.full((len(strategies), 1, frames, 1, 1), -1.0)
    return apply_mask_strategy(z, [_tagged_refs(r) for r in refs], strategies, loop_i, version=version, align=align)


def _as_pairs(rows: list) -> list:
    """Normalise recorded placements ([ref, frame] lists or {"ref_id", "ref_frame"} dicts) to tuples."""

    def one(item):
        if item is None:
            return None
        if isinstance(item, dict):
            return (item["ref_id"], item["ref_frame"])
        return tuple(item)

    return [[one(item) for item in row] for row in rows]


# ---------------------------------------------------------------------------
# v1.2 mask strategies (opensora/utils/inference_utils.py)
# ---------------------------------------------------------------------------


def _is_v1_2_table(case: Case) -> bool:
    return case.has("table.json") and {"examples", "find_nearest_point"} <= set(case.json("table.json"))


def _v1_2_example(n: int, ex: dict) -> list[Comparison]:
    name = f"examples[{n}]"
    z, mask = _apply_tagged(
        ex["latent_frames"], ex["ref_latent_frames"], ex["mask_strategy"], ex["loop_i"], "v1.2", ex["align"]
    )
    parsed = [[[getattr(g, f) for f in FIELDS] for g in parse_mask_strategy(s)] for s in ex["mask_strategy"]]
    return [
        Comparison(f"{name}.parsed", parsed, ex["parsed"]),
        Comparison(f"{name}.mask", None if mask is None else mask.tolist(), ex["mask"]),
        Comparison(f"{name}.placement", _placement(z), _as_pairs(ex["placement"])),
    ]


def _v1_2_append(n: int, row: dict) -> list[Comparison]:
    after = [
        append_generated(
            s, count, row["loop_i"], row["condition_frame_length"], row["condition_frame_edit"], version="v1.2"
        )
        for s, count in zip(row["mask_strategy_before"], row["refs_count_before"], strict=True)
    ]
    counts = [c + 1 for c in row["refs_count_before"]]
    return [
        Comparison(f"append_generated[{n}].mask_strategy", after, row["mask_strategy_after"]),
        Comparison(f"append_generated[{n}].refs_count", counts, row["refs_count_after"]),
    ]


def _run_v1_2_table(case: Case) -> list[Comparison]:
    table = case.json("table.json")
    checks = []
    for n, ex in enumerate(table["examples"]):
        checks += _v1_2_example(n, ex)
    if "empty_strategy_list_returns" in table:
        _, mask = apply_mask_strategy(torch.zeros(0, 1, 1, 1, 1), [], [], 0, version="v1.2")
        checks.append(Comparison("empty_strategy_list_returns", mask, table["empty_strategy_list_returns"]))
    for n, row in enumerate(table["find_nearest_point"]):
        result = find_nearest_point(row["value"], row["point"], row["max_value"])
        checks.append(Comparison(f"find_nearest_point[{n}]", result, row["result"]))
    for n, row in enumerate(table.get("append_generated", [])):
        checks += _v1_2_append(n, row)
    return checks


# ---------------------------------------------------------------------------
# v1.1 mask strategies (scripts/inference-long.py)
# ---------------------------------------------------------------------------


def _is_v1_1_table(case: Case) -> bool:
    return case.has("tables.json") and {"parse", "apply"} <= set(case.json("tables.json"))


def _v1_1_parse(n: int, row: dict) -> list[Comparison]:
    groups = parse_mask_strategy(row["input"])
    return [
        Comparison(f"parse[{n}].parsed_strings", split_mask_strategy(row["input"]), row["parsed_strings"]),
        Comparison(f"parse[{n}].as_fields", [{f: getattr(g, f) for f in FIELDS} for g in groups], row["as_fields"]),
    ]


def _v1_1_apply(n: int, row: dict) -> list[Comparison]:
    name = f"apply[{n}]"
    try:
        z, mask = _apply_tagged(row["T"], row["refs_num_frames"], row["strategies"], row["loop_i"], "v1.1")
    except ValueError as err:
        return [Comparison(f"{name}.error", "error", "error" if "error" in row else f"no error ({err})")]
    if "error" in row:
        return [Comparison(f"{name}.error", "no error", "error")]
    return [
        Comparison(f"{name}.masks", mask.tolist(), row["masks"]),
        Comparison(f"{name}.inserted", _placement(z), _as_pairs(row["inserted"])),
    ]


def _v1_1_loop(n: int, row: dict) -> list[Comparison]:
    """Replay the loop bookkeeping: each round appends the previous clip as a reference."""
    name, frames, cfl = f"loop_extension[{n}]", row["num_frames"], row["condition_frame_length"]
    refs = list(row["initial_refs_num_frames"])
    strategies = loop_strategies(row["initial_strategy"], row["loop"], cfl, num_refs=len(refs), version="v1.1")
    checks = []
    for loop_i, expected in enumerate(row["per_loop"]):
        if loop_i > 0:
            refs.append(frames)  # the previous clip, re-encoded (per-frame VAE: same frame count)
        z, mask = _apply_tagged(frames, [refs], [strategies[loop_i]], loop_i, "v1.1")
        checks += [
            Comparison(
                f"{name}.per_loop[{loop_i}].mask_strategy_string", strategies[loop_i], expected["mask_strategy_string"]
            ),
            Comparison(f"{name}.per_loop[{loop_i}].num_refs", len(refs), expected["num_refs"]),
            Comparison(f"{name}.per_loop[{loop_i}].mask", mask[0].tolist(), expected["mask"]),
            Comparison(f"{name}.per_loop[{loop_i}].inserted", _placement(z)[0], _as_pairs([expected["inserted"]])[0]),
        ]
    total = extension_total_frames(frames, row["loop"], cfl, PER_FRAME)
    checks.append(Comparison(f"{name}.final_video_frames", total, row["final_video_frames"]))
    return checks


def _v1_1_prompts(n: int, row: dict) -> list[Comparison]:
    """JSON options and per-loop texts (the prompt syntax and cleaning live in opensora_core.text)."""
    options = parse_prompt_options(row["input"])
    extra = {k: getattr(options, k) for k in ("reference_path", "mask_strategy") if getattr(options, k) is not None}
    texts = [text_preprocessing(loop_prompt_text(options.text, i)) for i in range(row["num_loop"])]
    return [
        Comparison(f"prompts[{n}].after_json_split", {"prompt": options.text, "extra": extra}, row["after_json_split"]),
        Comparison(f"prompts[{n}].per_loop_prompts", texts, row["per_loop_prompts"]),
    ]


def _v1_1_gradio(table: dict) -> list[Comparison]:
    rule, checks = table["gradio_length_rule"], []
    for n, row in enumerate(rule["rows"]):
        plan = gradio_v1_1_length_plan(
            row["seconds"],
            fps=rule["fps"],
            frame_interval=rule["frame_interval"],
            condition_frames=rule["condition_frame_length"],
            clip_frames=rule["config_num_frames"],
        )
        checks.append(Comparison(f"gradio_length_rule[{n}]", list(plan), [row["num_frames"], row["num_loop"]]))
    return checks


def _run_v1_1_table(case: Case) -> list[Comparison]:
    table = case.json("tables.json")
    checks = []
    for n, row in enumerate(table["parse"]):
        checks += _v1_1_parse(n, row)
    for n, row in enumerate(table["apply"]):
        checks += _v1_1_apply(n, row)
    for n, row in enumerate(table.get("loop_extension", [])):
        checks += _v1_1_loop(n, row)
    for n, row in enumerate(table.get("prompts", [])):
        checks += _v1_1_prompts(n, row)
    if "gradio_length_rule" in table:
        checks += _v1_1_gradio(table)
    return checks


# ---------------------------------------------------------------------------
# v1.2 timestep transform (opensora/schedulers/rf/rectified_flow.py)
# ---------------------------------------------------------------------------


def _is_transform_table(case: Case) -> bool:
    return case.config.get("function") == "timestep_transform"


def _transform_one(t: float, height: float, width: float, num_frames: float, dtype: torch.dtype) -> torch.Tensor:
    """One row as its own batch of 1 (the official function picks the image branch from sample 0)."""
    args = [torch.tensor([float(v)], dtype=dtype) for v in (height, width, num_frames)]
    return timestep_transform(torch.tensor([t], dtype=torch.float32), *args)[0]


def _transform_io(case: Case) -> list[Comparison]:
    io, checks = case.io, []
    rows = list(zip(*(io[k].tolist() for k in ("in.t", "in.height", "in.width", "in.num_frames")), strict=True))
    for key, dtype in (("out.t_transformed", torch.float32), ("out.t_transformed_bf16_args", torch.bfloat16)):
        if key in io:
            ours = torch.stack([_transform_one(*row, dtype) for row in rows])
            checks.append(Comparison(key, ours, io[key], TIMESTEP_ATOL))
    return checks


def _run_transform_table(case: Case) -> list[Comparison]:
    checks = []
    for n, row in enumerate(case.config.get("rows", [])):
        args = (row["t_in"], row["height"], row["width"], row["num_frames"])
        for key, dtype in (("t_out_float32_args", torch.float32), ("t_out_bf16_args", torch.bfloat16)):
            expected = torch.tensor(float("nan") if row[key] is None else row[key])
            checks.append(Comparison(f"rows[{n}].{key}", _transform_one(*args, dtype), expected, TIMESTEP_ATOL))
    for n, sched in enumerate(case.config.get("schedules", [])):
        size = {"height": sched["height"], "width": sched["width"], "num_frames": sched["num_frames"]}
        times = rflow_schedule(sched["num_sampling_steps"], **size)
        plain = rflow_schedule(sched["num_sampling_steps"], transform=False)
        steps = ((times[:-1].double() - times[1:].double()) / 1000).float()
        checks += [
            Comparison(f"schedules[{n}].timesteps", times[:-1], torch.tensor(sched["timesteps"]), TIMESTEP_ATOL),
            Comparison(
                f"schedules[{n}].before", plain[:-1], torch.tensor(sched["timesteps_before_transform"]), TIMESTEP_ATOL
            ),
            Comparison(f"schedules[{n}].dt", steps, torch.tensor(sched["dt"]), TIMESTEP_ATOL / 1000),
        ]
    if case.has("io.safetensors"):
        checks += _transform_io(case)
    return checks


HANDLERS = [
    Handler("mask_strategy_v1_2", _is_v1_2_table, _run_v1_2_table),
    Handler("mask_strategy_v1_1", _is_v1_1_table, _run_v1_1_table),
    Handler("timestep_transform", _is_transform_table, _run_transform_table),
]
