"""Pure-logic reference tables: mask strategies, timestep transform, IDDPM respacing, closest aspect ratio."""

from __future__ import annotations

import json

from opensora_core.geometry import closest_ratio
from opensora_core.parity.runner import Case, run_case
from opensora_core.parity.tables import HANDLERS
from opensora_core.sampling import iddpm_schedule, space_timesteps


def test_v1_2_mask_strategy_table_passes(reference):
    result = run_case(reference / "v1_2/cases/mask_strategy_table")
    assert result.passed, result.messages


def test_v1_2_timestep_transform_table_passes(reference):
    """Every row in float32 and bf16-argument form, the full schedules and the io vectors, atol 1e-3."""
    result = run_case(reference / "v1_2/cases/rflow_timestep_transform")
    assert result.passed, result.messages


def test_v1_1_mask_strategy_tables_pass(reference):
    """Parsing, insertion, the overrun error, loop bookkeeping, per-loop prompts and the Gradio length rule."""
    result = run_case(reference / "v1_1/cases/mask_strategy")
    assert result.passed, result.messages
    case = Case(reference / "v1_1/cases/mask_strategy")
    names = [c.name for c in next(h for h in HANDLERS if h.matches(case)).run(case)]
    assert any(n.endswith(".error") for n in names) and any(n.startswith("prompts[") for n in names)


def _write_case(folder, example: dict) -> None:
    table = {"examples": [example], "find_nearest_point": [{"value": 7, "point": 5, "max_value": 15, "result": 5}]}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"case": "held_out", "data_file": "table.json"}))
    (folder / "table.json").write_text(json.dumps(table))


HELD_OUT = {
    "latent_frames": 6,
    "ref_latent_frames": [[2]],
    "mask_strategy": ["0,0,0,-2,2,0.5"],
    "loop_i": 0,
    "align": None,
    "parsed": [[[0, 0, 0, -2, 2, 0.5]]],
    "mask": [[1.0, 1.0, 1.0, 1.0, 0.5, 0.5]],
    "placement": [[None, None, None, None, [0, 0], [0, 1]]],
}


def test_mask_strategy_handler_is_driven_by_the_table_not_the_folder(tmp_path):
    _write_case(tmp_path / "other_name", HELD_OUT)
    assert run_case(tmp_path / "other_name").passed


def test_mask_strategy_handler_fails_a_wrong_expectation(tmp_path):
    _write_case(tmp_path / "wrong", {**HELD_OUT, "mask": [[1.0, 1.0, 1.0, 0.5, 0.5, 1.0]]})
    result = run_case(tmp_path / "wrong")
    assert not result.passed and "mask" in result.messages[0]


def test_iddpm_respacing_matches_the_official_float32_tables(reference):
    table = json.loads((reference / "v1_1/tables/iddpm_respacing.json").read_text())
    for steps, row in table["respaced"].items():
        schedule = iddpm_schedule(int(steps))
        assert schedule.timestep_map.tolist() == row["timestep_map"], steps
        assert schedule.betas.tolist() == row["betas_float32"], steps
        assert schedule.alphas_cumprod.tolist() == row["alphas_cumprod_float32"], steps
    assert space_timesteps(1000, "ddim25") == table["ddim_style_example"]["ddim25"]
    training = iddpm_schedule(None).betas
    assert [training[0].item(), training[-1].item()] == table["training_scheduler_first_last_betas"]


def test_closest_ratio_matches_the_official_examples(reference):
    table = json.loads((reference / "v1_1/tables/aspect_closest_examples.json").read_text())
    for row in table["rows"]:
        assert closest_ratio(row["H"], row["W"], "240p") == row["240p_key"], row
        assert closest_ratio(row["H"], row["W"], "512") == row["512_key"], row
