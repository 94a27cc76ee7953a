"""The Open-Sora 2.0 family declaration: the released files (full-size key manifests) and the text-encoder files
ComfyUI users have are detected as the right kinds, and the released sizes come back from the shapes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_dir

from opensora_core import families
from opensora_core.loading import infer_dit_config, load_vae
from opensora_core.vae.hunyuan import PRESETS as HUNYUAN_PRESETS

V2 = families.by_release("v2.0")


def _manifest(name: str) -> dict:
    root = reference_dir()
    path = None if root is None else root / "v2_0" / name
    if path is None or not path.is_file():
        pytest.skip("Open-Sora 2.0 manifests not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return json.loads(path.read_text())


def _meta_state(manifest: dict) -> dict[str, torch.Tensor]:
    shapes = {**manifest["params"], **manifest["buffers"]}
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def test_the_released_mmdit_is_detected_and_sized_from_its_name():
    """Open_Sora_v2.safetensors: the MMDiT kind, and shapes + the released file name give the official kwargs."""
    manifest = _manifest("manifest_mmdit_v2_0.json")
    state = _meta_state(manifest)
    assert families.detect(state).kind is V2.model
    class_name, config = infer_dit_config(state, name="Open_Sora_v2.safetensors")
    official = {k: v for k, v in manifest["config"].items() if k in config}
    assert class_name == "MMDiTModel" and config == official


def test_the_released_hunyuan_vae_is_detected_and_built_at_its_released_size():
    manifest = _manifest("manifest_hunyuan_vae_v2_0.json")
    state = _meta_state(manifest)
    assert families.detect(state).kind is V2.vae[0]
    model, _, _ = V2.vae[0].build(state, None, 32)
    assert model.config == HUNYUAN_PRESETS["hunyuan-vae"]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v) for k, v in
                                                                           manifest["params"].items()}


def test_the_vae_loader_refuses_a_hunyuan_vae_for_a_v1_model():
    state = _meta_state(_manifest("manifest_hunyuan_vae_v2_0.json"))
    with pytest.raises(Exception, match="Hunyuan"):
        load_vae(state, expect=families.by_release("v1.2").vae)


def test_comfyui_text_encoder_files_are_the_family_text_kinds():
    """t5xxl_fp16.safetensors (T5 encoder keys) and clip_l.safetensors (``text_model.`` keys) as ComfyUI's
    text_encoders folder holds them, in the order the family's text encoders are declared."""
    t5 = dict.fromkeys(["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"])
    clip = dict.fromkeys(["text_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.final_layer_norm.weight",
                          "text_model.embeddings.token_embedding.weight"])
    assert [families.detect(t5).kind, families.detect(clip).kind] == [e.kind for e in V2.text]


def test_a_flux_file_is_named_as_flux_not_taken_for_the_video_model():
    flux = dict.fromkeys(["model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                          "model.diffusion_model.single_blocks.0.linear1.weight"])
    found = families.detect(flux)
    assert found.kind.name == "flux" and "FLUX" in found.kind.description
