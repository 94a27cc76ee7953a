"""VAE v1.2 decode: peak process memory and time, untiled (official) vs tiled.

Builds the full-size released architecture (``OpenSora-VAE-v1.2`` config, random
weights: the numbers do not depend on them) and decodes random latents of 17 frames
at 256x448 and 17 / 34 / 68 frames at 128x224. Every measurement runs in a fresh
subprocess and reads the resident-set high-water mark (``getrusage``):

* weights: RSS high-water once the model is built (interpreter + torch + weights);
* working: peak RSS during the decode minus that (activations, output, workspaces);
* time: wall clock and process CPU time (the CPU may be shared with other jobs; CPU
  time is the steadier figure there).

glibc's malloc raises its mmap threshold as large blocks are freed, after which
tensors come from a heap that fragments and keeps pages, so the RSS high-water drifts
upwards with the number of allocations rather than with the live tensors (e.g. 206 ->
251 MiB from 17 to 68 frames at 64x112, against 137 -> 141 MiB with a fixed
threshold). Runs therefore set ``MALLOC_MMAP_THRESHOLD_`` (128 KiB) so the high-water
is the live memory; ``--default-malloc`` measures with the default allocator instead.

Modes: ``untiled`` = official behaviour (SD-VAE 4 frames at a time, no tiles);
``tiled`` = ``TilingOptions()`` defaults (one frame at a time; tiles only above 512 px);
``tiled-32`` = forced spatial tiles (32 latent px, overlap 8) to show their cost.

Targets printed at the end: tiled working <= 0.5x untiled at 256x448; working flat
(<= 1.2x) from 17 to 68 frames; tiled time <= 1.1x untiled.

    python benchmarks/vae_memory.py            # all runs (minutes on a CPU)
    python benchmarks/vae_memory.py --quick    # tiny sizes, to check the script
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

# config.json of hpcai-tech/OpenSora-VAE-v1.2 (= manifest_vae_v1_2.json "config")
RELEASED_CONFIG = {
    "vae_2d": {
        "type": "VideoAutoencoderKL",
        "from_pretrained": "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers",
        "subfolder": "vae",
        "micro_batch_size": 4,
        "local_files_only": False,
    },
    "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
    "from_pretrained": None,
    "freeze_vae_2d": False,
    "cal_loss": False,
    "micro_frame_size": 17,
    "shift": [-0.1, 0.34, 0.27, 0.98],
    "scale": [3.85, 2.32, 2.33, 3.06],
}

MODES = {
    "untiled": None,
    "tiled": {},
    "tiled-32": {"tile_size": 32, "tile_overlap": 8},
}
RUNS = [  # (frames, height, width, modes)
    (17, 256, 448, ("untiled", "tiled", "tiled-32")),
    (17, 128, 224, ("untiled", "tiled")),
    (34, 128, 224, ("untiled", "tiled")),
    (68, 128, 224, ("untiled", "tiled")),
]
QUICK_RUNS = [(17, 64, 64, ("untiled", "tiled")), (34, 64, 64, ("untiled", "tiled"))]


# ---------------------------------------------------------------------------
# One measurement (child process)
# ---------------------------------------------------------------------------


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_vae():
    import torch

    from opensora_core.families import build_model

    with torch.device("meta"):
        vae = build_model("VideoAutoencoderPipeline", RELEASED_CONFIG)
    vae = vae.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:  # biases and norm shifts 0, norm gains 1
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:  # fan-in scaled, so activations stay O(1) through the network
                p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
        vae.scale.copy_(torch.tensor(RELEASED_CONFIG["scale"]).view(1, 4, 1, 1, 1))
        vae.shift.copy_(torch.tensor(RELEASED_CONFIG["shift"]).view(1, 4, 1, 1, 1))
    return vae


def measure(mode: str, frames: int, height: int, width: int, threads: int) -> dict:
    import torch

    from opensora_core.vae import TilingOptions

    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    start = max_rss_mib()
    vae = build_vae()
    after_weights = max_rss_mib()
    tensor_mib = sum(t.numel() * t.element_size() for t in vae.state_dict().values()) / 2**20
    z = torch.randn(1, 4, *vae.geometry.latent_size(frames, height, width), generator=torch.Generator().manual_seed(1))
    tiling = None if MODES[mode] is None else TilingOptions(**MODES[mode])
    wall, cpu = time.perf_counter(), time.process_time()
    x = vae.decode(z, frames, tiling=tiling)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert x.shape == (1, 3, frames, height, width)
    peak = max_rss_mib()
    return {
        "mode": mode, "frames": frames, "height": height, "width": width,
        "start_mib": start, "tensor_mib": tensor_mib, "after_weights_mib": after_weights, "peak_mib": peak,
        "working_mib": peak - after_weights, "wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def run_child(mode: str, frames: int, height: int, width: int, threads: int, default_malloc: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(frames), str(height), str(width), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: list[dict]) -> None:
    print(f"weights: {results[0]['tensor_mib']:.0f} MiB of float32 tensors; 'weights MiB' below also holds the "
          f"interpreter and torch ({results[0]['start_mib']:.0f} MiB before building the model)")
    print(f"{'mode':9s} {'frames':>6s} {'size':>8s} {'weights MiB':>11s} {'peak MiB':>9s} {'working MiB':>11s} "
          f"{'wts share':>9s} {'wall s':>7s} {'cpu s':>7s}")
    for r in results:
        print(f"{r['mode']:9s} {r['frames']:6d} {r['height']:>3d}x{r['width']:<4d} {r['after_weights_mib']:11.0f} "
              f"{r['peak_mib']:9.0f} {r['working_mib']:11.0f} {r['after_weights_mib'] / r['peak_mib']:9.2f} "
              f"{r['wall_s']:7.1f} {r['cpu_s']:7.1f}")


def ratios(results: list[dict]) -> None:
    by = {(r["mode"], r["frames"], r["height"], r["width"]): r for r in results}
    sizes = sorted({(r["height"], r["width"]) for r in results}, reverse=True)
    big = sizes[0]
    frames_big = min(f for (_, f, h, w) in by if (h, w) == big)
    print("\nratios (target in brackets):")
    for mode in ("tiled", "tiled-32"):
        key = (mode, frames_big, *big)
        if key in by:
            u = by[("untiled", frames_big, *big)]
            print(f"  {mode} / untiled working memory at {big[0]}x{big[1]}: "
                  f"{by[key]['working_mib'] / u['working_mib']:.2f}  [<= 0.5]")
    for h, w in sizes:
        counts = sorted({f for (m, f, hh, ww) in by if (hh, ww) == (h, w)})
        for mode in ("untiled", "tiled"):
            if len(counts) > 1 and (mode, counts[0], h, w) in by:
                lo, hi = by[(mode, counts[0], h, w)], by[(mode, counts[-1], h, w)]
                print(f"  {mode} working memory {counts[-1]} / {counts[0]} frames at {h}x{w}: "
                      f"{hi['working_mib'] / lo['working_mib']:.2f}  [<= 1.2]")
    for (mode, f, h, w), r in by.items():
        if mode != "untiled" and ("untiled", f, h, w) in by:
            u = by[("untiled", f, h, w)]
            print(f"  {mode} / untiled time, {f} frames at {h}x{w}: cpu {r['cpu_s'] / u['cpu_s']:.2f}, "
                  f"wall {r['wall_s'] / u['wall_s']:.2f}  [<= 1.1]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: steady timings on a shared CPU)")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's adaptive mmap threshold")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "FRAMES", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *numbers = args.child
        print(json.dumps(measure(mode, *map(int, numbers), args.threads)))
        return
    print(f"CPU load average at start: {os.getloadavg()}, cores: {os.cpu_count()}, "
          f"torch threads per run: {args.threads}, "
          f"malloc: {'default' if args.default_malloc else 'fixed mmap threshold'}")
    results = []
    for frames, height, width, modes in QUICK_RUNS if args.quick else RUNS:
        for mode in modes:
            results.append(run_child(mode, frames, height, width, args.threads, args.default_malloc))
            r = results[-1]
            print(f"  done {mode} {frames}x{height}x{width}: working {r['working_mib']:.0f} MiB, "
                  f"cpu {r['cpu_s']:.1f} s, wall {r['wall_s']:.1f} s", flush=True)
    print(f"CPU load average at end: {os.getloadavg()}\n")
    report(results)
    ratios(results)


if __name__ == "__main__":
    main()
