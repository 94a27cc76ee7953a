"""Full-size presets reproduce the released state dicts key for key and shape for shape (meta device)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from opensora_core.families import build_model
from opensora_core.models import build_preset, presets

# manifest file -> preset that must reproduce it
MANIFESTS = {
    "v1_2/manifest_stdit3_xl2.json": "STDiT3-XL/2",
    "v1_1/manifest_stdit2_xl2_stage3.json": "STDiT2-XL/2",
    "v1_1/manifest_stdit_v1_0_xl2_16x256x256.json": "STDiT-XL/2-16x256x256",
    "v1_1/manifest_stdit_v1_0_xl2_16x512x512.json": "STDiT-XL/2-16x512x512",
}


def _manifest(reference, name: str) -> dict:
    return json.loads((reference / name).read_text())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _expected(manifest: dict) -> dict[str, list[int]]:
    return {**manifest["params"], **manifest["buffers"]}


@pytest.mark.parametrize("manifest_name, preset", MANIFESTS.items())
def test_preset_state_dict_equals_manifest(reference, manifest_name, preset):
    manifest = _manifest(reference, manifest_name)
    with torch.device("meta"):
        model = build_preset(preset)
    assert _shapes(model) == _expected(manifest)


@pytest.mark.parametrize("manifest_name", MANIFESTS)
def test_official_config_state_dict_equals_manifest(reference, manifest_name):
    """build_model(class, released config) gives the same keys, shapes, and persistent buffers."""
    manifest = _manifest(reference, manifest_name)
    with torch.device("meta"):
        model = build_model(manifest["class"], manifest["config"])
    assert _shapes(model) == _expected(manifest)
    buffers = {name for name, _ in model.named_buffers()}
    assert set(manifest["buffers"]) <= buffers <= set(model.state_dict())


@pytest.mark.parametrize("manifest_name", MANIFESTS)
def test_non_persistent_buffers_are_not_in_state_dict(reference, manifest_name):
    manifest = _manifest(reference, manifest_name)
    transient = manifest.get("non_persistent_buffers") or manifest.get("non_persistent_buffers_not_in_checkpoint") or {}
    with torch.device("meta"):
        model = build_model(manifest["class"], manifest["config"])
    assert not set(transient) & set(model.state_dict())


@pytest.mark.parametrize("manifest_name", [m for m in MANIFESTS if m.startswith("v1_1/")])
def test_state_dict_order_follows_official(reference, manifest_name):
    manifest = _manifest(reference, manifest_name)
    with torch.device("meta"):
        model = build_model(manifest["class"], manifest["config"])
    assert list(model.state_dict()) == manifest["state_dict_key_order"]


@pytest.mark.parametrize("manifest_name, preset", MANIFESTS.items())
def test_preset_config_is_the_released_config(reference, manifest_name, preset):
    """Every field of the preset equals the released config (lists compared as tuples)."""
    manifest = _manifest(reference, manifest_name)
    _, config = presets()[preset]
    ours = dataclasses.asdict(config)
    released = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items() if k in ours}
    assert {k: ours[k] for k in released} == released


def test_rope_frequencies_are_a_frozen_state_dict_entry():
    with torch.device("meta"):
        model = build_preset("STDiT3-XL/2")
    assert "rope.freqs" in model.state_dict()
    assert not model.rope.freqs.requires_grad
