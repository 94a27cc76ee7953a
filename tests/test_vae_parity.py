"""The VAE reference cases through the generic parity runner, and that it notices wrong numbers."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import reference_cases
from opensora_core.parity import run_case

CASES = reference_cases("vae*")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vae_case_passes(case):
    result = run_case(case)
    assert result.passed, result.line()


def _copy(case, tmp_path, name="renamed_case"):
    target = tmp_path / name
    shutil.copytree(case, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def _edit(path, key_filter, change):
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if key_filter(k))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(path))


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case_copy(request, tmp_path):
    return _copy(request.param, tmp_path)


def test_case_folder_name_does_not_matter(case_copy):
    assert run_case(case_copy).passed


def test_perturbed_weight_fails(case_copy):
    _edit(case_copy / "weights.safetensors", lambda k: k.endswith("decoder.conv_out.bias"), lambda t: t + 1e-3)
    assert not run_case(case_copy).passed


def test_perturbed_expected_output_fails(case_copy):
    _edit(case_copy / "io.safetensors", lambda k: k.startswith("out."), lambda t: t + 1e-3 * torch.ones_like(t))
    assert not run_case(case_copy).passed


def test_perturbed_noise_fails(case_copy):
    _edit(case_copy / "io.safetensors", lambda k: k.startswith("rng."), lambda t: t * 1.01)
    result = run_case(case_copy)
    assert not result.passed and any("sample" in m for m in result.messages), result.line()
