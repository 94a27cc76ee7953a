"""The ComfyUI nodes with Open-Sora-Plan v1.3 files (tiny models in the released folder layout, ComfyUI stand-in)."""

from __future__ import annotations

import pytest
import torch

import comfy_stub
import tiny_osp
from opensora_core.text.osp_prompts import OSP_V1_3_NEGATIVE_PROMPT, OSP_V1_3_PROMPT_TEMPLATE
from opensora_core.text.t5 import T5TextEncoder

SMALL = dict(width=64, height=32, num_frames=9, fps=18.0, steps=2, cfg=7.5, seed=7, loops=1,
             condition_frame_length=0, condition_frame_edit=0.0, align=0)
LABEL = "Open-Sora-Plan v1.3 (512 tokens)"
TOL = dict(atol=1e-5, rtol=1e-5)  # the same float32 computation twice, grouped differently by no code path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    tiny_osp.write_comfy(root / "models")
    with comfy_stub.installed(root) as env:
        yield env


@pytest.fixture(scope="module")
def osp(env):
    (t2v,) = env.run("OpenSoraModelLoader", tiny_osp.COMFY_T2V, "fp32", "sdpa")
    (i2v,) = env.run("OpenSoraModelLoader", tiny_osp.COMFY_I2V, "fp32", "sdpa")
    (vae,) = env.run("OpenSoraVAELoader", tiny_osp.COMFY_VAE, "fp32")
    (mt5,) = env.run("OpenSoraT5Loader", tiny_osp.COMFY_MT5, "fp32")
    return t2v, i2v, vae, mt5


def _encode(env, mt5, model, text="a red ball rolls", length="from model"):
    caption, _ = env.run("OpenSoraTextEncode", text, length, 6.5, -1.0, "none", True, t5=mt5, model=model)
    return caption


def _sample(env, model, vae, caption, **kw):
    (latent,) = env.run("OpenSoraSampler", model, vae, caption, **(SMALL | kw))
    return latent


def _image(seed: int, frames: int = 1) -> torch.Tensor:
    return torch.rand(frames, 40, 56, 3, generator=torch.Generator().manual_seed(seed))


def test_loaders_detect_the_released_files(osp):
    t2v, i2v, vae, mt5 = osp
    assert (t2v.family.name, i2v.family.name) == ("open-sora-plan-v1.3", "open-sora-plan-v1.3-i2v")
    assert (vae.geometry.latent_channels, vae.geometry.time_factor) == (8, 4)
    assert type(mt5.encoder.model).__name__ == "MT5EncoderModel"


def test_text_encode_wraps_the_prompt_and_encodes_the_release_negative(env, osp):
    t2v, _, _, mt5 = osp
    caption = _encode(env, mt5, t2v, "A Red Ball")
    assert caption.texts == [OSP_V1_3_PROMPT_TEMPLATE.format("A Red Ball")]  # no lower-casing, no cleaning
    direct = T5TextEncoder(mt5.encoder.model, mt5.encoder.tokenizer, max_length=512)
    torch.testing.assert_close(caption.default_negative.y, direct.encode([OSP_V1_3_NEGATIVE_PROMPT]).y.float(), **TOL)
    torch.testing.assert_close(caption.plain[0][1].y, direct.encode(["A Red Ball"]).y.float(), **TOL)
    assert caption.max_length == 512


def test_caption_length_can_name_the_release(env, osp):
    _, _, _, mt5 = osp
    assert LABEL in env.nodes["OpenSoraTextEncode"].INPUT_TYPES()["required"]["caption_length"][1]["options"]
    assert _encode(env, mt5, None, length=LABEL).texts[0].startswith(OSP_V1_3_PROMPT_TEMPLATE[:10])


def test_sampler_guides_against_the_release_negative_by_default(env, osp):
    t2v, _, vae, mt5 = osp
    caption = _encode(env, mt5, t2v)
    default = _sample(env, t2v, vae, caption)
    negative = _encode(env, mt5, t2v, OSP_V1_3_NEGATIVE_PROMPT)  # as written: a connected negative gets no template
    explicit = _sample(env, t2v, vae, caption, negative=negative)
    assert default["samples"].shape == (1, 8, 3, 4, 8)
    torch.testing.assert_close(default["samples"], explicit["samples"], **TOL)
    other = _sample(env, t2v, vae, caption, negative=_encode(env, mt5, t2v, "blurry"))
    assert (other["samples"] - default["samples"]).abs().max() > 1e-3


@pytest.mark.parametrize("preset, frames, images", [
    ("first frame (image to video)", 1, 1),  # mask type i2v
    ("first and last frame (stitching)", 1, 2),  # transition
    ("extend from last frames", 5, 1),  # continuation from the video's last 3 frames
])
def test_mask_builder_presets_condition_the_i2v_model(env, osp, preset, frames, images):
    _, i2v, vae, mt5 = osp
    caption = _encode(env, mt5, i2v)

    def sampled(seed):
        extra = {"image_2": _image(seed + 1)} if images == 2 else {}
        (refs,) = env.run("OpenSoraMaskBuilder", _image(seed, frames), preset, "", "latent frames", 3, 0.4, **extra)
        return _sample(env, i2v, vae, caption, references=refs)["samples"]

    assert (sampled(1) - sampled(5)).abs().max() > 1e-4


def test_decode_and_encode_keep_4n_plus_1_frames(env, osp):
    t2v, _, vae, mt5 = osp
    latent = _sample(env, t2v, vae, _encode(env, mt5, t2v))
    env.model_management.REQUIRED.clear()
    images, fps = env.run("OpenSoraVAEDecode", vae, latent, "off (retry tiled on out-of-memory)", 512, 128)
    assert images.shape == (9, 32, 64, 3) and fps == 18.0
    assert env.model_management.REQUIRED == [vae.module.decode_memory_bytes(tuple(latent["samples"].shape), 9)] != [0]
    (again,) = env.run("OpenSoraVAEEncode", vae, images)
    assert again["samples"].shape == (1, 8, 3, 4, 8)


def test_the_i2v_model_refuses_loops(env, osp):
    _, i2v, vae, mt5 = osp
    with pytest.raises(ValueError, match="no loop"):
        _sample(env, i2v, vae, _encode(env, mt5, i2v), loops=2)
