"""Every STDiT/STDiT2/STDiT3 reference case passes, and a perturbed case fails."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import reference_cases
from safetensors.torch import load_file, save_file

from opensora_core.families import build_model
from opensora_core.parity import run_case
from opensora_core.parity.stdit import second_calls

CASES = reference_cases("stdit*")


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_reference_case_passes(case):
    result = run_case(case)
    assert result.passed, result.messages


def _copy_first_case(tmp_path, pattern: str):
    cases = reference_cases(pattern)
    if not cases:
        pytest.skip("reference set not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return shutil.copytree(cases[0], tmp_path / cases[0].name)


def _perturb(path, key: str, delta: float) -> None:
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += delta
    save_file(tensors, str(path))


@pytest.mark.parametrize("pattern", ["stdit3_fwd_video_xmask", "stdit2_fwd_xmask", "stdit_v1_0_fwd"])
def test_perturbed_weight_fails(tmp_path, pattern):
    case = _copy_first_case(tmp_path, pattern)
    _perturb(case / "weights.safetensors", "final_layer.linear.bias", 1e-3)
    result = run_case(case)
    assert not result.passed and result.max_abs_err > 5e-4


@pytest.mark.parametrize("pattern", ["stdit3_fwd_image", "stdit2_fwd_nomask"])
def test_perturbed_expected_output_fails(tmp_path, pattern):
    case = _copy_first_case(tmp_path, pattern)
    io = load_file(str(case / "io.safetensors"))
    last_output = sorted(k for k in io if k.startswith("out."))[-1]
    _perturb(case / "io.safetensors", last_output, 1e-4)
    result = run_case(case)
    assert not result.passed
    assert any(last_output in m for m in result.messages)


def test_case_with_an_uncompared_output_fails(tmp_path):
    """An extra out.* tensor that no call produces is reported, not silently skipped."""
    case = _copy_first_case(tmp_path, "stdit3_fwd_image")
    io = load_file(str(case / "io.safetensors"))
    io["out.extra"] = io["out.output"].clone()
    save_file(io, str(case / "io.safetensors"))
    assert not run_case(case).passed


def test_held_out_style_bf16_weights_load_into_float32(tmp_path):
    """Weights stored in bf16 load into the float32 model; the case then fails only by bf16 rounding."""
    case = _copy_first_case(tmp_path, "stdit3_fwd_image")
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(str(case / "weights.safetensors")).items()}
    save_file(weights, str(case / "weights.safetensors"))
    io = load_file(str(case / "io.safetensors"))
    config = json.loads((case / "config.json").read_text())
    config["recommended_tolerance"] = {"atol": 1.0, "rtol": 0.0}
    (case / "config.json").write_text(json.dumps(config))
    result = run_case(case)
    assert result.passed and 0 < result.max_abs_err < 0.1, result.messages
    assert io["out.output"].dtype == torch.float32


def test_second_call_overrides_are_parsed():
    io = {"in.mask": torch.ones(1)}
    parsed = second_calls({"second_call": "out.y = forward(same inputs, mask=None, x_mask=None, fps=in.mask)"}, io)
    assert parsed == [("out.y", {"mask": None, "x_mask": None, "fps": io["in.mask"]})]


def test_v1_0_fixed_tables_are_built_as_the_official_code_builds_them():
    """The fixed sin-cos buffers of v1.0 equal the ones the official constructor stored (bit for bit), so a
    checkpoint saved without them (the official loader drops them) still gets the right tables."""
    cases = reference_cases("stdit_v1_0_fwd")
    if not cases:
        pytest.skip("reference set not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    config = json.loads((cases[0] / "config.json").read_text())
    weights = load_file(str(cases[0] / "weights.safetensors"))
    model = build_model(config["class"], config["constructor_kwargs"])
    for key in ("pos_embed", "pos_embed_temporal"):
        assert torch.equal(model.state_dict()[key], weights[key]), key
