"""Open-Sora 2.0 as a native ComfyUI MODEL (ComfyUI stand-in, tiny 2.0 files under the official names): the
MODEL, its shift and sigmas, the conditioning from Open-Sora Text Encode, the image condition, the three-pass
GUIDER step by step against our sampler's denoiser, and whole runs against the Open-Sora Sampler node.

Tolerance of the whole-run comparisons: 1e-5 of the output's scale. Both sides run the same float32 model
calls on the same noise, schedule and references; they differ only in where the guidance is combined
(ComfyUI mixes denoised estimates x - sigma v, our sampler velocities: the weights sum to 1, so the results
agree up to rounding) and in Euler's arithmetic ((x - denoised) / sigma vs v): a few float32 ulps per step,
measured ~1e-7 here; a wrong scale, step index, condition or frame put back changes the latent by > 1e-2.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("transformers")
import comfy_stub  # noqa: E402
from tiny_v2_files import write_models  # noqa: E402

from opensora_core.geometry.opensora_v2 import latent_shape  # noqa: E402
from opensora_core.sampling.v2 import get_schedule, shift_alpha  # noqa: E402

SIZE = dict(width=48, height=32, num_frames=9)
SEED = 11
MODEL_FILE = "Open_Sora_v2.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_native_v2")
    write_models(root / "models")
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.core = {name: cls() for name, cls in CORE_NODES.items()}
        yield env


@pytest.fixture(scope="module")
def v2(env):
    (native,) = env.run("OpenSoraNativeModelLoader", MODEL_FILE, "fp32")
    (model,) = env.run("OpenSoraModelLoader", MODEL_FILE, "fp32", "sdpa")
    (vae,) = env.run("OpenSoraVAELoader", "hunyuan_vae.safetensors", "fp32")
    (t5,) = env.run("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    (clip_l,) = env.run("OpenSoraCLIPLoader", "clip_l.safetensors", "fp32")
    caption, positive = env.run("OpenSoraTextEncode", "a red ball rolls", "from model", -1.0, -1.0, "none", True,
                                t5=t5, model=model, clip_l=clip_l)
    (negative,) = env.run("OpenSoraNullConditioning", positive)
    (settings,) = env.run("OpenSoraSamplingSettings", native, **SIZE, fps=24.0, shift="exact")
    (latent,) = env.run("OpenSoraEmptyLatentVideo", vae, **SIZE, batch_size=1)
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(3))
    (refs,) = env.run("OpenSoraConditionImages", image, "i2v_head")
    i2v_pos, i2v_neg = env.run("OpenSoraV2ImageToVideo", positive, negative, refs, vae, latent, SEED)
    return dict(native=native, model=model, vae=vae, caption=caption, positive=positive, negative=negative,
                settings=settings, latent=latent, refs=refs, i2v_pos=i2v_pos, i2v_neg=i2v_neg)


def _module(name: str):
    return sys.modules[f"{comfy_stub.PACK_NAME}.nodes.{name}"]


def _close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    scale = max(1.0, float(theirs.abs().max()))
    delta = float((ours - theirs).abs().max())
    print(f"max |delta| {delta:.3g} (scale {scale:.3g})")
    assert delta <= rel * scale, f"max |delta| {delta} > {rel} x {scale}"


def test_the_2_0_file_loads_as_a_native_flow_model_on_the_16_channel_latent(v2):
    native = v2["native"]
    assert type(native.model.diffusion_model) is type(v2["model"].module)  # no wrapper: LoRA keys map
    assert "diffusion_model.double_blocks.0.img_attn.q_proj.weight" in native.model.state_dict()
    assert native.model.model_type.name == "FLOW" and native.model.latent_format.latent_channels == 16
    assert "denoise_mask_function" not in native.model_options  # the image enters as the condition, not a mask


def test_settings_set_the_official_shift_and_sigmas_are_the_official_times(env, v2):
    shape = latent_shape(1, 32, 48, 9)
    sampling = v2["settings"].get_model_object("model_sampling")
    assert sampling.shift == shift_alpha(shape.tokens_per_frame, shape.frames) and sampling.multiplier == 1000
    (sigmas,) = env.run("OpenSoraSigmas", v2["settings"], 12)
    assert sigmas.tolist() == get_schedule(12, shape.tokens_per_frame, shape.frames)
    with pytest.raises(ValueError, match="Sampling Settings"):
        env.run("OpenSoraSigmas", v2["native"], 12)
    with pytest.raises(ValueError, match="float32"):
        env.run("OpenSoraSamplingSettings", v2["native"], **SIZE, fps=24.0, shift="official bf16 rounding")


def test_text_encode_conditioning_is_t5_pooled_clip_and_the_negative_is_the_empty_prompt(v2):
    ((txt, extras),) = v2["positive"]
    ((neg_txt, neg_extras),) = v2["negative"]
    caption = v2["caption"]
    prompt = caption.segments[0][1]
    assert torch.equal(txt, prompt.txt) and torch.equal(extras["pooled_output"], prompt.y_vec)
    assert torch.equal(neg_txt, caption.default_negative.txt)
    assert torch.equal(neg_extras["pooled_output"], caption.default_negative.y_vec)


def test_image_to_video_puts_the_reference_condition_into_both_conditionings(v2):
    key = _module("native_mmdit").CONDITION_KEY
    ((_, pos),), ((_, neg),) = v2["i2v_pos"], v2["i2v_neg"]
    condition = pos[key]
    assert neg[key] is condition and condition.cond_type == "i2v_head"
    assert condition.masks[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]  # latent frame 0 given
    assert condition.masked_ref[:, :, 0].abs().sum() > 0 and condition.masked_ref[:, :, 1:].abs().sum() == 0


def test_extra_conds_hold_the_condition_channels_and_zeros_without_an_image(v2):
    native = v2["native"].model
    noise = torch.zeros(1, 16, 3, 4, 6)
    (entry,), (plain,) = v2["i2v_pos"], v2["positive"]
    with_image = native.extra_conds(cross_attn=entry[0], noise=noise, **entry[1])["cond"].cond
    without = native.extra_conds(cross_attn=plain[0], noise=noise, **plain[1])["cond"].cond
    assert with_image.shape == without.shape == (1, 17, 3, 4, 6)
    assert without.abs().sum() == 0 and torch.equal(with_image[:, 0, 0], torch.ones(1, 4, 6))


def test_memory_required_is_the_shape_models_forward_estimate(v2):
    native = v2["native"].model
    one = native.memory_required((1, 16, 3, 4, 6))
    assert one == native.diffusion_model.forward_memory_bytes(1, (3, 4, 6)) > 0
    assert native.memory_required((3, 16, 3, 4, 6)) > 2 * one  # three passes in one batch


def _guider(env, v2, positive, negative, cfg=7.5, image_cfg=3.0, oscillation=True):
    (guider,) = env.run("OpenSoraV2Guider", v2["settings"], positive, negative, cfg, image_cfg, oscillation)
    return guider


def test_the_guider_step_matches_our_samplers_denoiser_at_every_step(env, v2):
    """The GUIDER's prediction (ComfyUI's denoised x0) at each step of a 12-step i2v run (oscillation from
    step 10, the image ramp) equals x - t v of our ThreePassGuidance on the same x."""
    from opensora_core.sampling.v2 import GuidanceV2, ThreePassGuidance
    from opensora_core.text.v2 import TextV2

    guider = _guider(env, v2, v2["i2v_pos"], v2["i2v_neg"])
    condition = _module("native_mmdit").condition_of(v2["i2v_pos"])
    caption = v2["caption"]
    text = TextV2(caption.segments[0][1].txt, caption.segments[0][1].y_vec, caption.default_negative.txt,
                  caption.default_negative.y_vec)
    ours = ThreePassGuidance(v2["model"].module, text, GuidanceV2())
    (sigmas,) = env.run("OpenSoraSigmas", v2["settings"], 12)
    captured = []
    inner = guider.predict_noise

    def spy(x, timestep, model_options={}, seed=None):  # noqa: B006
        out = inner(x, timestep, model_options, seed)
        captured.append((x.clone(), float(timestep[0]), out))
        return out

    guider.predict_noise = spy
    guider.sample(torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0)),
                  v2["latent"]["samples"], env.core["KSamplerSelect"].get_sampler("euler")[0], sigmas)
    assert len(captured) == 12
    for i, (x, t, denoised) in enumerate(captured):
        assert t == float(sigmas[i])
        v = ours(x, t, condition, step=i, num_steps=12)
        _close(denoised, x - t * v)


def _custom(env, guider, sigmas, latent):
    noise = env.core["RandomNoise"].get_noise(SEED)[0]
    sampler = env.core["KSamplerSelect"].get_sampler("euler")[0]
    out, _ = env.core["SamplerCustomAdvanced"].sample(noise, guider, sampler, sigmas, latent)
    return out["samples"]


def _our_sampler(env, v2, steps, **kw):
    (latent,) = env.run("OpenSoraSampler", v2["model"], v2["vae"], v2["caption"], **SIZE, fps=24.0, steps=steps,
                        cfg=7.5, seed=SEED, loops=1, condition_frame_length=0, condition_frame_edit=0.0, align=0, **kw)
    return latent["samples"]


def test_guider_text_to_video_matches_the_open_sora_sampler(env, v2):
    (sigmas,) = env.run("OpenSoraSigmas", v2["settings"], 12)
    native = _custom(env, _guider(env, v2, v2["positive"], v2["negative"]), sigmas, v2["latent"])
    _close(native, _our_sampler(env, v2, 12))


def test_guider_image_to_video_matches_the_open_sora_sampler(env, v2):
    """i2v_head: same reference encode (seed), three passes, ramp, oscillation, frame 0 put back."""
    (sigmas,) = env.run("OpenSoraSigmas", v2["settings"], 12)
    native = _custom(env, _guider(env, v2, v2["i2v_pos"], v2["i2v_neg"]), sigmas, v2["latent"])
    ours = _our_sampler(env, v2, 12, references=v2["refs"])
    _close(native, ours)
    reference = _module("native_mmdit").condition_of(v2["i2v_pos"]).masked_ref[:, :, 0]
    torch.testing.assert_close(native[:, :, 0], reference, rtol=0, atol=0)  # put back as the official code does


def test_ksampler_cfg_is_the_official_text_to_video_without_oscillation(env, v2):
    """KSampler euler + simple (20 steps: 1000/20 is whole, so 'simple' is the official grid) with CFG 7.5
    is the official t2v sampler with oscillation off (it sets the scale to 1 on odd steps from step 10)."""
    (out,) = env.core["KSampler"].sample(v2["settings"], SEED, 20, 7.5, "euler", "simple", v2["positive"],
                                         v2["negative"], v2["latent"], 1.0)
    (no_oscillation,) = env.run("OpenSoraGuidance", 3.0, False)
    _close(out["samples"], _our_sampler(env, v2, 20, guidance=no_oscillation))
    assert (out["samples"] - _our_sampler(env, v2, 20)).abs().max() > 1e-3  # oscillation does change it



def test_guider_loop_matches_the_open_sora_sampler_with_both_ends_put_back(env, v2):
    """i2v_loop: a first and a last image condition latent frames 0 and T-1; both are written back."""
    images = [torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(s)) for s in (4, 5)]
    (refs,) = env.run("OpenSoraConditionImages", images[0], "i2v_loop", images[1])
    positive, negative = env.run("OpenSoraV2ImageToVideo", v2["positive"], v2["negative"], refs, v2["vae"],
                                 v2["latent"], SEED)
    (sigmas,) = env.run("OpenSoraSigmas", v2["settings"], 4)
    native = _custom(env, _guider(env, v2, positive, negative), sigmas, v2["latent"])
    _close(native, _our_sampler(env, v2, 4, references=refs))
    reference = _module("native_mmdit").condition_of(positive).masked_ref
    assert torch.equal(native[:, :, 0], reference[:, :, 0]) and torch.equal(native[:, :, -1], reference[:, :, -1])


def test_a_learned_null_caption_marker_is_refused_for_2_0(v2):
    """A v1.x-style negative (no encoded empty prompt beside it) would silently guide against the prompt."""
    null = _module("native_video").NULL_KEY
    ((txt, extras),) = v2["positive"]
    with pytest.raises(ValueError, match="no learned null caption"):
        v2["native"].model.extra_conds(cross_attn=txt, noise=torch.zeros(1, 16, 3, 4, 6),
                                       pooled_output=extras["pooled_output"], **{null: True})
