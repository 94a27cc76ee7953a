"""The Open-Sora 2.0 Hunyuan VAE reference case through the parity runner, and that it notices wrong numbers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import reference_case
from safetensors.torch import load_file, save_file

from opensora_core.parity import run_case


@pytest.fixture(scope="module")
def case():
    return reference_case("v2_0", "hunyuan_vae_encode_decode")


def test_hunyuan_vae_case_passes(case):
    result = run_case(case)
    assert result.passed, result.line()


def one_tag_copy(case, tmp_path, tag: str, **kwargs_change):
    """A copy of the case with only ``tag`` (its io tensors and config entry); kwargs_change edits its constructor."""
    target = tmp_path / f"{case.name}_{tag}"
    shutil.copytree(case, target)
    for path in target.iterdir():
        path.chmod(0o644)
    config = json.loads((target / "config.json").read_text())
    config["tags"] = {tag: config["tags"][tag]}
    config["tags"][tag]["constructor_kwargs"].update(kwargs_change)
    (target / "config.json").write_text(json.dumps(config))
    io = load_file(str(target / "io.safetensors"))
    save_file({k: v for k, v in io.items() if k.split(".")[1] == tag}, str(target / "io.safetensors"))
    return target


def edit(path, key: str, change) -> None:
    tensors = load_file(str(path))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(path))


def test_one_tag_copy_passes(case, tmp_path):
    assert run_case(one_tag_copy(case, tmp_path, "image")).passed


def test_perturbed_decoder_weight_fails_the_decodes_only(case, tmp_path):
    copy = one_tag_copy(case, tmp_path, "image")
    edit(copy / "weights.safetensors", "decoder.conv_out.conv.bias", lambda t: t + 2e-3)
    result = run_case(copy)
    assert not result.passed
    assert all("decoded" in m for m in result.messages if "outside" in m), result.messages


def test_perturbed_posterior_noise_fails_z_only(case, tmp_path):
    copy = one_tag_copy(case, tmp_path, "image")
    edit(copy / "io.safetensors", "rng.image.posterior_noise", lambda t: t * 1.01)
    result = run_case(copy)
    assert not result.passed
    failed = [m.split(":")[0] for m in result.messages if "outside" in m]
    assert failed == ["out.image.z"], result.messages


def test_tiled_tag_needs_the_official_spatial_tiling(case, tmp_path):
    copy = one_tag_copy(case, tmp_path, "tiled", use_spatial_tiling=False)
    result = run_case(copy)
    assert not result.passed and any("out.tiled.mean" in m for m in result.messages), result.line()


def test_every_expected_output_must_be_compared(case, tmp_path):
    copy = one_tag_copy(case, tmp_path, "image")
    tensors = load_file(str(copy / "io.safetensors"))
    tensors["out.image.unknown"] = torch.zeros(1)
    save_file(tensors, str(copy / "io.safetensors"))
    assert "not compared: out.image.unknown" in run_case(copy).line()
