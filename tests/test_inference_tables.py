"""The inference_tables parity case (sizes, frames, prompts, model args) and the model arguments."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from opensora_core.model_args import multi_resolution_args
from opensora_core.parity import run_case

CASE = "v1_2/cases/inference_tables"


@pytest.fixture
def case_copy(reference, tmp_path):
    """A writable copy of the case and a function that rewrites its table."""
    folder = tmp_path / "tables_copy"
    shutil.copytree(reference / CASE, folder)
    table = json.loads((folder / "table.json").read_text())

    def rewrite(edit):
        changed = copy.deepcopy(table)
        edit(changed)
        (folder / "table.json").write_text(json.dumps(changed))
        return folder

    return rewrite


def test_reference_case_passes(reference):
    result = run_case(reference / CASE)
    assert result.passed, result.messages


def _set(path, value):
    def edit(table):
        node = table
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


PERTURBATIONS = {
    "aspect_ratio_map": _set(["aspect_ratio_map", "9:16"], "0.57"),
    "resolutions": _set(["resolutions", "240p", "by_aspect_ratio", "9:16"], [240, 427]),
    "resolutions_null": _set(["resolutions", "256", "by_aspect_ratio", "12:25"], None),
    "get_num_frames": _set(["get_num_frames", "2s"], 52),
    "img_fps": _set(["img_fps"], 24),
    "vae_latent_size": _set(["vae_latent_size_for_frames_at_240x426", "51"], [16, 30, 53]),
    "dframe_to_frame": _set(["dframe_to_frame", "5"], 16),
    "extract_json": _set(["extract_json_from_prompts", "mask_strategy", 2], ""),
    "loop_prompts": _set(["loop_prompts", 0, "extract_prompts_loop", "1"], "a rainy night"),
    "append_score": _set(["append_score_to_prompts", 0, "out"], "A Cat sitting on a sofa. aesthetic score: 6.50."),
    "text_preprocessing": _set(
        ["text_preprocessing", 1, "text_preprocessing"], "drone shot of the coast, 4k!! #travel aesthetic score: 6.5."
    ),
    "model_args_fps": _set(["prepare_multi_resolution_info", 1, "out", "fps"], [24.0, 24.0]),
    # 240 / 426 in float64 instead of the float32 value the model gets
    "model_args_ar": _set(["prepare_multi_resolution_info", 0, "out", "ar"], [240 / 426, 240 / 426]),
    "unknown_section": _set(["some_new_section"], {"x": 1}),
}


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbed_case_fails(case_copy, name):
    result = run_case(case_copy(PERTURBATIONS[name]))
    assert not result.passed


def test_other_latent_size_sections_are_understood(case_copy):
    """Held-out cases may tabulate latent sizes at another frame size."""
    def edit(table):
        table["vae_latent_size_for_frames_at_480x854"] = {"51": [15, 60, 106], "1": [1, 60, 106]}

    assert run_case(case_copy(edit)).passed


# -- model arguments ------------------------------------------------------------


def test_model_args_are_batch_tensors_in_the_given_dtype():
    args = multi_resolution_args(3, (240, 426), 51, 24, dtype=torch.bfloat16)
    assert sorted(args) == ["ar", "fps", "height", "num_frames", "width"]
    assert all(v.shape == (3,) and v.dtype == torch.bfloat16 for v in args.values())
    assert args["height"][0] == 240 and args["width"][0] == 426 and args["fps"][0] == 24


def test_single_image_gets_img_fps():
    assert multi_resolution_args(1, (720, 1280), 1, 24)["fps"].item() == 120


def test_aspect_ratio_is_height_over_width():
    assert multi_resolution_args(1, (720, 1280), 51, 24)["ar"].item() == pytest.approx(0.5625)
