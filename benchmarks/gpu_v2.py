"""Open-Sora 2.0 MMDiT on a CUDA GPU: seconds per sampling step and peak GPU memory, full size.

Builds the released 11B MMDiT (``OpenSora-v2-MMDiT`` preset) with random weights (the figures do not depend
on them) in bf16, optionally with fp8 Linear weights and/or block swap, and runs ``--steps`` sampler steps
(``sample_v2``: one model call per step with the guidance passes stacked, 512 T5 tokens) at 256px and
768px 16:9 with 129 frames. Prints per size: seconds per step, torch's peak allocated / reserved GPU memory
and the shape-based estimate (:mod:`opensora_core.models.mmdit_memory`), next to the official figures:

    README.md "Computational Efficiency" (hpcaitech/Open-Sora main): text-to-video, H100/H800, 50 steps,
    total time / peak GPU memory on 1 GPU: 256x256 60 s / 52.5 GB; 768x768 1656 s / 60.3 GB
    (i.e. about 1.2 s and 33 s per step, including text encoding and VAE decoding).

The default condition is i2v_head (three passes per call, like the official call for every condition type);
``--cond t2v`` runs two (our sampler skips the third t2v pass, which equals the second).

    python benchmarks/gpu_v2.py                       # bf16, all blocks on the GPU
    python benchmarks/gpu_v2.py --fp8 --blocks-on-device 20 --sizes 768px
    python benchmarks/gpu_v2.py --dry-run             # tiny model on the CPU: checks the code path only

Without a CUDA device (and without --dry-run) it stops with a message.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from opensora_core.conditioning.v2 import build_condition  # noqa: E402
from opensora_core.geometry.opensora_v2 import latent_shape, sampling_size  # noqa: E402
from opensora_core.models.block_swap import BlockSwap  # noqa: E402
from opensora_core.models.fp8 import Fp8Linear, Fp8Operations  # noqa: E402
from opensora_core.models.mmdit import MMDiTConfig, MMDiTModel  # noqa: E402
from opensora_core.models.mmdit_memory import MemorySetting, estimate_memory, measure_peak_bytes  # noqa: E402
from opensora_core.sampling.v2 import GuidanceV2, ThreePassGuidance, get_schedule, sample_v2  # noqa: E402
from opensora_core.text.v2 import TextV2  # noqa: E402

GB = 1e9
OFFICIAL = {"256px": (60 / 50, 52.5), "768px": (1656 / 50, 60.3)}  # (s per step, GB) from the README table
DRY_RUN_CONFIG = dict(hidden_size=64, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(4, 14, 14),
                      context_in_dim=32, vec_in_dim=16)
DRY_RUN_SIZES = {"256px": (32, 48), "768px": (48, 64)}  # pixel sizes standing in for the two resolutions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="sampler steps per size (the first is a warm-up)")
    parser.add_argument("--sizes", default="256px,768px", help="comma-separated: 256px, 768px")
    parser.add_argument("--frames", type=int, default=129)
    parser.add_argument("--fp8", action="store_true", help="fp8 (e4m3fn) Linear weights, bf16 compute")
    parser.add_argument("--blocks-on-device", type=int, default=None, help="block swap: blocks kept on the GPU")
    parser.add_argument("--separate-passes", action="store_true", help="one model call per guidance pass")
    parser.add_argument("--cond", default="i2v_head", choices=["i2v_head", "t2v"])
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (checks the script)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Model with random weights, built one block at a time on the device
# ---------------------------------------------------------------------------


def _random_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights in place: N(0, 0.02) (fp8 layers quantise theirs), RMS-norm gains 1."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Fp8Linear):
                w = torch.randn(m.out_features, m.in_features, generator=generator, device=generator.device)
                m.set_weight(w.mul_(0.02))
            for name, p in m.named_parameters(recurse=False):
                if name == "scale":
                    p.fill_(1.0)
                elif not isinstance(m, Fp8Linear) or name == "bias":
                    p.normal_(0.0, 0.02, generator=generator)


def build(config: MMDiTConfig, device: torch.device, fp8: bool, blocks_on_device: int | None,
          dtype: torch.dtype = torch.bfloat16):
    """The model on ``device`` (swapped blocks in CPU RAM when blocks_on_device is set) and the BlockSwap."""
    ops = Fp8Operations if fp8 else torch.nn
    with torch.device("meta"):
        model = MMDiTModel(config, dtype=dtype, operations=ops)
    generator = torch.Generator(device=device).manual_seed(0)
    swapped = set() if blocks_on_device is None else {id(b) for b in model.blocks[blocks_on_device:]}
    for unit in _units(model):
        unit.to_empty(device=device)
        _random_(unit, generator)
        if id(unit) in swapped:
            unit.to("cpu")  # keeps the device peak at one block while building
    model.eval().requires_grad_(False)
    swap = None if blocks_on_device is None else BlockSwap(model.blocks, device, blocks_on_device).attach()
    return model, swap


def _units(model: MMDiTModel) -> list[torch.nn.Module]:
    units = []
    for child in model.children():
        units += list(child) if isinstance(child, torch.nn.ModuleList) else [child]
    return units


# ---------------------------------------------------------------------------
# One size
# ---------------------------------------------------------------------------


def run_size(model, config: MMDiTConfig, height: int, width: int, args, device: torch.device) -> dict:
    shape = latent_shape(1, height, width, args.frames, channels=config.latent_channels, patch_size=config.patch_size)
    gen = torch.Generator(device=device).manual_seed(1)
    z = torch.randn(shape.shape, generator=gen, device=device, dtype=torch.bfloat16)
    txt = torch.randn(2, args.text_tokens, config.context_in_dim, generator=gen, device=device, dtype=torch.bfloat16)
    vec = torch.randn(2, config.vec_in_dim, generator=gen, device=device, dtype=torch.bfloat16)
    text = TextV2(txt[:1], vec[:1], txt[1:], vec[1:])
    refs = None if args.cond == "t2v" else [[torch.randn(shape.channels, 1, shape.height, shape.width, device=device)]]
    condition = build_condition(z, args.cond, refs)
    times = get_schedule(args.steps, shape.tokens_per_frame, shape.frames)
    stamps: list[float] = []

    def tick(_info) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    def sample():
        denoiser = ThreePassGuidance(model, text, GuidanceV2(), batch_passes=not args.separate_passes)
        return sample_v2(denoiser, z, times, mask=condition, callback=tick)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        tick(None)
        sample()
        peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    else:
        tick(None)
        _, peak = measure_peak_bytes(sample)
        reserved = float("nan")
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tokens": shape.tokens, "step_s": statistics.median(steps[1:] or steps), "peak": peak, "reserved": reserved}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_v2.py needs a CUDA GPU (torch.cuda.is_available() is False here). Run it on a GPU "
                         "machine, or add --dry-run to check the code path on the CPU with a tiny model.")
    device = torch.device("cpu" if args.dry_run else "cuda")
    preset = MMDiTModel.PRESETS["OpenSora-v2-MMDiT"]
    config = MMDiTConfig(**{**preset.__dict__, **DRY_RUN_CONFIG}) if args.dry_run else preset
    if args.dry_run:
        args.frames, args.text_tokens = min(args.frames, 9), min(args.text_tokens, 16)
    model, swap = build(config, device, args.fp8, args.blocks_on_device)
    passes = 2 if args.cond == "t2v" else 3
    setting = MemorySetting(fp8=args.fp8, blocks_on_device=args.blocks_on_device,
                            batch_passes=not args.separate_passes, passes=passes)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (dry run)'}; "
          f"{'fp8' if args.fp8 else 'bf16'} weights; blocks on device: {args.blocks_on_device or 'all'}; "
          f"{'separate' if args.separate_passes else 'batched'} passes ({passes}); {args.frames} frames; "
          f"{args.steps} steps")
    unit, name = (1e6, "MB") if args.dry_run else (GB, "GB")  # the dry run's peak: tensors made during sampling
    print(f"{'size':>6} {'tokens':>7} {'s/step':>8} {'peak ' + name:>8} {'reserved':>9} {'estimate':>9} "
          f"{'official s/step':>16} {'official GB':>12}")
    for size in args.sizes.split(","):
        height, width = DRY_RUN_SIZES[size] if args.dry_run else sampling_size(size, "16:9")
        result = run_size(model, config, height, width, args, device)
        estimate = estimate_memory(config, height=height, width=width, num_frames=args.frames,
                                   text_tokens=args.text_tokens, setting=setting)
        official = OFFICIAL.get(size, (float("nan"), float("nan")))
        print(f"{size:>6} {result['tokens']:>7} {result['step_s']:>8.2f} {result['peak'] / unit:>8.2f} "
              f"{result['reserved'] / unit:>9.2f} {estimate.total / unit:>9.2f} {official[0]:>16.1f} "
              f"{official[1]:>12.1f}")
    if swap is not None:
        swap.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
