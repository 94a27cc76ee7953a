"""Calibration table: the memory estimates a memory manager is given next to the measured peaks, in bf16 on the CPU.

    python benchmarks/memory_calibration.py [--quick] [--threads 1] [--default-malloc]

Rows: one STDiT3 guided step (hidden 1152, 16 heads, one spatial + one temporal block: the peak is one
block's, whatever the depth) at several latent sizes, against ``model.sampling_memory_bytes``; one VAE v1.2
decode (released architecture, random weights) untiled and tiled at several sizes, against
``vae.decode_memory_bytes``. Every measurement runs in a fresh process (``benchmarks/measure.py``: the
resident-memory high-water of the call minus the RSS before it, glibc's mmap threshold fixed so the
high-water follows the live tensors). The target is |estimate / measured - 1| <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from measure import load_line, peak_memory, run_child  # noqa: E402

DIT_RUNS = [  # (frames, height, width) in pixels
    (17, 240, 426), (51, 240, 426), (17, 360, 640), (51, 144, 256),
]
VAE_RUNS = [  # (frames, height, width, tiled)
    (17, 128, 224, False), (17, 128, 224, True), (17, 256, 448, False), (17, 256, 448, True),
]
QUICK_DIT = [(17, 144, 256)]
QUICK_VAE = [(17, 64, 112, False), (17, 64, 112, True)]
TARGET = 0.15


def dit_worker(frames: int, height: int, width: int) -> dict:
    from step_time import CONFIG, GUIDANCE

    from opensora_core.geometry import VAE_V1_2
    from opensora_core.models.stdit3 import STDiT3, STDiT3Config

    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**{**CONFIG, "depth": 1})).to(torch.bfloat16).eval().requires_grad_(False)
    latent = VAE_V1_2.latent_size(frames, height, width)
    L, C = model.caption_shape
    g = torch.Generator().manual_seed(0)
    x, prompt = torch.randn(1, 4, *latent, generator=g), torch.randn(1, 1, L, C, generator=g)
    mask = torch.zeros(2, L, dtype=torch.long)
    mask[:, :40] = 1
    args = model.model_args(2, height, width, frames, 24.0)
    inputs = dict(x=torch.cat([x, x]), timestep=torch.full((2,), 500.0),
                  y=torch.cat([prompt, model.null_caption(1).float()]), mask=mask,
                  x_mask=torch.ones(2, latent[0], dtype=torch.bool), **args)

    def step():
        cond, uncond = model(**inputs)[:, :4].chunk(2)
        return uncond + GUIDANCE * (cond - uncond)

    with torch.no_grad():
        step()  # warm-up
        with peak_memory() as memory:
            step()
    return {"measured": memory.working * 2**20, "estimate": model.sampling_memory_bytes(1, latent)}


def vae_worker(frames: int, height: int, width: int, tiled: bool) -> dict:
    from vae_memory import build_vae

    from opensora_core.vae import TilingOptions

    vae = build_vae().to(torch.bfloat16)
    latent = vae.geometry.latent_size(frames, height, width)
    z = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    tiling = TilingOptions() if tiled else None
    with torch.no_grad(), peak_memory() as memory:
        vae.decode(z, frames, tiling=tiling)
    return {"measured": memory.working * 2**20, "estimate": vae.decode_memory_bytes(1, latent, frames, tiling=tiling)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's adaptive mmap threshold")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)  # random weights can drive values subnormal, which is slow on x86
        kind, *numbers = args.worker
        values = [int(n) for n in numbers]
        result = dit_worker(*values) if kind == "dit" else vae_worker(*values[:3], bool(values[3]))
        print(json.dumps(result))
        return
    print(f"bf16, {args.threads} torch thread(s) per process; {load_line()}")
    rows = [("STDiT3 step", ["dit", *map(str, run)], f"{run[0]}x{run[1]}x{run[2]}")
            for run in (QUICK_DIT if args.quick else DIT_RUNS)]
    rows += [(f"VAE v1.2 decode {'tiled' if run[3] else 'untiled'}", ["vae", *map(str, run[:3]), str(int(run[3]))],
              f"{run[0]}x{run[1]}x{run[2]}") for run in (QUICK_VAE if args.quick else VAE_RUNS)]
    print(f"{'what':26s} {'frames x H x W':>15s} {'measured MiB':>13s} {'estimate MiB':>13s} {'estimate/measured':>18s}")
    worst = 0.0
    for label, worker, size in rows:
        r = run_child(__file__, ["--threads", str(args.threads), "--worker", *worker], args.default_malloc)
        ratio = r["estimate"] / r["measured"]
        worst = max(worst, abs(ratio - 1))
        print(f"{label:26s} {size:>15s} {r['measured'] / 2**20:13.0f} {r['estimate'] / 2**20:13.0f} {ratio:18.2f}",
              flush=True)
    print(f"largest deviation {worst:.1%} (target <= {TARGET:.0%}); {load_line()}")


if __name__ == "__main__":
    main()
