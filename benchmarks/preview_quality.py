"""Live previews: how close the fitted latent -> RGB map comes to the real VAE decode, per VAE.

ComfyUI's preview of a video latent is a per-pixel linear map of latent frame 0 (one preview pixel per latent
pixel). The pack fits that map on each loaded VAE (``opensora_core.vae.preview.fit_latent_rgb``: least squares
on six synthetic 64x64 clips). This script measures the fitted map on latents it was NOT fitted on, as PSNR
(dB, 0..255) of the preview against the decoded frames latent frame 0 stands for, at preview resolution
(``preview_psnr``, mean over the set), and prints two bounds from the same latents:

* best linear: a map fitted on the measured latents themselves, the most any linear preview reaches there;
* flat: zero weights and the decoded mean colour as bias (an oracle grey that shows nothing of the content).

The bound checked: the fitted map is above the flat preview on every set (it shows content, not only the
average colour). Held-out sets: synthetic clips of another seed; the demo's source video (real H.264 content,
``demo/inputs``), both encoded by the VAE; and for the demo VAE v1.2, videos the demo model samples (the
latents a preview shows at the end of sampling).

VAEs measured by default (no download): the demo VAE v1.2 (``demo/models/vae``) and its SD-VAE spatial stage
loaded alone as a per-frame SD-VAE (the v1.0/v1.1 latent space). ``--vae FILE`` measures other files, e.g. the
released ``OpenSora-VAE-v1.2.safetensors`` or ``sd-vae-ft-ema.safetensors`` (on a CPU the released VAE v1.2
takes about a minute per 17x64x64 clip).

    python benchmarks/preview_quality.py                 # the demo VAEs (a few minutes on a CPU)
    python benchmarks/preview_quality.py --vae PATH ...  # any Open-Sora VAE v1.2 or SD-VAE file
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from opensora_core.loading import load_dit
from opensora_core.loading.vae import load_vae, read_state_dict
from opensora_core.media import read_frames, to_model_range
from opensora_core.pipeline import Components, GenerationSpec, decode_video, sample_video
from opensora_core.text.t5 import T5TextEncoder, load_t5_encoder
from opensora_core.vae.preview import LatentRGB, fit_decoded, fit_latent_rgb, fitting_clips, latent_frame_colours
from opensora_core.vae.preview import preview_psnr

DEMO = Path(__file__).resolve().parents[1] / "demo"
DEMO_VAE = DEMO / "models" / "vae" / "opensora-demo-vae-v1.2.safetensors"
DEMO_DIT = DEMO / "models" / "diffusion_models" / "opensora-demo-stdit3.safetensors"
DEMO_T5 = DEMO / "models" / "text_encoders" / "opensora-demo-t5"
DEMO_VIDEO = DEMO / "inputs" / "opensora_demo_source.mp4"
DEMO_PROMPTS = ("a red circle moves to the right on a black background", "a blue square moves up on a gray background",
                "a yellow circle moves down on a gray background")
SPATIAL_PREFIX = "spatial_vae.module."  # the SD-VAE inside a VAE v1.2 file
HELD_OUT_SEED = 1  # the fit uses opensora_core.vae.preview.FIT_SEED (0)
HELD_OUT_CLIPS = 3
SAMPLING_STEPS = 20


def demo_vaes() -> dict:
    """name -> (loaded VideoVAE, whether the demo model samples its latent space)."""
    state, saved = read_state_dict(DEMO_VAE)
    spatial = {k[len(SPATIAL_PREFIX):]: v for k, v in state.items() if k.startswith(SPATIAL_PREFIX)}
    return {
        "demo VAE v1.2": (load_vae(DEMO_VAE), True),
        "demo SD-VAE (spatial stage of the demo VAE v1.2)": (
            load_vae(spatial, norm_num_groups=saved.get("norm_num_groups", 32)), False),
    }


@torch.no_grad()
def encoded(vae, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, T, H, W) clips -> their posterior-mean latents and the decodes of those."""
    latent = vae.encode(clips, sample=False).float()  # (N, C, t, h, w)
    return latent, vae.decode(latent, clips.shape[2]).float()


@torch.no_grad()
def sampled(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents the demo model samples for the demo prompts (64x64, 17 frames) and their decodes."""
    model = load_dit(DEMO_DIT).model
    t5 = load_t5_encoder(DEMO_T5, None, max_length=model.caption_shape[0])
    encoder = T5TextEncoder(t5.model, t5.tokenizer, max_length=model.caption_shape[0])
    latents = []
    for seed, prompt in enumerate(DEMO_PROMPTS):
        spec = GenerationSpec(prompts=[prompt], height=64, width=64, num_frames=17, fps=8, steps=SAMPLING_STEPS,
                              seed=seed, aesthetic_score=None)
        latents.append(sample_video(Components(model, vae), spec, [encoder.encode([prompt])]).clips[0].latent)
    latent = torch.cat(latents).float()  # (N, C, t, h, w)
    return latent, decode_video(vae, latent, 17).float()


def held_out_sets(vae, demo_model: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (latent, decoded) pairs the fit never saw."""
    frames = fitting_clips(vae.geometry, clips=1).shape[2]  # one VAE chunk (17)
    video, _ = read_frames(DEMO_VIDEO, max_frames=frames)  # (T, H, W, 3) uint8
    synthetic = fitting_clips(vae.geometry, clips=HELD_OUT_CLIPS, seed=HELD_OUT_SEED)
    sets = {
        f"{HELD_OUT_CLIPS} synthetic clips (seed {HELD_OUT_SEED})": encoded(vae, synthetic),
        "demo source video": encoded(vae, to_model_range(video)[None]),
    }
    if demo_model:
        sets[f"demo model's videos ({len(DEMO_PROMPTS)} prompts, {SAMPLING_STEPS} steps)"] = sampled(vae)
    return sets


def measure(rgb: LatentRGB, latent: torch.Tensor, decoded: torch.Tensor, geometry) -> dict[str, float]:
    """Mean PSNR over the set of the fitted map, the best linear map on the set, and the flat preview."""
    target = latent_frame_colours(decoded.clamp(-1, 1), geometry, latent.shape[-2:])[:, :, 0]  # (N, 3, h, w)
    mean = tuple(float(v) for v in target.mean((0, 2, 3)))
    flat = LatentRGB(tuple((0.0, 0.0, 0.0) for _ in range(latent.shape[1])), mean)

    def psnr(m: LatentRGB) -> float:
        return statistics.fmean(preview_psnr(m, latent[n], decoded[n], geometry) for n in range(latent.shape[0]))

    return {"fitted": psnr(rgb), "best linear": psnr(fit_decoded(latent, decoded, geometry)), "flat": psnr(flat)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, action="append", default=[], help="VAE file(s) to measure")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    vaes = {path.name: (load_vae(path), False) for path in args.vae} if args.vae else demo_vaes()
    failures = 0
    for name, (vae, demo_model) in vaes.items():
        start = time.perf_counter()
        rgb = fit_latent_rgb(vae)
        print(f"{name} ({vae.geometry.time_factor}x temporal, {len(rgb.weight)} channels): map fitted in "
              f"{time.perf_counter() - start:.1f} s")
        for set_name, (latent, decoded) in held_out_sets(vae, demo_model).items():
            found = measure(rgb, latent, decoded, vae.geometry)
            ok = found["fitted"] > found["flat"]
            failures += not ok
            print(f"  {set_name}: preview PSNR {found['fitted']:.1f} dB; best linear map {found['best linear']:.1f}, "
                  f"flat mean colour {found['flat']:.1f} -> {'ok' if ok else 'BELOW the flat preview'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
