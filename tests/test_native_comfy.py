"""The native MODEL inside a real ComfyUI: KSampler / SamplerCustomAdvanced against our own sampler.

Needs ComfyUI's source and Python packages; skipped otherwise (CI has no ComfyUI)::

    COMFYUI_DIR=/path/to/ComfyUI PYTHONPATH=<ComfyUI's site-packages> python -m pytest -s tests/test_native_comfy.py

Everything runs on the CPU in float32 with tiny models (official key names): ComfyUI's own sampling code
(``nodes.common_ksampler``, ``comfy_extras.nodes_custom_sampler``, ``comfy.sd.load_lora_for_models``)
drives our native MODEL, and the result is compared with the Open-Sora Sampler node (or the core
sampler) on the same initial noise. Each comparison prints its max |difference| (``-s`` shows them).
Tolerance: 1e-5 relative to the output's scale, the float32 rounding of two orders of the same
arithmetic over up to 30 steps (measured: ~1e-7).
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

SIZE = dict(width=48, height=32, num_frames=17)
SEED = 7
PROMPT = "a red ball rolls"


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> float:
    delta = float((ours.float() - theirs.float()).abs().max())
    scale = max(1.0, float(ours.abs().max()))
    print(f"\n{name}: max |delta| {delta:.3g} (output scale {scale:.3g})")
    assert delta <= rel * scale, f"{name}: max |delta| {delta} > {rel} x {scale}"
    return delta


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """ComfyUI importable (CPU), its model folders pointing at tiny models, our pack loaded into it."""
    sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths

    import comfy_stub
    from comfy_stub import tiny_models

    # T5 with ComfyUI's tokenizer (no tokenizer beside it): our Text Encode and CLIPLoader see the same tokens
    root = tiny_models.write(tmp_path_factory.mktemp("models"), t5_vocab=32128, tokenizer_beside=False)
    for folder in ("diffusion_models", "vae", "text_encoders", "loras"):
        (root / folder).mkdir(exist_ok=True)
        folder_paths.add_model_folder_path(folder, str(root / folder), is_default=True)
    pack = comfy_stub.load_pack("opensora_pack_native_test")
    nodes = comfy_stub.registered_nodes(pack)

    class Run:
        models = root

        def __call__(self, node_id, *args, **kwargs):
            return nodes[node_id].PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(*args, **kwargs).args

    return Run()


@pytest.fixture(scope="module")
def v12(comfy):
    (native,) = comfy("OpenSoraNativeModelLoader", "OpenSora-STDiT-v3.safetensors", "fp32")
    (model,) = comfy("OpenSoraModelLoader", "OpenSora-STDiT-v3.safetensors", "fp32", "sdpa")
    (vae,) = comfy("OpenSoraVAELoader", "OpenSora-VAE-v1.2.safetensors", "fp32")
    (t5,) = comfy("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    caption, positive = comfy("OpenSoraTextEncode", PROMPT, "v1.2 (300 tokens)", 6.5, -1.0, "none", True, t5=t5)
    (negative,) = comfy("OpenSoraNullConditioning", positive)
    return dict(native=native, model=model, vae=vae, caption=caption, positive=positive, negative=negative)


def _our_sampler(comfy, v12, steps: int, references=None) -> torch.Tensor:
    (latent,) = comfy("OpenSoraSampler", v12["model"], v12["vae"], v12["caption"], **SIZE, fps=24.0, steps=steps,
                      cfg=7.0, seed=SEED, loops=1, condition_frame_length=0, condition_frame_edit=0.0, align=0,
                      references=references)
    return latent["samples"]


def _settings(comfy, native):
    (model,) = comfy("OpenSoraSamplingSettings", native, **SIZE, fps=24.0, shift="exact")
    return model


def test_native_nodes_are_registered_in_a_real_comfyui(comfy):
    import comfy_stub

    pack = sys.modules["opensora_pack_native_test"]
    names = set(comfy_stub.registered_nodes(pack))
    assert {"OpenSoraNativeModelLoader", "OpenSoraSamplingSettings", "OpenSoraSigmas", "OpenSoraEmptyLatentVideo",
            "OpenSoraNullConditioning", "OpenSoraReferenceLatent"} <= names


def test_ksampler_euler_matches_our_sampler_text_to_video(comfy, v12):
    """KSampler (euler, simple, 25 steps: 1000/25 is whole, so 'simple' hits Open-Sora's grid) on the same
    seed: ComfyUI's prepare_noise and our sampler draw the start noise from the same CPU stream."""
    import nodes as comfy_nodes

    (latent,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    model = _settings(comfy, v12["native"])
    (out,) = comfy_nodes.common_ksampler(model, SEED, 25, 7.0, "euler", "simple", v12["positive"],
                                         v12["negative"], latent)
    _close("KSampler euler/simple 25 steps vs Open-Sora Sampler (t2v)", _our_sampler(comfy, v12, 25), out["samples"])


def _custom_sampler(comfy, model, positive, negative, latent, steps: int, noise: torch.Tensor) -> torch.Tensor:
    """SamplerCustomAdvanced with our sigmas, euler, CFGGuider and a NOISE object giving ``noise``."""
    from comfy_extras import nodes_custom_sampler as custom

    class GivenNoise:
        seed = SEED

        def generate_noise(self, input_latent):
            return noise.clone()

    (sigmas,) = comfy("OpenSoraSigmas", model, steps)
    (guider,) = _v1(custom.CFGGuider, model=model, positive=positive, negative=negative, cfg=7.0)
    (sampler,) = _v1(custom.KSamplerSelect, sampler_name="euler")
    out, _ = _v1(custom.SamplerCustomAdvanced, noise=GivenNoise(), guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=latent)
    return out["samples"]


def _v1(cls, **inputs):
    """Run one of ComfyUI's V1 nodes (INPUT_TYPES / FUNCTION) as its executor does."""
    return getattr(cls(), cls.FUNCTION)(**inputs)


def test_custom_sampler_with_our_sigmas_matches_at_the_official_30_steps(comfy, v12):
    """30 steps do not divide 1000 ('simple' would be off by up to 1.5e-3 in sigma); our SIGMAS are exact."""
    from comfy import sample as comfy_sample

    (latent,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    model = _settings(comfy, v12["native"])
    noise = comfy_sample.prepare_noise(latent["samples"], SEED)
    out = _custom_sampler(comfy, model, v12["positive"], v12["negative"], latent, 30, noise)
    _close("SamplerCustomAdvanced + Open-Sora Sigmas 30 steps vs Open-Sora Sampler (t2v)",
           _our_sampler(comfy, v12, 30), out)


def test_references_as_a_noise_mask_match_our_sampler_image_to_video(comfy, v12):
    """i2v: the reference latent with its noise_mask through SamplerCustomAdvanced, against our sampler on the
    same references (same seed: same posterior draws) and the same start noise (drawn after them)."""
    from comfy_stub.tiny_models import vae_v1_2  # noqa: F401  (the VAE file the loader read)
    from opensora_core.pipeline import encode_references

    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(3))
    (refs,) = comfy("OpenSoraMaskBuilder", image, "first frame (image to video)", "", "latent frames", 17, 0.0)
    (empty,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    (latent,) = comfy("OpenSoraReferenceLatent", refs, v12["vae"], empty, SEED)
    assert latent["noise_mask"][0, 0, :, 0, 0].tolist() == [0.0] + [1.0] * 4
    generator = torch.Generator().manual_seed(SEED)
    encode_references(v12["vae"].module, refs.frames, SIZE["height"], SIZE["width"], generator)  # same draws
    noise = torch.randn(latent["samples"].shape, generator=generator)
    out = _custom_sampler(comfy, _settings(comfy, v12["native"]), v12["positive"], v12["negative"], latent, 30, noise)
    ours = _our_sampler(comfy, v12, 30, references=refs)
    _close("SamplerCustomAdvanced i2v (noise_mask) vs Open-Sora Sampler (i2v)", ours, out)
    torch.testing.assert_close(out[:, :, :1], latent["samples"][:, :, :1], rtol=0, atol=1e-5)  # the reference


# ---------------------------------------------------------------------------
# The official rectified-flow cases replayed through the native path
# ---------------------------------------------------------------------------


def _case(name: str):
    from safetensors.torch import load_file

    from conftest import reference_cases

    found = reference_cases(name)
    if not found:
        pytest.skip("reference set not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return found[0], load_file(found[0] / "io.safetensors")


def _load_native(path) -> object:
    """A native MODEL from any path (the loader node takes names in models/diffusion_models)."""
    pack = "opensora_pack_native_test"
    bridge = sys.modules[f"{pack}.nodes.comfy_bridge"]
    return sys.modules[f"{pack}.nodes.native_model"].load_native(bridge.native_api(), str(path), torch.float32)


def _replay(comfy, case, io_, latent_samples, noise_mask=None):
    """The case's model and inputs through SamplerCustomAdvanced: its captions as CONDITIONING (batch 2), the
    null caption as the negative, its size as the settings, its initial noise as the NOISE. (output, MODEL)"""
    native = _load_native(case / "weights.safetensors")
    args = {k.removeprefix("in.model_args."): float(v[0]) for k, v in io_.items() if k.startswith("in.model_args.")}
    (model,) = comfy("OpenSoraSamplingSettings", native, width=int(args["width"]), height=int(args["height"]),
                     num_frames=int(args["num_frames"]), fps=args["fps"], shift="exact")
    positive = [[io_["in.y_cond"][:, 0], {"attention_mask": io_["in.text_mask"]}]]
    (negative,) = comfy("OpenSoraNullConditioning", positive)
    latent = {"samples": latent_samples} | ({} if noise_mask is None else {"noise_mask": noise_mask})
    return _custom_sampler(comfy, model, positive, negative, latent, 5, io_["in.z_noise"]), native


def test_golden_rflow_t2v_through_the_native_path(comfy):
    case, io_ = _case("rflow_sample_t2v")
    out, _ = _replay(comfy, case, io_, torch.zeros_like(io_["in.z_noise"]))
    _close("golden rflow_sample_t2v via SamplerCustomAdvanced", io_["out.z_final"], out)


def test_golden_rflow_masked_through_the_native_path(comfy):
    """Sample 0 (mask 0,1,1,1,1) must equal the official output. Sample 1 has an edit frame (mask 0.5): ComfyUI
    continues it from the initial noise where the official sampler draws fresh noise when the frame is freed,
    so it equals our sampler fed the initial noise as that draw, and differs from the official run by that."""
    from opensora_core.sampling import GuidedModel, RecordedNoise, rflow_schedule, sample_rflow

    case, io_ = _case("rflow_sample_masked")
    mask = io_["out.mask"]  # (B, T)
    start = torch.where(mask[:, None, :, None, None] < 1, io_["in.z_after_mask_strategy"], 0.0)
    out, native = _replay(comfy, case, io_, start, mask[:, None, :, None, None])
    _close("golden rflow_sample_masked sample 0 via SamplerCustomAdvanced", io_["out.z_final"][:1], out[:1])
    official_delta = float((io_["out.z_final"][1:] - out[1:]).abs().max())
    model = native.model.diffusion_model
    args = {k.removeprefix("in.model_args."): v for k, v in io_.items() if k.startswith("in.model_args.")}
    caption = type("Caption", (), {"y": io_["in.y_cond"], "mask": io_["in.text_mask"]})()
    guided = GuidedModel(model, caption, io_["in.y_null"], args, scale=7.0)
    times = rflow_schedule(5, height=48, width=72, num_frames=17)
    ours = sample_rflow(guided, io_["in.z_after_mask_strategy"], times, mask=mask,
                        noise=RecordedNoise([io_["in.z_noise"]] * 5))
    print(f"\nsample 1 (edit frame 0.5) vs the official draw: max |delta| {official_delta:.3g}")
    _close("golden rflow_sample_masked sample 1 vs our sampler with the initial noise re-used", ours[1:], out[1:])


# ---------------------------------------------------------------------------
# LoRA, partial loading, ComfyUI's own T5 conditioning
# ---------------------------------------------------------------------------


def _lora(comfy, module, name: str, targets=("attn.qkv", "cross_attn.kv_linear", "mlp.fc1")) -> str:
    """A LoRA file as opensora-train exports it (diffusion_model.<key>.lora_A/B + alpha), random updates."""
    import copy

    from opensora_core.lora import add_lora, lora_layers, save_lora

    trained = copy.deepcopy(module)
    add_lora(trained, rank=4, alpha=2.0, targets=targets)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in lora_layers(trained).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)
    save_lora(trained, comfy.models / "loras" / name)
    return name


def _ksampler(model, v12, latent, steps=25):
    import nodes as comfy_nodes

    (out,) = comfy_nodes.common_ksampler(model, SEED, steps, 7.0, "euler", "simple", v12["positive"],
                                         v12["negative"], latent)
    return out["samples"]


def test_lora_through_loraloadermodelonly_equals_our_lora_loader(comfy, v12):
    """ComfyUI's stock LoRA loader maps every key of an opensora-train export onto the native MODEL (no 'NOT
    LOADED') and gives the same video as our LoRA Loader + our sampler."""
    import nodes as comfy_nodes

    name = _lora(comfy, v12["model"].module, "native-test-lora.safetensors")
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(v12["native"], name, 0.8)
    assert len(patched.patches) == 3 * 2  # qkv, kv_linear, fc1 in the spatial and the temporal block
    (ours,) = comfy("OpenSoraLoraLoader", v12["model"], name, 0.8)
    (latent,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    out = _ksampler(_settings(comfy, patched), v12, latent)
    theirs = _our_sampler(comfy, {**v12, "model": ours}, 25)
    _close("LoraLoaderModelOnly + KSampler vs Open-Sora LoRA Loader + Open-Sora Sampler", theirs, out)
    assert float((theirs - _our_sampler(comfy, v12, 25)).abs().max()) > 1e-3  # the LoRA does change the video


def test_partial_loading_casts_weights_and_tables_where_used(comfy, v12, monkeypatch, caplog):
    """ComfyUI's lowest-memory loading (--novram: every ComfyUI layer casts its weight per call, LoRA patches
    applied per call) with bf16 weights computed in float32: the model's own tables (modulation, null caption,
    RoPE, q/k norm gains) are cast where used. Same video as our sampler on float32 copies of the bf16 weights."""
    import comfy.model_management as mm

    import nodes as comfy_nodes

    name = _lora(comfy, v12["model"].module, "native-lowvram-lora.safetensors")
    (native,) = comfy("OpenSoraNativeModelLoader", "OpenSora-STDiT-v3.safetensors", "bf16")
    (native,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(native, name, 1.0)
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)  # the CPU stands in for a GPU
    (latent,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    with caplog.at_level("INFO"):
        out = _ksampler(_settings(comfy, native), v12, latent)
    assert "loaded partially" in caplog.text
    monkeypatch.undo()
    mm.unload_all_models()
    (bf16,) = comfy("OpenSoraModelLoader", "OpenSora-STDiT-v3.safetensors", "bf16", "sdpa")
    (fp32_lora,) = comfy("OpenSoraLoraLoader", _as_float(bf16), name, 1.0)  # merged in float32, as ComfyUI casts
    theirs = _our_sampler(comfy, {**v12, "model": fp32_lora}, 25)
    _close("partially loaded bf16 native + LoRA vs our sampler on float32 copies", theirs, out)


def _as_float(handle):
    import copy
    import dataclasses

    return dataclasses.replace(handle, module=copy.deepcopy(handle.module).float())


def _comfy_clip(kind: str, dtype=torch.float32):
    """ComfyUI's CLIP as CLIPLoader builds it for type pixart / sd3 (T5 only), on the tiny T5 of the models dir."""
    import importlib
    import types

    from comfy_stub import tiny_models

    sd = importlib.import_module("comfy.sd")
    t5 = tiny_models.t5_model(32128)
    config = {k: getattr(t5.config, k) for k in ("d_ff", "d_kv", "d_model", "num_heads", "num_layers", "vocab_size")}
    if kind == "sd3":
        module = importlib.import_module("comfy.text_encoders.sd3_clip")
        target = types.SimpleNamespace(params={}, tokenizer=module.SD3Tokenizer,
                                       clip=module.sd3_clip(clip_l=False, clip_g=False, t5=True, dtype_t5=dtype))
    else:
        module = importlib.import_module("comfy.text_encoders.pixart_t5")
        target = types.SimpleNamespace(params={}, tokenizer=module.PixArtTokenizer, clip=module.pixart_te(dtype_t5=dtype))
    clip = sd.CLIP(target, model_options={"t5xxl_model_config": config, "dtype": dtype})
    clip.load_sd({k: v.clone() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"})
    return clip


@pytest.mark.parametrize("kind", ["pixart", "sd3"])
def test_cliptextencode_conditioning_drives_the_native_model_as_our_text_encode(comfy, v12, kind):
    """CLIPLoader type pixart (no padding) or sd3 with T5TokenizerOptions (min_length 1: padding off) +
    CLIPTextEncode on the same text gives the video of our Text Encode's CONDITIONING (fp32 text encoder;
    the text is passed already cleaned and with the score suffix, which CLIPTextEncode does not add)."""
    import nodes as comfy_nodes
    from comfy_extras.nodes_cond import T5TokenizerOptions

    clip = _comfy_clip(kind)
    if kind == "sd3":
        clip = T5TokenizerOptions.execute(clip, 0, 1).args[0]
    (positive,) = comfy_nodes.CLIPTextEncode().encode(clip, v12["caption"].texts[0])
    (negative,) = comfy("OpenSoraNullConditioning", positive)
    (latent,) = comfy("OpenSoraEmptyLatentVideo", v12["vae"], **SIZE, batch_size=1)
    model = _settings(comfy, v12["native"])
    out = _ksampler(model, {**v12, "positive": positive, "negative": negative}, latent)
    _close(f"CLIPLoader {kind} + CLIPTextEncode vs Open-Sora Text Encode (native KSampler)", _ksampler(model, v12, latent),
           out)


def test_fp16_text_encoder_difference_is_measured(comfy, v12):
    """ComfyUI keeps text encoders in fp16 unless --fp32-text-enc; Open-Sora ran T5 in fp32. Printed, not bounded:
    the tiny T5 here says nothing about T5-XXL's fp16 error."""
    import nodes as comfy_nodes

    text = v12["caption"].texts[0]
    (fp32,) = comfy_nodes.CLIPTextEncode().encode(_comfy_clip("pixart"), text)
    (fp16,) = comfy_nodes.CLIPTextEncode().encode(_comfy_clip("pixart", torch.float16), text)
    delta = float((fp32[0][0] - fp16[0][0].float()).abs().max())
    print(f"\nT5 features fp16 vs fp32 (tiny T5): max |delta| {delta:.3g} of {float(fp32[0][0].abs().max()):.3g}")
    assert 0 < delta < float(fp32[0][0].abs().max())


# ---------------------------------------------------------------------------
# v1.1 through ComfyUI's ddpm sampler: approximate, and how far
# ---------------------------------------------------------------------------


class _Recording:
    """A NoiseSource that records the draws our IDDPM sampler keeps (one per step)."""

    def __init__(self, generator):
        from opensora_core.sampling import GeneratorNoise

        self.source, self.kept = GeneratorNoise(generator), []

    def draw(self, shape, like):
        sample = self.source.draw(shape, like)
        self.kept.append(sample[: like.shape[0]].clone())
        return sample


def _v1_1_ours(comfy, model, caption, seed: int, steps: int):
    from opensora_core.pipeline import GenerationSpec, plan_generation, sample_clip

    spec = GenerationSpec(prompts=["x"], height=32, width=48, num_frames=4, steps=steps, cfg_scale=7.0, seed=seed)
    plan = plan_generation(model.family, spec)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((1, 4, *plan.latent_size), generator=generator)
    noise = _Recording(generator)
    (_, segment), = caption.segments
    return z, sample_clip(model.module, plan, segment, z.clone(), None, noise), noise.kept


def _posterior_variance_only(module):
    """Make the model's variance channels -1 (frac 0): Open-Sora's learned-range variance is then the posterior
    variance, which is what ComfyUI's ddpm sampler always uses."""
    forward = module.forward

    def fixed(*args, **kwargs):
        out = forward(*args, **kwargs)
        return torch.cat([out[:, :4], torch.full_like(out[:, 4:], -1.0)], dim=1)

    module.forward = fixed


def test_v1_1_through_ddpm_is_exact_but_for_the_learned_variance(comfy):
    """Native v1.1: ComfyUI's 'ddpm' sampler on our respaced sigmas, with our channel-limited CFG and the draws
    of our IDDPM sampler, equals our IDDPM when the model's variance output is pinned to the posterior variance
    (frac 0): schedule, posterior mean and guidance are exact; only the learned variance is dropped. How far that
    is from Open-Sora is printed: the std of the noise ddpm adds, relative to Open-Sora's, per step."""
    from comfy.samplers import ksampler
    from comfy_extras import nodes_custom_sampler as custom
    from opensora_core.sampling import iddpm_schedule

    (native,) = comfy("OpenSoraNativeModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32")
    (model,) = comfy("OpenSoraModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32", "sdpa")
    for module in (native.model.diffusion_model, model.module):
        _posterior_variance_only(module)
    (t5,) = comfy("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    caption, positive = comfy("OpenSoraTextEncode", PROMPT, "v1.1 (200 tokens)", -1.0, -1.0, "none", True, t5=t5)
    (negative,) = comfy("OpenSoraNullConditioning", positive)
    (settings,) = comfy("OpenSoraSamplingSettings", native, width=48, height=32, num_frames=4, fps=24.0, shift="exact")
    z, ours, draws = _v1_1_ours(comfy, model, caption, SEED, 20)
    replay = iter(draws)
    sampler = ksampler("ddpm", {"noise_sampler": lambda sigma, sigma_next: next(replay)})

    class GivenNoise:
        seed = SEED

        def generate_noise(self, input_latent):
            return z.clone()

    (sigmas,) = comfy("OpenSoraSigmas", settings, 20)
    (guider,) = _v1(custom.CFGGuider, model=settings, positive=positive, negative=negative, cfg=7.0)
    out, _ = _v1(custom.SamplerCustomAdvanced, noise=GivenNoise(), guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image={"samples": torch.zeros_like(z)})
    # rel 1e-3: a random-weight STDiT2 drives IDDPM to values of O(500), and ComfyUI's k-diffusion form carries
    # x * sqrt(1 + sigma^2) (up to ~150x) between steps, so float32 rounding compounds (reference cases: 1e-3)
    _close("v1.1 ddpm vs Open-Sora IDDPM, variance pinned to the posterior one, same draws, 20 steps", ours,
           out["samples"], rel=1e-3)
    sched = iddpm_schedule(100)  # the official 100 steps: noise std ratio ddpm / Open-Sora, frac 0 .. 1
    ratio = (sched.posterior_variance[1:] / sched.betas[1:]).sqrt()
    print(f"v1.1 at 100 steps: ComfyUI's ddpm adds noise with {float(ratio.min()):.3f}..1.000 times Open-Sora's std "
          f"(1 where the model's learned variance is the posterior one; the low end where it is beta_t)")


# ---------------------------------------------------------------------------
# Open-Sora 2.0 (MMDiT) on the native MODEL
# ---------------------------------------------------------------------------

V2_SIZE = dict(width=48, height=32, num_frames=9)


@pytest.fixture(scope="module")
def v2(comfy, tmp_path_factory):
    """Tiny 2.0 files (tests/tiny_v2_files.py) in extra model folders; the T5 renamed beside v1.2's."""
    import folder_paths

    pytest.importorskip("transformers")
    from tiny_v2_files import write_models

    root = write_models(tmp_path_factory.mktemp("models_v2"))
    text = root / "text_encoders"
    (text / "t5xxl_fp16.safetensors").rename(text / "t5_v2_tiny.safetensors")
    (text / "t5xxl_fp16_tokenizer").rename(text / "t5_v2_tiny_tokenizer")
    for folder in ("diffusion_models", "vae", "text_encoders"):
        folder_paths.add_model_folder_path(folder, str(root / folder))
    (native,) = comfy("OpenSoraNativeModelLoader", "Open_Sora_v2.safetensors", "fp32")
    (model,) = comfy("OpenSoraModelLoader", "Open_Sora_v2.safetensors", "fp32", "sdpa")
    (vae,) = comfy("OpenSoraVAELoader", "hunyuan_vae.safetensors", "fp32")
    (t5,) = comfy("OpenSoraT5Loader", "t5_v2_tiny.safetensors", "fp32")
    (clip_l,) = comfy("OpenSoraCLIPLoader", "clip_l.safetensors", "fp32")
    caption, positive = comfy("OpenSoraTextEncode", PROMPT, "from model", -1.0, -1.0, "none", True, t5=t5,
                              model=model, clip_l=clip_l)
    (negative,) = comfy("OpenSoraNullConditioning", positive)
    (settings,) = comfy("OpenSoraSamplingSettings", native, **V2_SIZE, fps=24.0, shift="exact")
    (latent,) = comfy("OpenSoraEmptyLatentVideo", vae, **V2_SIZE, batch_size=1)
    return dict(native=native, model=model, vae=vae, caption=caption, positive=positive, negative=negative,
                settings=settings, latent=latent)


def _v2_sampler(comfy, v2, steps: int, **kw) -> torch.Tensor:
    (latent,) = comfy("OpenSoraSampler", v2["model"], v2["vae"], v2["caption"], **V2_SIZE, fps=24.0, steps=steps,
                      cfg=7.5, seed=SEED, loops=1, condition_frame_length=0, condition_frame_edit=0.0, align=0, **kw)
    return latent["samples"]


def _v2_guided(comfy, v2, positive, negative, steps: int) -> torch.Tensor:
    """SamplerCustomAdvanced: RandomNoise(SEED), euler, Open-Sora Sigmas, the Open-Sora 2.0 Guider."""
    from comfy_extras import nodes_custom_sampler as custom

    (sigmas,) = comfy("OpenSoraSigmas", v2["settings"], steps)
    (guider,) = comfy("OpenSoraV2Guider", v2["settings"], positive, negative, 7.5, 3.0, True)
    (sampler,) = _v1(custom.KSamplerSelect, sampler_name="euler")
    (noise,) = _v1(custom.RandomNoise, noise_seed=SEED)
    out, _ = _v1(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=v2["latent"])
    return out["samples"]


def test_v2_guider_matches_our_sampler_text_to_video(comfy, v2):
    """12 steps: oscillation (scale 1 on odd steps from 10) included."""
    out = _v2_guided(comfy, v2, v2["positive"], v2["negative"], 12)
    _close("2.0 SamplerCustomAdvanced + 2.0 Guider 12 steps vs Open-Sora Sampler (t2v)",
           _v2_sampler(comfy, v2, 12), out)


def test_v2_guider_matches_our_sampler_image_to_video(comfy, v2):
    """i2v_head: the reference encoded with the seed, three passes, the image ramp, frame 0 put back."""
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(3))
    (refs,) = comfy("OpenSoraConditionImages", image, "i2v_head")
    positive, negative = comfy("OpenSoraV2ImageToVideo", v2["positive"], v2["negative"], refs, v2["vae"],
                               v2["latent"], SEED)
    out = _v2_guided(comfy, v2, positive, negative, 12)
    _close("2.0 SamplerCustomAdvanced + 2.0 Guider 12 steps vs Open-Sora Sampler (i2v_head)",
           _v2_sampler(comfy, v2, 12, references=refs), out)


def test_v2_ksampler_cfg_is_the_official_text_to_video_without_oscillation(comfy, v2):
    """KSampler euler + simple at 20 steps (1000/20 whole: 'simple' is the official grid), CFG 7.5."""
    import nodes as comfy_nodes

    (out,) = comfy_nodes.common_ksampler(v2["settings"], SEED, 20, 7.5, "euler", "simple", v2["positive"],
                                         v2["negative"], v2["latent"])
    (no_oscillation,) = comfy("OpenSoraGuidance", 3.0, False)
    _close("2.0 KSampler euler/simple 20 steps CFG 7.5 vs Open-Sora Sampler (t2v, oscillation off)",
           _v2_sampler(comfy, v2, 20, guidance=no_oscillation), out["samples"])


def test_v2_lora_through_loraloadermodelonly_equals_our_lora_loader(comfy, v2):
    """ComfyUI's stock LoRA loader maps diffusion_model.<official MMDiT key> LoRAs onto the 2.0 native MODEL:
    the guided video equals our LoRA Loader + Sampler's."""
    import nodes as comfy_nodes

    name = _lora(comfy, v2["model"].module, "native-v2-lora.safetensors", targets=("img_attn.q_proj", "v_mlp"))
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(v2["native"], name, 0.8)
    assert sorted(patched.patches) == ["diffusion_model.double_blocks.0.img_attn.q_proj.weight",
                                       "diffusion_model.single_blocks.0.v_mlp.weight"]
    (ours,) = comfy("OpenSoraLoraLoader", v2["model"], name, 0.8)
    (settings,) = comfy("OpenSoraSamplingSettings", patched, **V2_SIZE, fps=24.0, shift="exact")
    out = _v2_guided(comfy, {**v2, "settings": settings}, v2["positive"], v2["negative"], 4)
    theirs = _v2_sampler(comfy, {**v2, "model": ours}, 4)
    _close("2.0 LoraLoaderModelOnly + 2.0 Guider vs Open-Sora LoRA Loader + Open-Sora Sampler", theirs, out)
    assert float((theirs - _v2_sampler(comfy, v2, 4)).abs().max()) > 1e-3  # the LoRA does change the video


def test_v2_partial_loading_casts_weights_and_tables_where_used(comfy, v2, monkeypatch, caplog):
    """--novram with bf16 weights computed in float32 (every ComfyUI layer casts per call): the MMDiT's own
    parameters outside ComfyUI's layers (q/k RMSNorm gains, RoPE) are cast where used. Same video as our
    sampler on float32 copies of the bf16 weights."""
    import comfy.model_management as mm

    (native,) = comfy("OpenSoraNativeModelLoader", "Open_Sora_v2.safetensors", "bf16")
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)  # the CPU stands in for a GPU
    (settings,) = comfy("OpenSoraSamplingSettings", native, **V2_SIZE, fps=24.0, shift="exact")
    with caplog.at_level("INFO"):
        out = _v2_guided(comfy, {**v2, "settings": settings}, v2["positive"], v2["negative"], 4)
    assert "loaded partially" in caplog.text
    monkeypatch.undo()
    mm.unload_all_models()
    (bf16,) = comfy("OpenSoraModelLoader", "Open_Sora_v2.safetensors", "bf16", "sdpa")
    theirs = _v2_sampler(comfy, {**v2, "model": _as_float(bf16)}, 4)
    _close("2.0 partially loaded bf16 native vs our sampler on float32 copies", theirs, out)
