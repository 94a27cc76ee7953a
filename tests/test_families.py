"""The family registry: declarations, detection, and a family plugged in by registering it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import reference_dir
from opensora_core import families
from opensora_core.checkpoints import CheckpointError
from opensora_core.families import registry
from opensora_core.loading import infer_dit_config
from opensora_core.sampling import sample_rflow


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry tables, restored after the test (registering is global)."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))


def _manifest_state(name: str, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    root = reference_dir()
    if root is None:
        pytest.skip("reference set not found")
    data = json.loads((root / name).read_text())
    shapes = {**data["params"], **data["buffers"]}
    return {k: torch.empty(v, device="meta") for k, v in shapes.items() if k not in drop}


def test_every_family_declares_one_geometry_and_its_caption_length():
    """Each release's caption length is its T5 max length; its VAE kinds share one latent geometry."""
    lengths = {f.release: f.caption_length for f in families.families()}
    assert {r: lengths[r] for r in ("v1.2", "v1.1", "v1.0", "v2.0")} == {"v1.2": 300, "v1.1": 200, "v1.0": 120,
                                                                     "v2.0": 512}
    assert all(len({kind.geometry for kind in f.vae}) == 1 for f in families.families())


def test_a_shadowed_kind_gives_way():
    """STDiT2 files carry STDiT's markers too; the VAE v1.2 carries an SD-VAE: the specific kind wins."""
    stdit2 = dict.fromkeys(["t_block_temp.1.weight", "blocks.0.attn_temp.qkv.weight", "t_block.1.weight"])
    assert families.detect(stdit2).kind.name == "STDiT2"
    v12 = dict.fromkeys(["temporal_vae.encoder.conv_in.conv.weight",
                         "spatial_vae.module.encoder.down_blocks.0.resnets.0.norm1.weight"])
    assert families.detect(v12).kind.name == "vae_v1_2"


def test_a_renamed_v1_0_file_without_tables_names_the_presets():
    """Released v1.0 .pth files omit their position tables: the size comes from the official file name or
    an explicit preset, never from a guess."""
    state = _manifest_state("v1_1/manifest_stdit_v1_0_xl2_16x256x256.json", drop=("pos_embed", "pos_embed_temporal"))
    with pytest.raises(CheckpointError, match="does not store its input_size.*STDiT-XL/2-16x512x512"):
        infer_dit_config(state, name="my-v1.pth")
    _, official = infer_dit_config(state, name="OpenSora-v1-HQ-16x256x256.pth")
    _, chosen = infer_dit_config(state, preset="STDiT-XL/2-16x256x256")
    assert official["input_size"] == chosen["input_size"] == [16, 32, 32] and official["space_scale"] == 0.5
    assert official["num_heads"] == 16  # every STDiT preset of this width agrees


def test_a_new_family_plugs_in_by_registering(scratch_registry):
    """A family module only builds declarations and registers them; detection and lookups find it."""
    kind = families.ModelKind(name="ToyDiT", class_name="STDiT3", markers=("toy.block.0.weight",),
                              description="a toy diffusion transformer", fix="load it as a toy")
    v12 = families.by_release("v1.2")
    toy = families.register(families.Family(
        name="toy-v1", system="Toy", release="t1", model=kind, vae=v12.vae, vae_name=v12.vae_name, text=v12.text,
        sampler=families.Sampler(name="toy", schedule=lambda request: None, sample=sample_rflow),
        conditioning=None, defaults=v12.defaults,
    ))
    assert families.detect({"toy.block.0.weight": None}).kind is kind
    assert families.by_name("toy-v1") is toy and families.by_release("t1") is toy
    assert families.releases_text(families.families_using(v12.vae)) == "Open-Sora v1.2 or Toy t1 models"
