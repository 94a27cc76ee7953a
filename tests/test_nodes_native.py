"""The native MODEL nodes with the ComfyUI stand-in (tests/comfy_stub): what they put into the MODEL, the
latent and the conditioning, and sampling through the stand-in's KSampler path (the real ComfyUI runs
in tests/test_native_comfy.py)."""

from __future__ import annotations

import sys

import pytest
import torch

import comfy_stub
from comfy_stub import tiny_models
from opensora_core.sampling import rflow_schedule, rflow_timesteps, transform_shift

SIZE = dict(width=48, height=32, num_frames=17)
SEED = 5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_native")
    tiny_models.write(root / "models")
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.core = {name: cls() for name, cls in CORE_NODES.items()}
        yield env


@pytest.fixture(scope="module")
def v12(env):
    (native,) = env.run("OpenSoraNativeModelLoader", "OpenSora-STDiT-v3.safetensors", "default")
    (model,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v3.safetensors", "fp32", "sdpa")
    (vae,) = env.run("OpenSoraVAELoader", "OpenSora-VAE-v1.2.safetensors", "fp32")
    (t5,) = env.run("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    caption, positive = env.run("OpenSoraTextEncode", "a red ball", "v1.2 (300 tokens)", 6.5, -1.0, "none", True, t5=t5)
    (negative,) = env.run("OpenSoraNullConditioning", positive)
    (settings,) = env.run("OpenSoraSamplingSettings", native, **SIZE, fps=24.0, shift="exact")
    return dict(native=native, model=model, vae=vae, t5=t5, caption=caption, positive=positive, negative=negative,
                settings=settings)


def _module(name: str):
    return sys.modules[f"{comfy_stub.PACK_NAME}.nodes.{name}"]


def test_the_native_loader_gives_a_model_patcher_whose_diffusion_model_is_ours(env, v12):
    """No wrapper between ComfyUI and our module: LoRA keys diffusion_model.<official key> map onto it."""
    native, ours = v12["native"], v12["model"]
    assert type(native.model.diffusion_model) is type(ours.module)
    keys = set(native.model.state_dict())
    assert "diffusion_model.spatial_blocks.0.attn.qkv.weight" in keys and "diffusion_model.y_embedder.y_embedding" in keys
    assert native.model.model_type.name == "FLOW" and "denoise_mask_function" in native.model_options


def test_settings_put_the_video_and_the_exact_shift_into_the_model(v12):
    settings = v12["settings"]
    assert settings.model_options["transformer_options"]["opensora"] == {**{"height": 32, "width": 48},
                                                                         "num_frames": 17, "fps": 24.0}
    sampling = settings.get_model_object("model_sampling")
    assert sampling.shift == pytest.approx(transform_shift(32, 48, 17))
    assert v12["native"].get_model_object("model_sampling").shift == 1.0  # the loaded model is left as it was


def test_settings_scale_the_shift_as_the_pipeline_schedule_does(env, v12):
    """shift_scale 2 doubles the shift; the sigmas then follow the pipeline's schedule with the same scale."""
    (scaled,) = env.run("OpenSoraSamplingSettings", v12["native"], **SIZE, fps=24.0, shift="exact", shift_scale=2.0)
    sampling = scaled.get_model_object("model_sampling")
    assert sampling.shift == pytest.approx(transform_shift(32, 48, 17, scale=2.0)) and sampling.shift > 0
    assert sampling.shift == pytest.approx(2 * v12["settings"].get_model_object("model_sampling").shift)
    times = rflow_schedule(10, height=32, width=48, num_frames=17, scale=2.0)
    plain = rflow_timesteps(10)[:-1]  # the unshifted grid, 1000 .. 100
    torch.testing.assert_close(sampling.sigma(plain) * 1000, times[:-1], atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="shift_scale must be a finite number > 0"):  # an API prompt can send NaN
        env.run("OpenSoraSamplingSettings", v12["native"], **SIZE, fps=24.0, shift="exact", shift_scale=float("nan"))


def _queue_settings(env, num_frames: int, model_file: str, *, lora: bool = False):
    """Queue native loader -> (LoraLoaderModelOnly) -> settings as POST /prompt does, then run the settings
    node's queue-time check on a clone that knows its node id, as ComfyUI's validation does."""
    prompt = {"1": {"class_type": "OpenSoraNativeModelLoader", "inputs": {"model_name": model_file}},
              "3": {"class_type": "OpenSoraSamplingSettings", "inputs": {"model": ["2" if lora else "1", 0]}}}
    if lora:
        prompt["2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0]}}
    sys.modules["server"].PromptServer.instance.trigger_on_prompt({"prompt": prompt})
    clone = env.nodes["OpenSoraSamplingSettings"].PREPARE_CLASS_CLONE({"UNIQUE_ID": "3"})
    return clone.validate_inputs(width=48, height=32, num_frames=num_frames)


def test_settings_refuse_frame_counts_the_model_cannot_take_at_queue_time(env):
    """v1.2 takes 1 or >= 17 frames: refused when queued for the file the native loader names (also through
    LoraLoaderModelOnly); v1.1 takes any count."""
    v12, v11 = "OpenSora-STDiT-v3.safetensors", "OpenSora-STDiT-v2-stage3.safetensors"
    refused = _queue_settings(env, 9, v12)
    assert "num_frames=9" in refused and "Open-Sora v1.2" in refused
    assert "num_frames=9" in _queue_settings(env, 9, v12, lora=True)
    assert _queue_settings(env, 17, v12) is True and _queue_settings(env, 9, v11) is True


def test_sigmas_are_the_open_sora_timesteps_over_1000(env, v12):
    """Open-Sora's shifted timesteps t_i (0..1000) are sigma * 1000 for the flow model."""
    (sigmas,) = env.run("OpenSoraSigmas", v12["settings"], 7)
    expected = rflow_schedule(7, height=32, width=48, num_frames=17) / 1000
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=2e-7)


def test_empty_latent_has_the_vae_latent_frames_and_refuses_counts_the_model_cannot_take(env, v12):
    (latent,) = env.run("OpenSoraEmptyLatentVideo", v12["vae"], width=426, height=240, num_frames=51, batch_size=2)
    assert latent["samples"].shape == (2, 4, 15, 30, 53)
    assert latent["opensora"]["clip_num_frames"] == [51] and latent["opensora"]["width"] == 426
    with pytest.raises(ValueError, match="num_frames=10 does not work with the v1.2 timestep transform"):
        env.run("OpenSoraEmptyLatentVideo", v12["vae"], width=48, height=32, num_frames=10, batch_size=1)
    assert "width 70 is not a multiple of 8" in env.nodes["OpenSoraEmptyLatentVideo"].validate_inputs(70, 64)


def test_text_encode_conditioning_holds_the_caption_and_its_mask(v12):
    """The CONDITIONING is the Open-Sora caption: T5 features padded to 300 tokens and the token mask."""
    ((cond, extras),) = v12["positive"]
    (_, caption), = v12["caption"].segments
    assert torch.equal(cond, caption.y[:, 0]) and torch.equal(extras["attention_mask"], caption.mask)


def test_extra_conds_give_the_caption_and_the_learned_null_caption(v12):
    native = v12["native"].model
    ((cond, extras),) = v12["positive"]
    ((_, null_extras),) = v12["negative"]
    positive = native.extra_conds(cross_attn=cond, device=torch.device("cpu"), **extras)
    negative = native.extra_conds(cross_attn=cond, device=torch.device("cpu"), **null_extras)
    torch.testing.assert_close(positive["y"].cond, cond.float())
    assert torch.equal(negative["y_mask"].cond, positive["y_mask"].cond)  # the prompt's mask on the null caption
    assert torch.equal(negative["y"].cond[0], native.diffusion_model.y_embedder.y_embedding)


def test_conditioning_from_comfyui_t5_is_padded_and_checked():
    """CLIPLoader pixart gives the prompt's tokens without padding or mask: they become the first rows."""
    adapters = _module("native_adapters")
    tokens = torch.randn(1, 5, 8)
    y, mask = adapters.caption_from_conditioning(tokens, None, 12)
    assert y.shape == (1, 12, 8) and torch.equal(y[:, :5], tokens) and mask.tolist() == [[1] * 5 + [0] * 7]
    with pytest.raises(ValueError, match="the prompt has 14 T5 tokens but the model takes 12"):
        adapters.caption_from_conditioning(torch.randn(1, 14, 8), None, 12)


def test_a_mask_that_varies_inside_a_frame_is_refused():
    adapters = _module("native_adapters")
    mask = torch.ones(1, 4, 3, 2, 2)
    assert adapters.frame_ratio(mask).tolist() == [[1.0, 1.0, 1.0]]
    mask[0, :, 1, 0, 0] = 0
    with pytest.raises(ValueError, match="noise_mask varies inside a frame"):
        adapters.frame_ratio(mask)


def test_the_frame_rule_frees_a_frame_once_sigma_reaches_its_ratio(v12):
    """v1.2: a frame is generated at step t iff ratio * 1000 >= t; 0 is never free, 1 always."""
    rule = v12["native"].model.adapter.free_frames
    ratio = torch.tensor([[0.0, 0.4, 1.0]])
    assert rule(ratio, torch.tensor([0.5]), torch.tensor([500.0])).tolist() == [[False, False, True]]
    assert rule(ratio, torch.tensor([0.4]), torch.tensor([400.0])).tolist() == [[False, True, True]]


def test_memory_required_is_the_models_forward_estimate(v12):
    native = v12["native"].model
    shape = (2, 4, 5, 4, 6)
    assert native.memory_required(shape) == native.diffusion_model.forward_memory_bytes(2, (5, 4, 6)) > 0


def test_ksampler_on_the_native_model_matches_our_sampler(env, v12):
    """Through the stand-in's KSampler path (ComfyUI's Euler + CFG arithmetic): same seed, same video."""
    (latent,) = env.run("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    (out,) = env.core["KSampler"].sample(v12["settings"], SEED, 4, 7.0, "euler", "simple", v12["positive"],
                                         v12["negative"], latent, 1.0)
    (ours,) = env.run("OpenSoraSampler", v12["model"], v12["vae"], v12["caption"], **SIZE, fps=24.0, steps=4, cfg=7.0,
                      seed=SEED, loops=1, condition_frame_length=0, condition_frame_edit=0.0, align=0)
    torch.testing.assert_close(out["samples"], ours["samples"], rtol=1e-5, atol=1e-5)
    images, fps = env.run("OpenSoraVAEDecode", v12["vae"], out, "off (retry tiled on out-of-memory)", 512, 128)
    assert images.shape == (17, 32, 48, 3) and fps == 24.0


def test_a_latent_of_another_size_than_the_settings_is_refused(env, v12):
    """Settings for 17 frames, an empty latent for 1 frame: refused before the model samples the wrong video."""
    (latent,) = env.run("OpenSoraEmptyLatentVideo", v12["vae"], width=48, height=32, num_frames=1, batch_size=1)
    with pytest.raises(ValueError, match="Sampling Settings"):
        env.core["KSampler"].sample(v12["settings"], SEED, 2, 7.0, "euler", "simple", v12["positive"],
                                    v12["negative"], latent, 1.0)


def test_native_sampling_previews_with_the_vaes_fitted_map(env, v12):
    preview = _module("preview")
    (latent,) = env.run("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    env.preview_factors.clear()
    env.previews.clear()
    env.core["KSampler"].sample(v12["settings"], SEED, 2, 7.0, "euler", "simple", v12["positive"], v12["negative"],
                                latent, 1.0)
    assert env.preview_factors == [[list(r) for r in preview.rgb_map(v12["vae"]).weight]]
    assert env.previews == [(1, 4, 5, 4, 6)] * 2


def test_with_previews_off_no_colour_map_is_fitted(v12, monkeypatch):
    """``--preview-method none``: the VAE's map is neither fitted nor read (a fit costs minutes on a CPU)."""
    preview = _module("preview")
    from comfy import cli_args

    monkeypatch.setattr(cli_args.args, "preview_method", cli_args.LatentPreviewMethod.NoPreviews)
    monkeypatch.setattr(preview, "_FITTED", {})
    monkeypatch.setattr(preview, "_fit", lambda vae, key: pytest.fail("fitted with previews off"))
    assert preview.rgb_map(v12["vae"]) is None


def test_references_become_a_latent_with_a_per_frame_noise_mask(env, v12):
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(1))
    (refs,) = env.run("OpenSoraMaskBuilder", image, "custom", "0;0,0,0,-1,1,0.5", "latent frames", 17, 0.0)
    (empty,) = env.run("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    (latent,) = env.run("OpenSoraReferenceLatent", refs, v12["vae"], empty, 3)
    assert latent["noise_mask"].shape == (1, 1, 5, 1, 1)
    assert latent["noise_mask"].flatten().tolist() == [0.0, 1.0, 1.0, 1.0, 0.5]
    samples = latent["samples"]
    assert samples[:, :, 1:4].abs().sum() == 0 and samples[:, :, 0].abs().sum() > 0
    torch.testing.assert_close(samples[:, :, 0], samples[:, :, 4])  # the same reference at both ends
    (out,) = env.core["KSampler"].sample(v12["settings"], SEED, 3, 7.0, "euler", "simple", v12["positive"],
                                         v12["negative"], latent, 1.0)
    torch.testing.assert_close(out["samples"][:, :, 0], samples[:, :, 0], rtol=0, atol=1e-5)  # mask 0: kept
    assert not torch.allclose(out["samples"][:, :, 4], samples[:, :, 4])  # 0.5: freed half way, then sampled


def test_v1_1_is_an_eps_model_with_channel_limited_guidance(env):
    """v1.1 guides 3 of the 4 noise channels; the 4th comes from the prompt pass alone."""
    (native,) = env.run("OpenSoraNativeModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "default")
    assert native.model.model_type.name == "EPS"
    guide = native.model_options["sampler_cfg_function"]
    cond, uncond = torch.ones(1, 4, 1, 1, 1), torch.zeros(1, 4, 1, 1, 1)
    out = guide({"cond": cond, "uncond": uncond, "cond_scale": 7.0})
    assert out.flatten().tolist() == [7.0, 7.0, 7.0, 1.0]
    (sigmas,) = env.run("OpenSoraSigmas", native, 10)
    assert sigmas.shape == (11,) and sigmas[-1] == 0 and bool((sigmas[:-1].diff() < 0).all())


def test_v1_0_has_no_native_model(env):
    from opensora_core.families import by_release

    with pytest.raises(ValueError, match="STDiT \\(Open-Sora v1.0\\) has no native ComfyUI MODEL"):
        _module("native_adapters").adapter_for(by_release("v1.0"))
