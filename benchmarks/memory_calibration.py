"""Calibration table: the memory estimates a memory manager is given next to the measured working memory, on the CPU.

    python benchmarks/memory_calibration.py [--quick] [--dtypes bf16,fp32] [--only dit,vae-untiled,vae-tiled,sd]
        [--threads 1] [--default-malloc]

Rows, each at three sizes and in every dtype asked: one STDiT3 guided step (hidden 1152, 16 heads, one spatial +
one temporal block: the peak is one block's, whatever the depth) against ``model.sampling_memory_bytes``; one
VAE v1.2 decode (released architecture, random weights) untiled and tiled (``TilingOptions()``) and one SD-VAE
decode (the v1.0/v1.1 per-frame VAE, 4 frames at a time) against ``vae.decode_memory_bytes``.

Measured working memory: the resident-memory high-water of the call minus the resident memory just before it
(weights loaded, inputs made), in a fresh process (``benchmarks/measure.py``) with glibc's mmap threshold fixed
so that freed tensors leave the resident set. It includes what the backend allocates (oneDNN's reordered
weights and scratch, its state kept after the first calls): the STDiT3 step is measured after one warm-up step
(a sampler's steps after the first), a decode on its first call (a decode node runs once). Each row passes when
|estimate / measured - 1| <= 15 %.
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
from measure import DTYPES, load_line, peak_memory, run_child  # noqa: E402

DIT_SIZES = [(17, 144, 256), (17, 240, 426), (34, 240, 426)]  # (frames, height, width) in pixels
VAE_SIZES = [(17, 64, 112), (17, 96, 160), (17, 128, 224)]
SD_VAE_SIZES = [(4, 64, 112), (4, 96, 160), (4, 128, 224), (4, 192, 336)]
QUICK = {"dit": [(17, 64, 112)], "vae": [(17, 32, 56)], "sd": [(4, 32, 56)]}
VAE_KINDS = {"vae-untiled": "VAE v1.2 decode untiled", "vae-tiled": "VAE v1.2 decode tiled", "sd": "SD-VAE decode"}
TARGET = 0.15


def dit_worker(dtype: torch.dtype, frames: int, height: int, width: int) -> dict:
    from step_time import CONFIG, GUIDANCE

    from opensora_core.geometry import VAE_V1_2
    from opensora_core.models.stdit3 import STDiT3, STDiT3Config

    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(**{**CONFIG, "depth": 1})).to(dtype).eval().requires_grad_(False)
    latent = VAE_V1_2.latent_size(frames, height, width)
    L, C = model.caption_shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, *latent, generator=g).to(dtype)  # the sampler's latent and caption in the model dtype
    prompt, null = torch.randn(1, 1, L, C, generator=g).to(dtype), model.null_caption(1).to(dtype)
    mask = torch.zeros(2, L, dtype=torch.long)
    mask[:, :40] = 1
    args = model.model_args(2, height, width, frames, 24.0)
    t, x_mask = torch.full((2,), 500.0), torch.ones(2, latent[0], dtype=torch.bool)

    def step():  # as sampling.GuidedModel: prompt and null caption as one batch, made in the step
        cond, uncond = model(torch.cat([x, x]), t, torch.cat([prompt, null]), mask=mask, x_mask=x_mask,
                             **args)[:, :4].chunk(2)
        return uncond + GUIDANCE * (cond - uncond)

    with torch.no_grad():
        step()  # warm-up
        with peak_memory() as memory:
            step()
    return {"measured": memory.working * 2**20, "estimate": model.sampling_memory_bytes(1, latent)}


def vae_worker(dtype: torch.dtype, kind: str, frames: int, height: int, width: int) -> dict:
    from vae_memory import build_vae

    from opensora_core.vae import TilingOptions

    vae = build_vae().to(dtype)
    if kind == "sd":
        vae = vae.spatial_vae
    latent = vae.geometry.latent_size(frames, height, width)
    z = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(1), dtype=dtype)
    tiling = TilingOptions() if kind == "vae-tiled" else None
    with torch.no_grad(), peak_memory() as memory:
        vae.decode(z, frames, tiling=tiling)
    return {"measured": memory.working * 2**20, "estimate": vae.decode_memory_bytes(z.shape, frames, tiling=tiling)}


def rows(quick: bool, dtypes: list[str], only: set[str]) -> list[tuple[str, str, tuple, list[str]]]:
    """(what, dtype, size, worker arguments) of every row of the kinds in ``only``."""
    out = []
    for dtype in dtypes:
        sizes = QUICK["dit"] if quick else DIT_SIZES
        if "dit" in only:
            out += [("STDiT3 step", dtype, size, ["dit", dtype, *map(str, size)]) for size in sizes]
        for kind, label in VAE_KINDS.items():
            if kind not in only:
                continue
            sizes = QUICK["sd" if kind == "sd" else "vae"] if quick else (SD_VAE_SIZES if kind == "sd" else VAE_SIZES)
            out += [(label, dtype, size, ["vae", dtype, kind, *map(str, size)]) for size in sizes]
    return out


def worker(args: list[str]) -> dict:
    what, dtype, *rest = args
    if what == "dit":
        return dit_worker(DTYPES[dtype], *map(int, rest))
    return vae_worker(DTYPES[dtype], rest[0], *map(int, rest[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp32, fp16")
    parser.add_argument("--only", default="dit," + ",".join(VAE_KINDS), help="comma-separated row kinds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's adaptive mmap threshold")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)  # random weights can drive values subnormal, which is slow on x86
        print(json.dumps(worker(args.worker)))
        return
    print(f"{args.threads} torch thread(s) per process; {load_line()}")
    print(f"{'what':24s} {'dtype':5s} {'frames x H x W':>15s} {'estimate MiB':>13s} {'measured MiB':>13s} "
          f"{'ratio':>6s}  within {TARGET:.0%}")
    failed = 0
    for label, dtype, size, worker_args in rows(args.quick, args.dtypes.split(","), set(args.only.split(","))):
        r = run_child(__file__, ["--threads", str(args.threads), "--worker", *worker_args], args.default_malloc)
        ratio = r["estimate"] / r["measured"]
        verdict = "PASS" if abs(ratio - 1) <= TARGET else "FAIL"
        failed += verdict == "FAIL"
        print(f"{label:24s} {dtype:5s} {'x'.join(map(str, size)):>15s} {r['estimate'] / 2**20:13.1f} "
              f"{r['measured'] / 2**20:13.1f} {ratio:6.2f}  {verdict}", flush=True)
    print(f"{failed} row(s) outside {TARGET:.0%}; {load_line()}")


if __name__ == "__main__":
    main()
