"""Open-Sora 2.0 in the nodes (ComfyUI stand-in, tiny models under the official names): the files load through
the same loaders, Text Encode takes T5 + CLIP-L and the empty default negative, the Sampler takes the condition
types and the guidance options, the memory loader sets fp8 and block swap, and the VAE decodes tiled."""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("transformers")
import comfy_stub  # noqa: E402
from tiny_v2_files import write_models  # noqa: E402

SMALL = dict(width=48, height=32, num_frames=9, fps=24.0, steps=2, cfg=7.5, seed=42, loops=1,
             condition_frame_length=0, condition_frame_edit=0.0, align=0)
OFF = "off (retry tiled on out-of-memory)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_v2")
    write_models(root / "models")
    with comfy_stub.installed(root) as env:
        yield env


@pytest.fixture(scope="module")
def v2(env):
    (model,) = env.run("OpenSoraModelLoader", "Open_Sora_v2.safetensors", "fp32", "sdpa")
    (vae,) = env.run("OpenSoraVAELoader", "hunyuan_vae.safetensors", "fp32")
    (t5,) = env.run("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    (clip_l,) = env.run("OpenSoraCLIPLoader", "clip_l.safetensors", "fp32")
    return model, vae, t5, clip_l


def _encode(env, model, t5, clip_l, text="a cat", motion=-1.0):
    caption, _ = env.run("OpenSoraTextEncode", text, "from model", aesthetic_score=6.5, motion_score=motion,
                        camera_motion="none", clean_caption=True, t5=t5, model=model, clip_l=clip_l)
    return caption


def test_the_official_files_load_as_open_sora_2(v2):
    model, vae, _, _ = v2
    assert model.family.release == "v2.0" and vae.geometry.latent_channels == 16


def test_text_encode_prepares_the_2_0_prompt_and_the_empty_negative(env, v2):
    model, _, t5, clip_l = v2
    caption = _encode(env, model, t5, clip_l)
    assert caption.texts == ["a cat. 24 FPS. 4 motion score."]  # aesthetic ignored, -1 motion = official 4
    assert _encode(env, model, t5, clip_l, motion=7).texts == ["a cat. 24 FPS. 7 motion score."]
    y, neg = caption.segments[0][1], caption.default_negative
    assert y.txt.shape == neg.txt.shape == (1, 512, 32) and y.y_vec.shape == (1, 64)
    assert (y.txt - neg.txt).abs().max() > 0


def test_text_encode_without_clip_l_names_the_input(env, v2):
    model, _, t5, _ = v2
    with pytest.raises(ValueError, match="clip_l"):
        _encode(env, model, t5, None)


def _sample(env, model, vae, caption, **kw):
    (latent,) = env.run("OpenSoraSampler", model, vae, caption, **(SMALL | kw))
    return latent


def test_t2v_and_i2v_head_sample_and_decode(env, v2):
    model, vae, t5, clip_l = v2
    caption = _encode(env, model, t5, clip_l)
    image = torch.rand(1, 40, 56, 3)
    (refs,) = env.run("OpenSoraConditionImages", image, "i2v_head")
    t2v = _sample(env, model, vae, caption)
    i2v = _sample(env, model, vae, caption, references=refs)
    assert t2v["samples"].shape == i2v["samples"].shape == (1, 16, 3, 4, 6)
    assert (t2v["samples"] - i2v["samples"]).abs().max() > 1e-3
    env.model_management.REQUIRED.clear()
    frames, fps = env.run("OpenSoraVAEDecode", vae, i2v, "on", 256, 64)
    assert tuple(frames.shape) == (9, 32, 48, 3) and fps == 24
    vae_package = importlib.import_module(type(vae.module).__module__.rsplit(".", 1)[0])  # the pack's own classes
    tiling = vae_package.TilingOptions(256 // 8, 64 // 8)  # the node's tile widgets in latent pixels
    assert env.model_management.REQUIRED == [vae.module.decode_memory_bytes((1, 16, 3, 4, 6), 9, tiling=tiling)] != [0]


def test_guidance_options_change_the_result_and_are_refused_for_v1(env, v2):
    model, vae, t5, clip_l = v2
    caption = _encode(env, model, t5, clip_l)
    (refs,) = env.run("OpenSoraConditionImages", torch.rand(1, 32, 48, 3), "i2v_loop")
    (guidance,) = env.run("OpenSoraGuidance", 1.0, False)
    base = _sample(env, model, vae, caption, references=refs)
    guided = _sample(env, model, vae, caption, references=refs, guidance=guidance)
    assert (base["samples"] - guided["samples"]).abs().max() > 1e-4


def test_a_mask_strategy_is_refused_for_2_0(env, v2):
    model, vae, t5, clip_l = v2
    (refs,) = env.run("OpenSoraMaskBuilder", torch.rand(1, 32, 48, 3), "custom", "0", "latent frames", 1, 0.4)
    with pytest.raises(ValueError, match="condition_type"):
        _sample(env, model, vae, _encode(env, model, t5, clip_l), references=refs)


def test_the_memory_loader_stores_fp8_and_swaps_blocks(env, v2):
    (model,) = env.run("OpenSoraModelLoaderMemory", "Open_Sora_v2.safetensors", "fp32", "sdpa", "fp8 e4m3fn", 1)
    core = f"{env.pack.__name__}.opensora_core.models"  # the pack's own copy of the core
    assert isinstance(model.module.img_in, importlib.import_module(f"{core}.fp8").Fp8Linear)
    assert importlib.import_module(f"{core}.block_swap").block_swap_of(model.module).blocks_on_device == 1
    _, vae, t5, clip_l = v2
    latent = _sample(env, model, vae, _encode(env, model, t5, clip_l))
    assert torch.isfinite(latent["samples"]).all()


def test_a_lora_applies_to_fp8_weights(env, v2):
    """The LoRA Loader merges into the memory loader's fp8 layers (re-quantized) and leaves the input model."""
    from safetensors.torch import save_file

    (model,) = env.run("OpenSoraModelLoaderMemory", "Open_Sora_v2.safetensors", "fp32", "sdpa", "fp8 e4m3fn", -1)
    layer = model.module.img_in
    g = torch.Generator().manual_seed(0)
    loras = env.models / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file({"diffusion_model.img_in.lora_A.weight": torch.randn(2, layer.in_features, generator=g),
               "diffusion_model.img_in.lora_B.weight": torch.randn(layer.out_features, 2, generator=g)},
              str(loras / "img_in.safetensors"))
    before = layer.dequantized()
    (patched,) = env.run("OpenSoraLoraLoader", model, "img_in.safetensors", 1.0)
    assert (patched.module.img_in.dequantized() - before).abs().mean() > 0.1
    torch.testing.assert_close(model.module.img_in.dequantized(), before, rtol=0, atol=0)  # the input is untouched
