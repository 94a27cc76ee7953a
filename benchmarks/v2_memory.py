"""Open-Sora 2.0 MMDiT memory settings on the CPU: measured peak memory and time per step vs the estimate.

A reduced MMDiT with random weights: the released head geometry (head_dim 128, RoPE axes 16/56/56, 64-channel
packed latents, T5 width 4096, CLIP width 768, MLP ratio 4) but width 512 (4 heads) and 2 double + 4 single
blocks instead of 3072 and 19 + 38; ``--full-width``: the released width 3072 (24 heads) with 1 double + 1 single
block (0.48B parameters). One sampler step = one model call on the guidance passes (i2v_head: 3) at 128x224 px,
9 frames (3 latent frames, 336 image tokens) with 128 T5 tokens, batch 1.

Settings: bf16 (passes in one call, as official), fp32, bf16 with one call per pass, fp8 Linear weights, and
block swap with half of the blocks resident (on a CPU-only machine the "device" is the CPU too: this shows the
copies' cost, not a saving). Every setting runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_`` = 128 KiB
(so the RSS high-water follows the live tensors) and reports:

* model MB: bytes of the model's tensors; RSS MB: RSS high-water growth while building it (adds the
  initialisation temporaries and runtime allocations);
* working: RSS high-water growth while sampling over the RSS after building (the high-water mark is reset
  after building: activations, inputs, allocator slack);
* tracked: peak bytes of tensors created during one sampler step (``measure_peak_bytes``);
* est. MB: ``estimate_memory`` (weights on the device; activations + inputs) for the same shapes, and the
  ratios estimate / working and estimate / tracked;
* s/step, cpu s: median wall-clock and process-CPU seconds per step over ``--steps`` (after a warm-up step;
  on a shared machine the CPU time is the steadier figure).

Then the full-size estimates for the released model (256px / 768px, 16:9, 129 frames). Not a test.

    python benchmarks/v2_memory.py [--steps 3] [--quick] [--full-width]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from opensora_core.models.mmdit import MMDiTConfig, MMDiTModel  # noqa: E402
from opensora_core.models.mmdit_memory import MemorySetting, estimate_memory  # noqa: E402

MB, GIB = 1e6, 1024**3
REDUCED = dict(hidden_size=512, num_heads=4, depth=2, depth_single_blocks=4)
FULL_WIDTH = dict(hidden_size=3072, num_heads=24, depth=1, depth_single_blocks=1)  # the released width
SIZE = dict(height=128, width=224, num_frames=9)
QUICK_SIZE = dict(height=64, width=64, num_frames=5)
TEXT_TOKENS = 128
SETTINGS = {
    "bf16": MemorySetting(),
    "fp32": MemorySetting(dtype=torch.float32),
    "bf16 separate passes": MemorySetting(batch_passes=False),
    "fp8": MemorySetting(fp8=True),
    "block swap": MemorySetting(blocks_on_device=-1),  # -1: half of the blocks (see settings_for)
}


def reduced_config(full_width: bool = False) -> MMDiTConfig:
    reduced = FULL_WIDTH if full_width else REDUCED
    return MMDiTConfig(**{**MMDiTModel.PRESETS["OpenSora-v2-MMDiT"].__dict__, **reduced})


def settings_for(config: MMDiTConfig) -> dict[str, MemorySetting]:
    """SETTINGS with the block swap's resident count filled in: half of the config's blocks."""
    blocks = config.depth + config.depth_single_blocks
    return {(f"{name} {blocks // 2}/{blocks}" if s.blocks_on_device == -1 else name):
            (dataclasses.replace(s, blocks_on_device=blocks // 2) if s.blocks_on_device == -1 else s)
            for name, s in SETTINGS.items()}


def _high_water_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024 / MB


def _reset_peak() -> float:
    """Reset the RSS high-water mark (Linux >= 4.0: "5" to clear_refs) so that the sampling peak is not hidden
    by the building peak (fp8: the bf16 weights before quantising); returns the RSS now, MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


# ---------------------------------------------------------------------------
# Child: one setting
# ---------------------------------------------------------------------------


