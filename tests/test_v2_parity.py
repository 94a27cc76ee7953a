"""Open-Sora 2.0 reference cases (MMDiT forward, samplers, tables) pass, and perturbed copies fail."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import case_ids, reference_case, reference_cases
from safetensors.torch import load_file, save_file

from opensora_core.parity import run_case
from opensora_core.parity.runner import discover

CASES = [case for case in reference_cases("*", "v2_0") if not case.name.startswith("hunyuan_vae")]  # VAE: own file


def _case(name: str):
    return reference_case("v2_0", name)


def _copy(tmp_path, name: str):
    return shutil.copytree(_case(name), tmp_path / name)


def _perturb(path, key: str, delta: float) -> None:
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += delta
    save_file(tensors, str(path))


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_reference_case_passes(case):
    result = run_case(case)
    assert result.passed, result.messages


def test_tables_folder_without_config_is_discovered():
    """The tables case has only tables.json; the runner must still find it as a case."""
    assert discover([_case("tables")]) == [_case("tables")]
    assert _case("tables") in discover([_case("tables").parent])


def test_perturbed_weight_fails(tmp_path):
    """A 1e-4 change of one output bias moves one output channel 25x beyond the 4.3e-6 tolerance."""
    case = _copy(tmp_path, "mmdit_forward")
    _perturb(case / "weights.safetensors", "final_layer.linear.bias", 1e-4)
    result = run_case(case)
    assert not result.passed and any("out.i2v.output" in m for m in result.messages), result.messages


def test_perturbed_reference_latent_fails_the_i2v_sampler(tmp_path):
    """The reference latent enters the condition and replaces frame 0 of item 0: changing it must show."""
    case = _copy(tmp_path, "sampler_i2v_head")
    _perturb(case / "io.safetensors", "in.ref_latent.0", 0.5)
    assert not run_case(case).passed


def test_perturbed_expected_latent_fails(tmp_path):
    case = _copy(tmp_path, "sampler_t2v")
    _perturb(case / "io.safetensors", "out.latent", 1e-3)
    result = run_case(case)
    assert not result.passed and any("out.latent" in m for m in result.messages)


def test_perturbed_table_entry_fails(tmp_path):
    case = _copy(tmp_path, "tables")
    table = json.loads((case / "tables.json").read_text())
    table["schedules"]["entries"][3]["timesteps"][5] += 1e-5
    table["condition_masks"]["entries"]["i2v_tail"]["mask_per_latent_frame"][-1] = 0.0
    (case / "tables.json").write_text(json.dumps(table))
    result = run_case(case)
    assert not result.passed
    assert any("schedules[3].timesteps" in m for m in result.messages)
