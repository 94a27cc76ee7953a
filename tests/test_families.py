"""The family registry: declarations, detection, and a family plugged in by registering it."""

from __future__ import annotations

import dataclasses

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
    assert lengths == {"v1.2": 300, "v1.1": 200, "v1.0": 120, "v1.3": 512, "v2.0": 512}
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


def test_a_family_declares_its_default_size_once():
    """Size presets with their default names, or (no presets) the sample script's size; never both."""
    v12 = families.by_release("v1.2")
    fields = dict(name="toy-v1", system="Toy", release="t1", model=v12.model, vae=v12.vae, vae_name=v12.vae_name,
                  text=v12.text, sampler=v12.sampler, conditioning=None)
    with pytest.raises(ValueError, match="not Defaults.size"):
        families.Family(**fields, defaults=dataclasses.replace(v12.defaults, size=(240, 426)))
    with pytest.raises(ValueError, match="declares Defaults.size"):
        families.Family(**fields, defaults=v12.defaults, image_size=None)


def test_score_phrases_are_taken_as_each_family_was_trained():
    v12, v11, v20 = (families.by_release(r) for r in ("v1.2", "v1.1", "v2.0"))
    osp = families.by_name("open-sora-plan-v1.3")
    assert all(v12.takes_phrase(name) for name in ("aesthetic_score", "motion_score", "camera_motion"))
    assert [v20.takes_phrase(name) for name in ("aesthetic_score", "motion_score", "camera_motion")] == [
        False, True, False]  # 2.0 appends "<x> motion score." only
    assert not any(f.takes_phrase("motion_score") for f in (v11, osp))


# ---------------------------------------------------------------------------
# Open-Sora-Plan: every released file is detected, and the v1.3 classes build and load from their manifests
# ---------------------------------------------------------------------------

OSP_MANIFESTS = {
    "osp/manifest_causalvae_4x8x8_v1_0.json": "osp_causalvae_v1_0",
    "osp/manifest_causalvae_4x8x8_v1_1.json": "osp_causalvae_v1_1",
    "osp/manifest_causalvae_d4_4x8x8_v1_2.json": "osp_causalvae_v1_2",
    "osp/manifest_wfvae_d8_v1_3.json": "osp_wfvae",
    "osp/manifest_opensora_t2v_v1_3_any93x640x640.json": "OpenSoraT2V_v1_3",
}


def _osp_manifest(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    root = reference_dir()
    if root is None:
        pytest.skip("reference set not found")
    data = json.loads((root / name).read_text())
    shapes = {**data["params"], **{k: (v["shape"] if isinstance(v, dict) else v) for k, v in data["buffers"].items()}}
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    for key, values in data.get("constant_tensors", {}).items():  # the WF-VAE Haar constants, exact values
        state[key] = torch.tensor(values).reshape(shapes[key])
    return data, state


@pytest.mark.parametrize("manifest, kind", OSP_MANIFESTS.items())
def test_every_released_open_sora_plan_file_is_detected(manifest, kind):
    data, state = _osp_manifest(manifest)
    assert families.detect(state).kind.name == kind
    training = {k: torch.empty(0, device="meta") for k in data.get("training_only_keys", [])}
    assert families.detect({**state, **training}).kind.name == kind  # v1.0/v1.1 training files carry loss.*


def test_the_wfvae_main_branch_spelling_is_its_own_kind():
    data, state = _osp_manifest("osp/manifest_wfvae_d8_v1_3.json")
    alt = data["alt_keys_main_branch"]
    main = {alt["renamed"].get(k, k): v for k, v in state.items()}
    main.update({k: torch.empty(shape, device="meta") for k, shape in alt["added"].items()})
    found = families.detect(main)
    assert found.kind.name == "osp_wfvae_main" and found.kind.geometry == families.by_name("open-sora-plan-v1.3").geometry


@pytest.mark.parametrize("manifest", [m for m in OSP_MANIFESTS if "vae" in m])
def test_every_released_open_sora_plan_vae_builds_its_release_layout(manifest):
    """The kind's build (no config saved: the release preset) takes the file's keys and shapes strictly."""
    from opensora_core.checkpoints import check_state_dict

    data, state = _osp_manifest(manifest)
    state.update({k: torch.empty(0, device="meta") for k in data.get("training_only_keys", [])})
    kind = families.detect(state).kind
    model, target, loadable = kind.build(state, None, 32, None)
    check_state_dict(target, loadable, source=manifest)  # raises on a missing, extra or misshaped key
    assert model.geometry == kind.geometry


def test_the_v1_3_transformers_are_read_from_their_shapes():
    _, state = _osp_manifest("osp/manifest_opensora_t2v_v1_3_any93x640x640.json")
    class_name, config = infer_dit_config(state)
    assert class_name == "OpenSoraT2V_v1_3" and config == {**config, "num_attention_heads": 24, "sparse_n": 4}
    inpaint = {**state, **{k: torch.empty(s, device="meta") for k, s in [
        ("pos_embed_mask.0.proj.weight", (2304, 4, 2, 2)), ("pos_embed_mask.0.proj.bias", (2304,)),
        ("pos_embed_mask.1.weight", (2304, 2304)), ("pos_embed_masked_hidden_states.0.proj.weight", (2304, 8, 2, 2)),
        ("pos_embed_masked_hidden_states.0.proj.bias", (2304,)), ("pos_embed_masked_hidden_states.1.weight", (2304, 2304)),
    ]}}
    class_name, config = infer_dit_config(inpaint)
    assert class_name == "OpenSoraInpaint_v1_3" and config["vae_scale_factor_t"] == 4
    assert families.for_class(class_name).conditioning is not None
    assert families.for_class("OpenSoraT2V_v1_3").conditioning is None


def test_open_sora_plan_declares_the_release_sampling():
    for name in ("open-sora-plan-v1.3", "open-sora-plan-v1.3-i2v"):
        family = families.by_name(name)
        d = family.defaults
        assert (d.steps, d.cfg_scale, d.num_frames, d.fps) == (100, 7.5, 93, 18.0)
        assert family.caption_length == 512 and family.text[0].kind.class_name == "MT5EncoderModel"
        assert d.negative_prompt.strip().startswith("nsfw") and "{}" in d.prompt_template
    training = families.by_name("open-sora-plan-v1.3").training
    assert training.objective == "vprediction" and training.snr_gamma == 5.0 and training.zero_snr
    assert families.by_name("open-sora-plan-v1.3-i2v").training is None  # the inpainting trainer is not ported


def test_every_family_with_a_causal_vae_refuses_its_frame_counts_through_the_sampler():
    """The Sampler node checks frame counts when a prompt is queued through ``Sampler.check_frames``: a family
    whose VAE takes only 1 + k * time_factor frames must refuse the others there, naming the nearest counts."""
    for family in families.families():
        geometry = family.geometry
        if not geometry.causal:
            continue
        bad = 1 + 2 * geometry.time_factor + 1
        assert family.sampler.check_frames is not None, family.title
        family.sampler.check_frames(bad - 1)
        with pytest.raises(ValueError, match=f"num_frames={bad}.*use {bad - 1} or"):
            family.sampler.check_frames(bad)
