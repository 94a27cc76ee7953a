"""Hunyuan VAE (Open-Sora 2.0) decode: working memory and time, untiled vs bounded, float32 vs bfloat16.

Builds the full-size released architecture (``hunyuan_vae.safetensors`` config, random fan-in-scaled
weights: memory and time do not depend on the values) and decodes random latents at a small spatial
size for 1x, 2x and 4x a base length. Every measurement runs in a fresh subprocess and reads the
resident-set high-water mark (``getrusage``):

* weights: RSS high-water once the model is built (interpreter + torch + weights);
* working: peak RSS during the decode minus that (activations, output, workspaces);
* estimate: :func:`opensora_core.vae.hunyuan.estimate_decode_memory` for the same call (shapes only);
* time: wall clock and process CPU time (the CPU may be shared; CPU time is the steadier figure).

``MALLOC_MMAP_THRESHOLD_`` is fixed at 128 KiB so that freed tensors go back to the OS and the
high-water is the live memory (see benchmarks/vae_memory.py for why).

Modes: ``untiled`` = the release (its spatial tiles only start above 32 latent pixels, so none here);
``bounded`` = :data:`BOUNDED_TILING` (the official temporal tiles of 64 frames, off in the release).
The bounded decode differs from the untiled one (each temporal tile has its own GroupNorm statistics);
its deviation is printed for the run's random weights and latent, which says little about trained
weights. Targets printed at the end: bounded working memory flat (<= 1.2x) from 2x to 4x the length;
estimate within 0.7x..1.5x of the measurement.

    nice -n 10 python benchmarks/hunyuan_vae_memory.py            # all runs (tens of minutes on 2 CPUs)
    nice -n 10 python benchmarks/hunyuan_vae_memory.py --quick    # tiny sizes, to check the script
    nice -n 10 python benchmarks/hunyuan_vae_memory.py --multiples 1   # 65 frames only (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# configs/diffusion/inference/256px.py ``ae`` (= manifest_hunyuan_vae_v2_0.json "config")
RELEASED_CONFIG = {
    "type": "hunyuan_vae",
    "from_pretrained": "./ckpts/hunyuan_vae.safetensors",
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "latent_channels": 16,
    "use_spatial_tiling": True,
    "use_temporal_tiling": False,
}

BASE_FRAMES, HEIGHT, WIDTH = 65, 32, 32  # 1x = 65 frames (17 latent frames, one 64-frame tile + 1)
QUICK = (9, 16, 16)
MODES = ("untiled", "bounded")
DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------
# One measurement (child process)
# ---------------------------------------------------------------------------


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_vae(dtype):
    import torch

    from opensora_core.families import build_model

    with torch.device("meta"):
        vae = build_model("AutoencoderKLCausal3D", RELEASED_CONFIG)
    vae = vae.to(dtype).to_empty(device="cpu").eval()  # allocated once, in the wanted dtype
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:  # biases and norm shifts 0, norm gains 1
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:  # uniform with variance 1 / fan-in, so activations stay O(1) through the network
                bound = (3 / p[0].numel()) ** 0.5
                p.uniform_(-bound, bound, generator=generator)
    return vae


def tiling_for(mode: str):
    from opensora_core.vae.hunyuan import BOUNDED_TILING

    return None if mode == "untiled" else BOUNDED_TILING


def measure(mode: str, dtype_name: str, frames: int, height: int, width: int, threads: int) -> dict:
    import torch

    from opensora_core.vae.hunyuan import estimate_decode_memory

    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    start = max_rss_mib()
    vae = build_vae(dtype)
    after_weights = max_rss_mib()
    z = torch.randn(1, 16, *vae.geometry.latent_size(frames, height, width), generator=torch.Generator().manual_seed(1))
    z = z.to(dtype)
    estimate = estimate_decode_memory(vae.config, tuple(z.shape), dtype=dtype, tiling=tiling_for(mode)) / 2**20
    wall, cpu = time.perf_counter(), time.process_time()
    x = vae.decode(z, frames, tiling=tiling_for(mode))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = max_rss_mib()
    result = {
        "mode": mode, "dtype": dtype_name, "frames": frames, "height": height, "width": width,
        "after_weights_mib": after_weights, "start_mib": start, "peak_mib": peak,
        "working_mib": peak - after_weights, "estimate_mib": estimate, "wall_s": wall, "cpu_s": cpu,
    }
    if mode != "untiled":  # deviation from the untiled decode (measured after the peak was read)
        reference = vae.decode(z, frames, tiling=tiling_for("untiled"))
        diff = (x.float() - reference.float()).abs()
        result.update(max_dev=float(diff.max()), rms_dev=float(diff.pow(2).mean().sqrt()),
                      rms_out=float(reference.float().pow(2).mean().sqrt()))
    return result


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_child(mode: str, dtype: str, frames: int, height: int, width: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, dtype, str(frames), str(height), str(width),
           "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: list[dict]) -> None:
    print(f"{'mode':8s} {'dtype':8s} {'frames':>6s} {'size':>7s} {'weights MiB':>11s} {'working MiB':>11s} "
          f"{'estimate':>8s} {'est/meas':>8s} {'wall s':>7s} {'cpu s':>7s} {'deviation max / rms (out rms)':>30s}")
    for r in results:
        dev = ""
        if "max_dev" in r:
            dev = f"{r['max_dev']:.3g} / {r['rms_dev']:.3g} ({r['rms_out']:.3g})"
        print(f"{r['mode']:8s} {r['dtype']:8s} {r['frames']:6d} {r['height']:>3d}x{r['width']:<3d} "
              f"{r['after_weights_mib']:11.0f} {r['working_mib']:11.0f} {r['estimate_mib']:8.0f} "
              f"{r['estimate_mib'] / max(r['working_mib'], 1):8.2f} {r['wall_s']:7.1f} {r['cpu_s']:7.1f} {dev:>30s}")


def ratios(results: list[dict]) -> None:
    by = {(r["mode"], r["dtype"], r["frames"]): r for r in results}
    lengths = sorted({r["frames"] for r in results})
    print("\nratios (target in brackets):")
    for dtype in DTYPES:
        for mode in MODES:
            row = [by[(mode, dtype, f)]["working_mib"] for f in lengths if (mode, dtype, f) in by]
            if len(row) == len(lengths) > 1:
                growth = ", ".join(f"{row[i] / row[0]:.2f}" for i in range(1, len(row)))
                print(f"  {mode:8s} {dtype:8s} working memory at {lengths[1:]} frames / at {lengths[0]}: {growth}"
                      + ("  [4x/2x <= 1.2]" if mode == "bounded" else ""))
        for f in lengths:
            u, b = by.get(("untiled", dtype, f)), by.get(("bounded", dtype, f))
            if u and b:
                print(f"  bounded / untiled {dtype} {f} frames: memory {b['working_mib'] / u['working_mib']:.2f}, "
                      f"cpu time {b['cpu_s'] / u['cpu_s']:.2f}")
    for f in lengths:
        for mode in MODES:
            a, b = by.get((mode, "float32", f)), by.get((mode, "bfloat16", f))
            if a and b:
                print(f"  bfloat16 / float32 {mode} {f} frames: memory {b['working_mib'] / a['working_mib']:.2f}, "
                      f"cpu time {b['cpu_s'] / a['cpu_s']:.2f}")
    worst = [r["estimate_mib"] / max(r["working_mib"], 1) for r in results]
    print(f"  estimate / measured: {min(worst):.2f} .. {max(worst):.2f}  [0.7 .. 1.5]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--multiples", nargs="+", type=int, default=[1, 2, 4],
                        help="lengths as multiples of the base length (default 1 2 4; 1 alone takes minutes)")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "DTYPE", "FRAMES", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, dtype, *numbers = args.child
        print(json.dumps(measure(mode, dtype, *map(int, numbers), args.threads)))
        return
    base, height, width = QUICK if args.quick else (BASE_FRAMES, HEIGHT, WIDTH)
    lengths = [m * (base - 1) + 1 for m in args.multiples]  # 1x, 2x, 4x the length, each 4k + 1
    print(f"CPU load average at start: {os.getloadavg()}, cores: {os.cpu_count()}, torch threads per run: "
          f"{args.threads}; lengths {lengths} at {height}x{width}")
    results = []
    for dtype in args.dtypes:
        for frames in lengths:
            for mode in MODES:
                results.append(run_child(mode, dtype, frames, height, width, args.threads))
                r = results[-1]
                print(f"  done {mode} {dtype} {frames}x{height}x{width}: working {r['working_mib']:.0f} MiB "
                      f"(estimate {r['estimate_mib']:.0f}), cpu {r['cpu_s']:.1f} s", flush=True)
    print(f"CPU load average at end: {os.getloadavg()}\n")
    report(results)
    ratios(results)


if __name__ == "__main__":
    main()
