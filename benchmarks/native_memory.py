"""STDiT3 forward: measured activation memory against the estimate the native MODEL reports to ComfyUI.

``STDiTBase.forward_memory_bytes`` (tokens x hidden x (3 + max(mlp_ratio, 4)) x element size, plus the cast captions)
is what the native model's ``memory_required`` gives ComfyUI's memory manager (it decides whether the
prompt and null-caption passes run as one batch, and how much room ``load_models_gpu`` keeps free). This
script measures the real peak of one no-grad forward of the guided batch (2 samples) at the released
STDiT3-XL/2 width (hidden 1152, 16 heads, MLP 4x, T5 4096 channels, 300 caption tokens; two blocks: the
peak is reached inside one block, depth adds weights only) for official sizes, each in a fresh subprocess:

* weights: resident-set high-water once the model and the inputs exist;
* activations: peak RSS during the forward minus that (``MALLOC_MMAP_THRESHOLD_`` = 128 KiB so freed
  blocks go back to the OS and the high-water follows the live tensors; see ``vae_memory.py``).

It prints measured / estimated per size and the bound checked: the estimate is 1x..1.5x of the
measurement at every size (CPU kernels; CUDA's SDPA also materialises no attention scores).

    python benchmarks/native_memory.py            # 144p / 240p / 360p, 51 frames (a few minutes on a CPU)
    python benchmarks/native_memory.py --quick    # one small size, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"144p": (144, 256, 51), "240p": (240, 426, 51), "360p": (360, 640, 51)}
QUICK = {"tiny": (64, 64, 17)}
BOUND = (1.0, 1.5)  # never below the measurement (ComfyUI reserves from it), at most 1.5x above


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(height: int, width: int, frames: int) -> dict:
    import torch

    from opensora_core.geometry import VAE_V1_2
    from opensora_core.models.stdit3 import STDiT3

    torch.manual_seed(0)
    model = STDiT3.from_preset("STDiT3-XL/2", depth=2).eval().requires_grad_(False)
    latent = VAE_V1_2.latent_size(frames, height, width)
    x = torch.randn(2, 4, *latent)
    y = torch.randn(2, 1, 300, 4096)
    mask = torch.zeros(2, 300, dtype=torch.long)
    mask[:, :40] = 1
    args = model.model_args(2, height, width, frames, 24.0)
    t = torch.full((2,), 500.0)
    before = _rss_bytes()
    with torch.no_grad():
        model(x, t, y, mask=mask, **args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = model.forward_memory_bytes(2, latent)
    return {"latent": list(latent), "tokens": model.token_count(latent), "weights": before,
            "activations": peak - before, "estimate": estimate}


def _child(size: str, table: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "2"}
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'benchmarks')!r});"
            f"import native_memory as m; print(json.dumps(m.measure(*{table[size]!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny size only")
    table = QUICK if parser.parse_args(argv).quick else SIZES
    ok = True
    print(f"{'size':6} {'latent':>14} {'tokens/sample':>13} {'measured MiB':>12} {'estimate MiB':>12} {'ratio':>6}")
    for size in table:
        r = _child(size, table)
        ratio = r["estimate"] / r["activations"]
        ok &= BOUND[0] <= ratio <= BOUND[1]
        print(f"{size:6} {'x'.join(map(str, r['latent'])):>14} {r['tokens']:>13} {r['activations'] / 2**20:>12.0f} "
              f"{r['estimate'] / 2**20:>12.0f} {ratio:>6.2f}")
    print(f"estimate / measured within {BOUND[0]}..{BOUND[1]} at every size: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
