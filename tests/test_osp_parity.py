"""The Open-Sora-Plan v1.3 transformer, sampler and condition reference cases pass; perturbed copies fail."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import case_ids, reference_cases
from safetensors.torch import load_file, save_file

from opensora_core.parity import run_case

CASES = reference_cases("*v1_3*", "osp")  # the transformer, condition and sampler cases of v1.3


def test_the_v1_3_cases_are_found(reference):
    assert case_ids(CASES) == sorted(["t2v_v1_3_forward", "i2v_v1_3_forward", "inpaint_cond_v1_3",
                                      "sampler_t2v_v1_3", "sampler_i2v_v1_3"])


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_reference_case_passes(case):
    result = run_case(case)
    assert result.passed, result.messages


def _copy(reference, tmp_path, name: str):
    """A case copy beside copies of the cases it references (../t2v_v1_3_forward etc.)."""
    for folder in ("t2v_v1_3_forward", "i2v_v1_3_forward", name):
        if not (tmp_path / folder).exists():
            shutil.copytree(reference / "osp/cases" / folder, tmp_path / folder)
    return tmp_path / name


def _perturb(path, key: str, delta: float) -> None:
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += delta
    save_file(tensors, str(path))


def test_perturbed_transformer_weight_fails(reference, tmp_path):
    case = _copy(reference, tmp_path, "t2v_v1_3_forward")
    _perturb(case / "weights.safetensors", "proj_out.bias", 1e-3)
    result = run_case(case)
    assert not result.passed and result.max_abs_err > 5e-4


def test_perturbed_trajectory_fails(reference, tmp_path):
    case = _copy(reference, tmp_path, "sampler_t2v_v1_3")
    io = load_file(str(case / "io.safetensors"))
    io["out.n4.trajectory"] = io["out.n4.trajectory"].clone()
    io["out.n4.trajectory"][3].view(-1)[0] += 1e-3  # last step tolerance is 2e-5 + 1e-4 |ref|
    save_file(io, str(case / "io.safetensors"))
    result = run_case(case)
    assert not result.passed and any("trajectory[3]" in m for m in result.messages)


def test_wrong_guidance_scale_fails(reference, tmp_path):
    """Guidance 7.0 instead of 7.5 moves the final n4 latents of the tiny model by ~4e-5 (README): beyond the
    last step's tolerance (2e-5 + 1e-4 |ref|)."""
    case = _copy(reference, tmp_path, "sampler_t2v_v1_3")
    config = json.loads((case / "config.json").read_text())
    config["inputs"]["guidance_scale"] = 7.0
    (case / "config.json").write_text(json.dumps(config))
    result = run_case(case)
    assert not result.passed and any(m.startswith("out.n4.latents") for m in result.messages)


def test_perturbed_condition_vae_weight_fails(reference, tmp_path):
    """The masked latent of inpaint_cond_v1_3 comes from the referenced WF-VAE (../wfvae_video)."""
    case = _copy(reference, tmp_path, "inpaint_cond_v1_3")
    shutil.copytree(reference / "osp/cases/wfvae_video", tmp_path / "wfvae_video")
    _perturb(tmp_path / "wfvae_video/weights.safetensors", "encoder.conv_out.conv.bias", 1e-2)
    result = run_case(case)
    assert not result.passed and all("masked_latent" in m for m in result.messages[:3])
