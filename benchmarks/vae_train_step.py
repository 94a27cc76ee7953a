"""Time one training step of the demo's VAE v1.2 temporal stage on the CPU, with and without the trainer's
two savings: the frozen spatial stage's moment cache (``vae_training.spatial_cache_gb``) and fused AdamW.

The model is the demo's (``train/configs/demo/vae_temporal.toml``: spatial SD-VAE 16/32/64/128 frozen,
temporal VAE with 24 filters), random weights; a batch of 4 random 17-frame 64x64 clips, the same every
step (as every epoch after the first, when the cache holds every clip). One step = the loss
(``VAEWithLoss``), its backward and the optimizer step. Prints the median wall and process-CPU seconds per
step of each setting and the ratio to the plain one (per-frame encode every step, per-tensor AdamW), with
the machine's load. Not a test.

    python benchmarks/vae_train_step.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import Timing, load_line  # noqa: E402

from opensora_train.config import VAETrainingConfig, load_config  # noqa: E402
from opensora_train.vae_task import VAEWithLoss, build_vae  # noqa: E402

CONFIG = ROOT / "train" / "configs" / "demo" / "vae_temporal.toml"
BATCH = (4, 3, 17, 64, 64)  # (B, 3, T, H, W)


def demo_config() -> VAETrainingConfig:
    return load_config(CONFIG).vae_training  # build_vae reads the architecture; the loss reads the weights


def time_steps(cfg: VAETrainingConfig, fused: bool, steps: int) -> list[Timing]:
    torch.manual_seed(0)
    vae = build_vae(cfg)
    vae.spatial_vae.requires_grad_(False)
    model = VAEWithLoss(vae, cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    video = torch.rand(*BATCH, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clips = [f"clip{i}" for i in range(BATCH[0])]

    def step(seed: int) -> None:
        model(video, torch.Generator().manual_seed(seed), clips)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for seed in range(2):  # warm-up (and, with the cache, the first epoch's encode)
        step(seed)
    return [Timing.of(step, seed) for seed in range(2, 2 + steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = demo_config()
    settings = {
        "plain (encode every step, per-tensor AdamW)": (dataclasses.replace(cfg, spatial_cache_gb=0.0), False),
        "fused AdamW": (dataclasses.replace(cfg, spatial_cache_gb=0.0), True),
        "moment cache + fused AdamW (the trainer)": (cfg, True),
    }
    print(f"demo VAE temporal stage, batch {BATCH}, {args.threads} threads, {load_line()}")
    base = None
    for name, (setting, fused) in settings.items():
        timings = time_steps(setting, fused, args.steps)
        wall = statistics.median(t.wall for t in timings)
        cpu = statistics.median(t.cpu for t in timings)
        base = base or wall
        print(f"  {name:45s} {wall:.3f} s/step wall, {cpu:.3f} CPU s  ({wall / base:.2f}x the plain step)")


if __name__ == "__main__":
    main()
