"""The Open-Sora-Plan VAE reference cases pass through the parity runner, and it notices wrong numbers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import case_ids, reference_case, reference_cases
from safetensors.torch import load_file, save_file

from opensora_core.parity import run_case

CASES = reference_cases("causalvae*", "osp") + reference_cases("wfvae*", "osp")


def _case(name: str):
    return reference_case("osp", name)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_reference_case_passes(case):
    result = run_case(case)
    assert result.passed, result.line()


def _copy(name: str, tmp_path):
    target = shutil.copytree(_case(name), tmp_path / name)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def _edit_tensor(path, key: str, change) -> None:
    tensors = load_file(str(path))
    tensors[key] = change(tensors[key])
    save_file(tensors, str(path))


def _edit_config(case, change) -> None:
    config = json.loads((case / "config.json").read_text())
    change(config)
    (case / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name, key", [("causalvae_d4_v1_2", "out.tiled.dec_tiled"), ("wfvae_short", "out.t6.dec"),
                                       ("causalvae_v1_1", "out.image.latent_diffusion")])
def test_perturbed_expected_output_fails(tmp_path, name, key):
    case = _copy(name, tmp_path)
    _edit_tensor(case / "io.safetensors", key, lambda t: t + 1e-3)
    result = run_case(case)
    assert not result.passed and any(key in m for m in result.messages), result.line()


@pytest.mark.parametrize("name", ["causalvae_v1_0", "wfvae_video"])
def test_perturbed_weight_fails(tmp_path, name):
    case = _copy(name, tmp_path)
    key = "decoder.conv_out.conv.bias" if name.startswith("causal") else "decoder.conv_out.bias"
    _edit_tensor(case / "weights.safetensors", key, lambda t: t + 1e-3)
    assert not run_case(case).passed


def test_perturbed_posterior_noise_fails(tmp_path):
    case = _copy("wfvae_video", tmp_path)
    _edit_tensor(case / "io.safetensors", "rng.video.posterior_noise", lambda t: t * 1.01)
    result = run_case(case)
    assert not result.passed and any("sample" in m for m in result.messages), result.line()


def test_v1_0_attention_reshape_quirk_matters(tmp_path):
    """With the per-frame attention of later versions instead of v1.0's AttnBlock3D the v1.0 case fails
    (its video tag runs the mid blocks at 3 latent frames)."""
    case = _copy("causalvae_v1_0", tmp_path)
    _edit_config(case, lambda c: c["constructor_kwargs"].update(encoder_attention="AttnBlock3DFix",
                                                                decoder_attention="AttnBlock3DFix"))
    result = run_case(case)
    assert not result.passed and any("out.video" in m for m in result.messages), result.line()


def test_official_temporal_chunking_matters(tmp_path):
    """The tiled tag follows the official chunking: one temporal chunk instead of two changes the output."""
    case = _copy("causalvae_d4_v1_2", tmp_path)
    _edit_config(case, lambda c: c["inputs"]["tiled"]["tile_attrs_set_before_enable_tiling"].update(
        tile_latent_min_size_t=4))
    result = run_case(case)
    assert not result.passed and any("dec_tiled" in m for m in result.messages), result.line()


def test_output_of_unknown_meaning_fails(tmp_path):
    """An ``out.*`` tensor the handler cannot compute fails the case instead of being skipped."""
    case = _copy("wfvae_short", tmp_path)
    tensors = load_file(str(case / "io.safetensors"))
    tensors["out.t6.something_new"] = torch.zeros(1)
    save_file(tensors, str(case / "io.safetensors"))
    assert not run_case(case).passed
