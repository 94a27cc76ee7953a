"""Ours next to the official Open-Sora v1.2.0 code on this CPU: one STDiT3 CFG step and one VAE v1.2 decode.

    python benchmarks/vs_official.py OFFICIAL_CHECKOUT [--what step,vae] [--dtypes fp32,bf16] [--repeats 3]

OFFICIAL_CHECKOUT is a folder holding the ``v1.2.0`` tag of hpcaitech/Open-Sora (never part of this
project); without it the script says so and exits. ``benchmarks/official_shims.py`` lists the stand-ins
for what it imports that cannot be installed on a CPU machine; it also needs ``rotary-embedding-torch``
and ``diffusers`` installed.

Every measurement runs in a fresh process (one torch thread by default), ours and the official one back
to back, ``--repeats`` times; the table gives medians of process CPU time, wall time, the resident peak
during the call and its working memory (peak minus the RSS before the call). Each side builds the same
weights: ours from a fixed seed, then the official model loads our state dict (the key names are the
official ones, strict).

* step: the inputs of ``benchmarks/step_time.py`` (STDiT3 hidden 1152, depth 2, 51 frames at 240p, CFG
  batch 2, 40 of 300 caption tokens valid, all-True x_mask), one warm-up step, then one timed step, under
  ``torch.no_grad`` as both samplers run. Each side runs as it ships: ours frozen (as our loader leaves
  it), the official with its own attention (``enable_flash_attn=False``: flash-attn has no CPU build);
  ``--official-flash`` gives the official model flash-attn's call through SDPA instead. bf16 = bf16
  weights (how the official inference script runs); ``autocast`` = fp32 weights under bf16 autocast.
* vae: the released VAE v1.2 architecture (random weights), decode of 17 frames at 256x448, untiled (both)
  and tiled (ours, ``TilingOptions()``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from measure import DTYPES, Timing, autocast_or_null, load_line, peak_memory, run_child  # noqa: E402

VAE_FRAMES, VAE_SIZE = 17, (256, 448)


# ---------------------------------------------------------------------------------------------------
# Workers (one measurement per process)
# ---------------------------------------------------------------------------------------------------


def official_stdit3(root: Path, ours: torch.nn.Module, flash: bool) -> torch.nn.Module:
    from official_shims import official_module
    from step_time import CONFIG

    module = official_module(root, "models.stdit.stdit3", flash=flash)
    model = module.STDiT3(module.STDiT3Config(**CONFIG, enable_flash_attn=flash))
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


def step_worker(args) -> dict:
    from step_time import build_inputs, build_model, sampling_step

    dtype = DTYPES[args.dtype]
    weights_dtype = torch.float32 if args.autocast else dtype
    model = build_model(torch.float32)
    inputs = build_inputs(null_caption=model.null_caption(1))
    if args.impl == "official":
        model = official_stdit3(args.official, model, args.official_flash)
    model = model.to(weights_dtype)
    with torch.no_grad(), autocast_or_null(dtype if args.autocast else None):
        sampling_step(model, inputs)  # warm-up
        with peak_memory() as memory:
            timing = Timing.of(sampling_step, model, inputs)
    return {"cpu": timing.cpu, "wall": timing.wall, "peak": memory.peak, "working": memory.working}


def official_vae(root: Path, ours: torch.nn.Module) -> torch.nn.Module:
    """The official VideoAutoencoderPipeline with the released config, its SDXL-VAE built from our
    architecture record (``from_pretrained`` would download it), loaded with our weights."""
    from official_shims import official_module
    from vae_memory import RELEASED_CONFIG

    from opensora_core.vae.autoencoder_kl import autoencoder_config_for

    official_module(root, "models.vae.vae_temporal")
    module = official_module(root, "models.vae.vae")
    arch = dataclasses.asdict(autoencoder_config_for(RELEASED_CONFIG["vae_2d"]["from_pretrained"]))
    levels = len(arch["block_out_channels"])
    arch.update(down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels)

    class OfflineAutoencoderKL(module.AutoencoderKL):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls(**arch)

    module.AutoencoderKL = OfflineAutoencoderKL
    config = {k: v for k, v in RELEASED_CONFIG.items() if k != "from_pretrained"}
    model = module.VideoAutoencoderPipeline(module.VideoAutoencoderPipelineConfig(**config))
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


def vae_worker(args) -> dict:
    from vae_memory import build_vae

    from opensora_core.vae import TilingOptions

    dtype = DTYPES[args.dtype]
    vae = build_vae()
    if args.impl == "official":
        vae = official_vae(args.official, vae)
    vae = vae.to(dtype)
    z = torch.randn(1, 4, *vae_latent_size(), generator=torch.Generator().manual_seed(1), dtype=dtype)
    if args.impl == "official":
        def decode():
            return vae.decode(z, num_frames=VAE_FRAMES)
    else:
        tiling = TilingOptions() if args.tiled else None

        def decode():
            return vae.decode(z, VAE_FRAMES, tiling=tiling)
    with torch.no_grad(), peak_memory() as memory:
        timing = Timing.of(decode)
    return {"cpu": timing.cpu, "wall": timing.wall, "peak": memory.peak, "working": memory.working}


def vae_latent_size() -> tuple[int, int, int]:
    from opensora_core.geometry import VAE_V1_2

    return tuple(VAE_V1_2.latent_size(VAE_FRAMES, *VAE_SIZE))


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


def runs(what: str, dtypes: list[str]) -> list[tuple[str, list[str]]]:
    """(label, worker arguments) of each side, in the order they run back to back."""
    out = []
    for dtype in dtypes:
        if what == "step":
            out += [(f"ours {dtype}", ["--impl", "ours", "--dtype", dtype]),
                    (f"official {dtype}", ["--impl", "official", "--dtype", dtype])]
            if dtype != "fp32":
                out += [(f"ours {dtype} autocast", ["--impl", "ours", "--dtype", dtype, "--autocast"]),
                        (f"official {dtype} autocast", ["--impl", "official", "--dtype", dtype, "--autocast"])]
        else:
            out += [(f"ours {dtype} untiled", ["--impl", "ours", "--dtype", dtype]),
                    (f"ours {dtype} tiled", ["--impl", "ours", "--dtype", dtype, "--tiled"]),
                    (f"official {dtype} untiled", ["--impl", "official", "--dtype", dtype])]
    return out


def measure_all(args, what: str) -> dict[str, list[dict]]:
    plan = runs(what, args.dtypes.split(","))
    results: dict[str, list[dict]] = {label: [] for label, _ in plan}
    common = [str(args.official), "--worker", what, "--threads", str(args.threads)]
    if args.official_flash:
        common.append("--official-flash")
    for repeat in range(args.repeats):
        for label, worker_args in plan:
            results[label].append(run_child(__file__, common + worker_args, args.default_malloc))
            r = results[label][-1]
            print(f"  [{repeat + 1}/{args.repeats}] {what} {label}: cpu {r['cpu']:.2f} s, wall {r['wall']:.2f} s, "
                  f"peak {r['peak']:.0f} MiB, working {r['working']:.0f} MiB; {load_line()}", flush=True)
    return results


def table(what: str, results: dict[str, list[dict]]) -> None:
    median = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in results.items()}
    print(f"\n{what}: medians over {len(next(iter(results.values())))} runs")
    print(f"{'':28s} {'cpu s':>8s} {'wall s':>8s} {'peak MiB':>9s} {'working MiB':>11s} {'cpu vs official':>16s} "
          f"{'working vs official':>20s}")
    for label, m in median.items():
        rival = label.replace("ours", "official").replace(" tiled", " untiled")
        ratio = ("", "") if rival == label or rival not in median else (
            f"{m['cpu'] / median[rival]['cpu']:.2f}x", f"{m['working'] / median[rival]['working']:.2f}x")
        print(f"{label:28s} {m['cpu']:8.2f} {m['wall']:8.2f} {m['peak']:9.0f} {m['working']:11.0f} "
              f"{ratio[0]:>16s} {ratio[1]:>20s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="folder of an official Open-Sora v1.2.0 checkout")
    parser.add_argument("--what", default="step,vae", help="comma-separated: step, vae")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--repeats", type=int, default=3, help="back-to-back pairs per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--official-flash", action="store_true", help="official attention via flash-attn -> SDPA")
    parser.add_argument("--default-malloc", action="store_true", help="keep glibc's adaptive mmap threshold")
    parser.add_argument("--worker", choices=["step", "vae"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from official_shims import check_checkout

    problem = check_checkout(args.official)
    if problem:
        print(f"skipped: {problem}. Check out the v1.2.0 tag of hpcaitech/Open-Sora outside this repository "
              f"and pass its folder.")
        return
    if args.worker:
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)  # random weights can drive values subnormal, which is slow on x86
        print(json.dumps((step_worker if args.worker == "step" else vae_worker)(args)))
        return
    print(f"official checkout {args.official}; {args.threads} torch thread(s) per process; malloc "
          f"{'default' if args.default_malloc else 'fixed mmap threshold'}; {load_line()}")
    for what in args.what.split(","):
        table(what, measure_all(args, what))
    print(f"\n{load_line()} at the end")


if __name__ == "__main__":
    main()
