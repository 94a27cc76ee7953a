"""Open-Sora-Plan WF-VAE decode: peak process memory and time, untiled (official) vs exact temporal chunks.

Builds the full-size released WF-VAE (``WFVAEModel_D8_4x8x8``, the manifest config; random weights: the numbers
do not depend on them) and decodes random latents of 17, 33 and 65 frames (1x, 2x, 4x the length; 5 / 9 / 17
latent frames) at 64x64. Every measurement runs in a fresh subprocess and reads the resident-set high-water mark
(``getrusage``); ``MALLOC_MMAP_THRESHOLD_`` is fixed (128 KiB) so the high-water follows the live tensors (see
benchmarks/vae_memory.py for why):

* weights: RSS high-water once the model is built (interpreter + torch + weights);
* working: peak RSS during the decode minus that (activations, output, workspaces);
* estimate: ``vae.decode_memory_bytes`` for the same call (shapes only; what the VAE Decode node asks for);
* time: wall clock and process CPU time; max |chunked - untiled| of the decoded video.

Modes: ``untiled`` = the official v1.3 sample path (no tiling); ``chunked`` = ``WFVAEChunking()`` (one latent
frame, then 4 at a time with causal caches; what VAE Decode's tiling 'on' and the out-of-memory retry use).

Targets printed at the end: chunked working memory flat (<= 1.3x) from 1x to 4x the length; untiled grows;
chunked output equal to untiled (<= 1e-4 of the output scale).

    python benchmarks/osp_vae_memory.py            # all runs (minutes on a CPU)
    python benchmarks/osp_vae_memory.py --quick    # tiny sizes, to check the script
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
RUNS = [(17, 64, 64), (33, 64, 64), (65, 64, 64)]
QUICK_RUNS = [(9, 32, 32), (17, 32, 32)]
MODES = ("untiled", "chunked")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_vae():
    import torch

    from opensora_core.vae.osp import OpenSoraPlanVAE

    vae = OpenSoraPlanVAE.from_preset("WFVAEModel_D8_4x8x8").eval()  # built on the CPU: Haar constants set
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "wavelet" in name:  # the Haar filters are constants
                continue
            if p.ndim == 1:  # biases and norm shifts 0, norm gains 1
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:  # fan-in scaled, so activations stay O(1)
                p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
    return vae


def measure(mode: str, frames: int, height: int, width: int, threads: int) -> dict:
    import torch

    from opensora_core.vae.osp import WFVAEChunking

    torch.set_num_threads(threads)
    start = max_rss_mib()
    vae = build_vae()
    after_weights = max_rss_mib()
    z = torch.randn(1, 8, *vae.geometry.latent_size(frames, height, width), generator=torch.Generator().manual_seed(1))
    tiling = WFVAEChunking() if mode == "chunked" else None
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        x = vae.decode(z, frames, tiling=tiling)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = max_rss_mib()
    if x.shape != (1, 3, frames, height, width):
        raise RuntimeError(f"decoded {tuple(x.shape)}, expected {(1, 3, frames, height, width)}")
    torch.save(x, os.environ["OSP_BENCH_OUT"])
    return {"mode": mode, "frames": frames, "height": height, "width": width, "start_mib": start,
            "after_weights_mib": after_weights, "peak_mib": peak, "working_mib": peak - after_weights,
            "estimate_mib": vae.decode_memory_bytes(tuple(z.shape), frames, tiling=tiling) / 2**20,
            "wall_s": wall, "cpu_s": cpu}


def run_child(mode: str, frames: int, height: int, width: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(frames), str(height), str(width), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OSP_BENCH_OUT": str(out)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], diffs: dict) -> None:
    print(f"{'mode':8s} {'frames':>6s} {'size':>7s} {'weights MiB':>11s} {'peak MiB':>9s} {'working MiB':>11s} "
          f"{'estimate MiB':>12s} {'est/working':>11s} {'wall s':>7s} {'cpu s':>7s}")
    for r in results:
        print(f"{r['mode']:8s} {r['frames']:6d} {r['height']:>3d}x{r['width']:<3d} {r['after_weights_mib']:11.0f} "
              f"{r['peak_mib']:9.0f} {r['working_mib']:11.0f} {r['estimate_mib']:12.0f} "
              f"{r['estimate_mib'] / max(r['working_mib'], 1):11.2f} {r['wall_s']:7.1f} {r['cpu_s']:7.1f}")
    by = {(r["mode"], r["frames"]): r for r in results}
    frames = sorted({r["frames"] for r in results})
    print("\nratios (target in brackets):")
    for mode in MODES:
        lo, hi = by[(mode, frames[0])], by[(mode, frames[-1])]
        target = "[<= 1.3]" if mode == "chunked" else "[grows]"
        print(f"  {mode} working memory {frames[-1]} / {frames[0]} frames: "
              f"{hi['working_mib'] / max(lo['working_mib'], 1):.2f}  {target}")
    for f in frames:
        print(f"  chunked / untiled at {f} frames: working {by[('chunked', f)]['working_mib'] / max(by[('untiled', f)]['working_mib'], 1):.2f}, "
              f"cpu {by[('chunked', f)]['cpu_s'] / by[('untiled', f)]['cpu_s']:.2f}; max |diff| {diffs[f]:.2e}  [<= 1e-4]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "FRAMES", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *numbers = args.child
        print(json.dumps(measure(mode, *map(int, numbers), args.threads)))
        return
    import tempfile

    import torch

    print(f"CPU load average at start: {os.getloadavg()}, cores: {os.cpu_count()}, torch threads per run: {args.threads}")
    results, diffs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for frames, height, width in QUICK_RUNS if args.quick else RUNS:
            outputs = {}
            for mode in MODES:
                outputs[mode] = Path(tmp) / f"{mode}.pt"
                results.append(run_child(mode, frames, height, width, args.threads, outputs[mode]))
                r = results[-1]
                print(f"  done {mode} {frames}x{height}x{width}: working {r['working_mib']:.0f} MiB, "
                      f"cpu {r['cpu_s']:.1f} s", flush=True)
            untiled, chunked = (torch.load(outputs[m]) for m in MODES)
            diffs[frames] = (untiled - chunked).abs().max().item() / max(untiled.abs().max().item(), 1e-12)
    print(f"CPU load average at end: {os.getloadavg()}\n")
    report(results, diffs)


if __name__ == "__main__":
    main()
