"""The full-size Open-Sora-Plan VAEs built from the released configs reproduce the official state dicts
(reference manifests: keys, shapes, order, buffers and their dtypes, parameter counts, Haar constants)."""

from __future__ import annotations

import json

import pytest
import torch

from opensora_core.families import build_model
from opensora_core.vae.causal_vae import CAUSAL_VAE_PRESETS, CausalVAEModel, causal_vae_parameter_counts
from opensora_core.vae.wfvae import WFVAE_PRESETS, WFVAEModel, wfvae_parameter_counts

# manifest -> release preset
MANIFESTS = {
    "manifest_causalvae_4x8x8_v1_0.json": "CausalVAEModel_4x8x8-v1.0",
    "manifest_causalvae_4x8x8_v1_1.json": "CausalVAEModel_4x8x8-v1.1",
    "manifest_causalvae_d4_4x8x8_v1_2.json": "CausalVAEModel_D4_4x8x8",
    "manifest_wfvae_d8_v1_3.json": "WFVAEModel_D8_4x8x8",
}
TINY_WFVAE = {"base_channels": 8, "encoder_energy_flow_hidden_size": 4, "decoder_energy_flow_hidden_size": 8}


@pytest.fixture(scope="module")
def osp(reference):
    path = reference / "osp"
    if not path.is_dir():
        pytest.skip("Open-Sora-Plan reference set (shared/reference/osp) not found")
    return path


def _manifest(osp, name: str) -> dict:
    return json.loads((osp / name).read_text())


def _built(manifest: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(manifest["class"], manifest["config"])


def _expected_shapes(manifest: dict) -> dict[str, list[int]]:
    buffers = {k: v["shape"] for k, v in manifest["buffers"].items()}
    return {**manifest["params"], **buffers}


@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_keys_and_shapes_equal_the_manifest(osp, name):
    manifest = _manifest(osp, name)
    model = _built(manifest)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == _expected_shapes(manifest)


@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_order_follows_the_official_class(osp, name):
    manifest = _manifest(osp, name)
    assert list(_built(manifest).state_dict()) == manifest["key_order"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_buffers_and_parameters_are_the_official_ones(osp, name):
    """Persistent buffers with their dtypes; everything else is a parameter (the Haar filters of
    ``wavelet_tranform_l2`` are frozen parameters, as in the official class)."""
    manifest = _manifest(osp, name)
    model = _built(manifest)
    buffers = {k: str(v.dtype).removeprefix("torch.") for k, v in model.named_buffers()}
    assert buffers == {k: v["dtype"] for k, v in manifest["buffers"].items()}
    assert {k for k, _ in model.named_parameters()} == set(manifest["params"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_parameter_counts_per_part(osp, name):
    manifest = _manifest(osp, name)
    model = _built(manifest)
    counts = wfvae_parameter_counts(model) if isinstance(model, WFVAEModel) else causal_vae_parameter_counts(model)
    assert (counts["encoder"], counts["decoder"]) == (manifest["param_elements_encoder"],
                                                     manifest["param_elements_decoder"])
    assert sum(p.numel() for p in model.parameters()) == manifest["counts"]["param_elements"]


@pytest.mark.parametrize("name, preset", MANIFESTS.items())
def test_preset_is_the_released_config(osp, name, preset):
    manifest = _manifest(osp, name)
    cls = WFVAEModel if preset in WFVAE_PRESETS else CausalVAEModel
    presets = WFVAE_PRESETS if preset in WFVAE_PRESETS else CAUSAL_VAE_PRESETS
    with torch.device("meta"):
        assert cls.from_official_config(manifest["config"]).config == presets[preset]


@pytest.mark.parametrize("name", ["manifest_causalvae_4x8x8_v1_0.json", "manifest_causalvae_4x8x8_v1_1.json"])
def test_training_loss_entries_load_and_are_reported(osp, name):
    """A training file with the 56 ``loss.*`` entries loads strictly; the entries are listed, not used."""
    manifest = _manifest(osp, name)
    model = _built(manifest)
    state = {k: torch.empty(v, device="meta") for k, v in manifest["params"].items()}
    state.update({k: torch.empty(v, device="meta") for k, v in manifest["training_only_keys"].items()})
    model.load_state_dict(state, strict=True, assign=True)
    assert sorted(model.ignored_training_keys) == sorted(manifest["training_only_keys"])


def test_wfvae_haar_constants_equal_the_manifest_values(osp):
    """The 24 constant tensors, bit for bit (0.3536, not 1/(2 sqrt 2)); they do not depend on the width."""
    manifest = _manifest(osp, "manifest_wfvae_d8_v1_3.json")
    state = WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", **TINY_WFVAE).state_dict()
    for key, values in manifest["constant_tensors"].items():
        assert torch.equal(state[key].flatten(), torch.tensor(values, dtype=torch.float32)), key


def test_wfvae_main_branch_key_spelling_loads(osp):
    """Files of the later ``main`` code (``wavelet_transform`` + the in/out constants) load strictly."""
    alt = _manifest(osp, "manifest_wfvae_d8_v1_3.json")["alt_keys_main_branch"]
    model = WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", **TINY_WFVAE)
    state = {alt["renamed"].get(k, k): v.clone() for k, v in model.state_dict().items()}
    reference_filters = {k.rsplit(".", 1)[-1]: v for k, v in model.state_dict().items()
                         if k.startswith("decoder.inverse_wavelet_tranform_l2.")}
    for key, shape in alt["added"].items():
        name = key.split(".")[2].removesuffix("_conv") if key.endswith("weight") else key.rsplit(".", 1)[-1]
        state[key] = reference_filters[name].reshape(shape)
    fresh = WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", **TINY_WFVAE)
    fresh.load_state_dict(state, strict=True)
    assert len(fresh.replaced_constants) == 24 + len(alt["added"])