def _child(name: str, steps: int, size: dict, full_width: bool) -> dict:
    gpu = _import_gpu_helpers()
    from opensora_core.conditioning.v2 import build_condition
    from opensora_core.geometry.opensora_v2 import latent_shape
    from opensora_core.models.mmdit_memory import measure_peak_bytes
    from opensora_core.sampling.v2 import GuidanceV2, ThreePassGuidance, get_schedule, sample_v2
    from opensora_core.text.v2 import TextV2

    config = reduced_config(full_width)
    setting = settings_for(config)[name]
    torch.manual_seed(0)
    start = _high_water_mb()
    model, swap = gpu.build(config, torch.device("cpu"), setting.fp8, setting.blocks_on_device, dtype=setting.dtype)
    built = _high_water_mb()
    resident = _reset_peak()
    shape = latent_shape(1, size["height"], size["width"], size["num_frames"])
    typed = dict(dtype=setting.dtype)  # the release hands over the text states in the model dtype
    z = torch.randn(shape.shape, **typed)
    txt, vec = torch.randn(2, TEXT_TOKENS, config.context_in_dim, **typed), torch.randn(2, config.vec_in_dim, **typed)
    text = TextV2(txt[:1], vec[:1], txt[1:], vec[1:])
    condition = build_condition(z, "i2v_head", [[torch.randn(16, 1, shape.height, shape.width)]])
    stamps = [(time.perf_counter(), time.process_time())]
    denoiser = ThreePassGuidance(model, text, GuidanceV2(), batch_passes=setting.batch_passes)
    sample_v2(denoiser, z, get_schedule(steps + 1, shape.tokens_per_frame, shape.frames), mask=condition,
              callback=lambda info: stamps.append((time.perf_counter(), time.process_time())))
    sampled = _status_mb("VmHWM")
    _, tracked = measure_peak_bytes(sample_v2, denoiser, z, [1.0, 0.5], mask=condition)
    tensors = {t.data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
    return {
        "model_mb": sum(tensors.values()) / MB,
        "weights_mb": built - start,
        "working_mb": sampled - resident,
        "tracked_mb": tracked / MB,
        "step_s": statistics.median(b[0] - a[0] for a, b in zip(stamps[1:], stamps[2:])),
        "step_cpu_s": statistics.median(b[1] - a[1] for a, b in zip(stamps[1:], stamps[2:])),
        "copies": None if swap is None else swap.copies,
    }


def _import_gpu_helpers():
    """The model builder of benchmarks/gpu_v2.py (random weights, fp8, block swap)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_v2", Path(__file__).with_name("gpu_v2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def run_child(name: str, steps: int, quick: bool, full_width: bool) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(steps)] + (["--quick"] if quick else []) \
        + (["--full-width"] if full_width else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_reduced(steps: int, quick: bool, full_width: bool) -> None:
    size, config = (QUICK_SIZE if quick else SIZE), reduced_config(full_width)
    params = sum(p.numel() for p in _meta_model(config).parameters()) / 1e9
    print(f"reduced MMDiT (width {config.hidden_size}, {config.num_heads} heads of 128, {config.depth} + "
          f"{config.depth_single_blocks} blocks, {params:.2f}B parameters), {size['height']}x{size['width']} px, "
          f"{size['num_frames']} frames, {TEXT_TOKENS} text tokens, i2v_head (3 passes), CPU, "
          f"{os.environ.get('OMP_NUM_THREADS', '2')} threads")
    print(f"{'setting':<22} {'model MB':>8} {'RSS MB':>7} {'est. MB':>8} | {'working':>7} {'tracked':>7} "
          f"{'est. MB':>8} {'est/work':>8} {'est/trk':>7} | {'s/step':>6} {'cpu s':>6}")
    for name, setting in settings_for(config).items():
        r = run_child(name, steps, quick, full_width)
        est = estimate_memory(config, text_tokens=TEXT_TOKENS, setting=setting, **size)
        active = (est.activations + est.inputs) / MB
        note = f"  ({r['copies']} block copies)" if r["copies"] else ""
        print(f"{name:<22} {r['model_mb']:>8.1f} {r['weights_mb']:>7.1f} {est.weights / MB:>8.1f} | "
              f"{r['working_mb']:>7.1f} {r['tracked_mb']:>7.1f} {active:>8.1f} "
              f"{active / max(r['working_mb'], 1):>8.2f} {active / max(r['tracked_mb'], 1e-3):>7.2f} | {r['step_s']:>6.2f} {r['step_cpu_s']:>6.2f}{note}",
              flush=True)
    print("model MB: bytes of the model's tensors; RSS MB: RSS growth while building; est. MB: weights on the compute "
          "device\n(block swap: resident + one block). working: RSS growth while sampling; tracked: tensors created "
          "in one step\n(block swap: includes the block copies); est. MB: activations + inputs.")


def _meta_model(config: MMDiTConfig) -> MMDiTModel:
    with torch.device("meta"):
        return MMDiTModel(config)


def print_full_size() -> None:
    config = MMDiTModel.PRESETS["OpenSora-v2-MMDiT"]
    print("\nfull-size estimates (released MMDiT, 16:9, 129 frames, 512 T5 tokens, batch 1, i2v 3 passes), GiB:")
    print(f"{'setting':<26} {'256px':>22} {'768px':>22}")
    settings = {**settings_for(config), "fp8 + block swap 20/57": MemorySetting(fp8=True, blocks_on_device=20),
                "bf16 swap 0/57, separate": MemorySetting(blocks_on_device=0, batch_passes=False)}
    settings.pop("block swap 28/57")
    for name, setting in settings.items():
        cells = []
        for height, width in ((192, 336), (576, 1024)):
            e = estimate_memory(config, height=height, width=width, num_frames=129, setting=setting)
            cells.append(f"{e.total / GIB:6.1f} (w {e.weights / GIB:4.1f}, a {e.activations / GIB:4.1f})")
        print(f"{name:<26} {cells[0]:>22} {cells[1]:>22}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smaller video (checks the script)")
    parser.add_argument("--full-width", action="store_true",
                        help="the released width 3072 with 1 + 1 blocks (about 2 GB in fp32) instead of width 512")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.steps, QUICK_SIZE if args.quick else SIZE, args.full_width)))
        return 0
    print_reduced(args.steps, args.quick, args.full_width)
    print_full_size()
    return 0


if __name__ == "__main__":
    sys.exit(main())
