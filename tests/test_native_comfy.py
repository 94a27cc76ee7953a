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

    root = tiny_models.write(tmp_path_factory.mktemp("models"))
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
