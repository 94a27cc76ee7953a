"""Parity handler for the inference-script tables (sizes, frame counts, prompts, model args).

A case of this kind has ``config.json`` with a ``data_file`` naming a JSON object
whose keys are sections produced by the official helpers of scripts/inference.py
(opensora/datasets/aspect.py, opensora/utils/inference_utils.py,
opensora/models/text_encoder/t5.py, opensora/models/vae/vae.py). Every row of
every section is replayed with our code; a section we do not know fails the case.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import torch

from .. import geometry
from ..model_args import multi_resolution_args
from ..text.cleaning import text_preprocessing
from ..text.prompts import append_scores, loop_prompt_text, merge_loop_prompt, split_loop_prompt, split_prompt_options
from .runner import Case, Comparison, Handler

# ---------------------------------------------------------------------------
# Sections (geometry)
# ---------------------------------------------------------------------------


def _aspect_ratio_map(table: dict) -> list[Comparison]:
    return [Comparison("aspect_ratio_map", geometry.named_aspect_ratios(), table)]


def _size_or_none(resolution: str, aspect_ratio: str) -> list[int] | None:
    try:
        return list(geometry.image_size(resolution, aspect_ratio))
    except ValueError:  # that resolution's table has no entry for this ratio
        return None


def _resolutions(table: dict) -> list[Comparison]:
    out = []
    for res, entry in table.items():
        if "nominal_pixels" in entry:
            pixels = geometry.resolution_pixels(res)
            out.append(Comparison(f"resolutions/{res}/nominal_pixels", pixels, entry["nominal_pixels"]))
        for ratio, size in entry["by_aspect_ratio"].items():
            out.append(Comparison(f"resolutions/{res}/{ratio}", _size_or_none(res, ratio), size))
    return out


def _get_num_frames(table: dict) -> list[Comparison]:
    return [Comparison(f"get_num_frames/{k}", geometry.num_frames_from_duration(k), v) for k, v in table.items()]


def _img_fps(value: int) -> list[Comparison]:
    return [Comparison("img_fps", geometry.IMG_FPS, value)]


def _latent_sizes(height: int, width: int) -> Callable[[dict], list[Comparison]]:
    def run(table: dict) -> list[Comparison]:
        out = []
        for frames, size in table.items():
            ours = list(geometry.VAE_V1_2.latent_size(int(frames), height, width))
            out.append(Comparison(f"vae_latent_size/{frames}x{height}x{width}", ours, size))
        return out

    return run


def _dframe_to_frame(table: dict) -> list[Comparison]:
    out = []
    for latent, frames in table.items():
        n = int(latent)
        clip = geometry.VAE_V1_2.micro_frame_size * (math.ceil(n / geometry.VAE_V1_2.latent_chunk) + 1)
        out.append(Comparison(f"dframe_to_frame/{n}", geometry.VAE_V1_2.leading_pixel_frames(n, clip), frames))
    return out


# ---------------------------------------------------------------------------
# Sections (prompts and model arguments)
# ---------------------------------------------------------------------------


def _rows(section: Any) -> list[dict]:
    return section if isinstance(section, list) else [section]


def _extract_json(section: Any) -> list[Comparison]:
    out = []
    for i, row in enumerate(_rows(section)):
        texts, refs, masks = split_prompt_options(row["prompts"])
        out += [
            Comparison(f"extract_json_from_prompts[{i}]/prompts", texts, row["prompts_out"]),
            Comparison(f"extract_json_from_prompts[{i}]/reference_path", refs, row["reference_path"]),
            Comparison(f"extract_json_from_prompts[{i}]/mask_strategy", masks, row["mask_strategy"]),
        ]
    return out


def _loop_prompts(section: Any) -> list[Comparison]:
    out = []
    for i, row in enumerate(_rows(section)):
        name = f"loop_prompts[{i}]"
        texts, starts = split_loop_prompt(row["prompt"])
        out.append(Comparison(f"{name}/split_prompt", [texts, starts], row["split_prompt"]))
        out.append(Comparison(f"{name}/merge_prompt", merge_loop_prompt(texts, starts), row["merge_prompt"]))
        for loop, text in row["extract_prompts_loop"].items():
            out.append(Comparison(f"{name}/loop{loop}", loop_prompt_text(row["prompt"], int(loop)), text))
    return out


def _append_scores(section: Any) -> list[Comparison]:
    return [
        Comparison(
            f"append_score_to_prompts[{i}]",
            append_scores(row["prompt"], row.get("aes"), row.get("flow"), row.get("camera_motion")),
            row["out"],
        )
        for i, row in enumerate(_rows(section))
    ]


def _text_preprocessing(section: Any) -> list[Comparison]:
    return [
        Comparison(f"text_preprocessing[{i}]", text_preprocessing(row["raw"]), row["text_preprocessing"])
        for i, row in enumerate(_rows(section))
    ]


def _model_args(section: Any) -> list[Comparison]:
    out = []
    for i, row in enumerate(_rows(section)):
        expected = row["out"]
        batch = len(next(iter(expected.values())))
        dtype = getattr(torch, row.get("dtype", "float32"))
        args = multi_resolution_args(batch, tuple(row["image_size"]), row["num_frames"], row["fps"], dtype=dtype)
        if set(args) != set(expected):
            out.append(Comparison(f"prepare_multi_resolution_info[{i}]/keys", sorted(args), sorted(expected)))
        for key in expected.keys() & args.keys():
            wanted = torch.tensor(expected[key], dtype=torch.float64)
            out.append(Comparison(f"prepare_multi_resolution_info[{i}]/{key}", args[key].double(), wanted))
    return out


# ---------------------------------------------------------------------------
# Handler
# ---------------------------------------------------------------------------

_SECTIONS: dict[str, Callable[[Any], list[Comparison]]] = {
    "aspect_ratio_map": _aspect_ratio_map,
    "resolutions": _resolutions,
    "get_num_frames": _get_num_frames,
    "img_fps": _img_fps,
    "dframe_to_frame": _dframe_to_frame,
    "extract_json_from_prompts": _extract_json,
    "loop_prompts": _loop_prompts,
    "append_score_to_prompts": _append_scores,
    "text_preprocessing": _text_preprocessing,
    "prepare_multi_resolution_info": _model_args,
}
_LATENT_SIZE_SECTION = re.compile(r"vae_latent_size_for_frames_at_(\d+)x(\d+)")
_MIN_KNOWN_SECTIONS = 3  # a table sharing fewer sections with ours is another kind of case


def _section_runner(key: str) -> Callable[[Any], list[Comparison]] | None:
    if key in _SECTIONS:
        return _SECTIONS[key]
    size = _LATENT_SIZE_SECTION.fullmatch(key)
    return _latent_sizes(int(size[1]), int(size[2])) if size else None


def _table(case: Case) -> Any:
    return case.json(case.config["data_file"])


def _matches(case: Case) -> bool:
    data_file = case.config.get("data_file")
    if not isinstance(data_file, str) or not data_file.endswith(".json") or not case.has(data_file):
        return False
    table = _table(case)
    return isinstance(table, dict) and sum(_section_runner(k) is not None for k in table) >= _MIN_KNOWN_SECTIONS


def _run(case: Case) -> list[Comparison]:
    out = []
    for key, section in _table(case).items():
        runner = _section_runner(key)
        if runner is None:
            out.append(Comparison(f"{key}: section not understood by this handler", "unsupported", "compared"))
            continue
        out.extend(runner(section))
    return out


HANDLERS = [Handler("inference_tables", _matches, _run)]
