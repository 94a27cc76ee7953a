"""Time one STDiT3 sampling step on the CPU: seconds, peak memory, and the FLOP rate against a plain matmul's.

One step = the classifier-free-guidance pair as the official v1.2 sampler runs it: one forward of batch 2
(prompt + null caption, the prompt's token mask, an all-True x_mask) and the guidance combination.
Model: STDiT3 with hidden 1152, 16 heads, depth 2, random weights, frozen (as every loaded inference
model); input 51 frames at 240p (latent 15x30x53, pixel 240x426), 300 caption tokens of which 40 are valid.

``--dtype`` sets the weights' dtype (bf16 / fp16 / fp32); ``--autocast`` keeps fp32 weights and runs under
CPU autocast to ``--dtype``. ``--compile`` runs the model through ``torch.compile``. ``--out-of-place``
turns the in-place inference fast path off (``opensora_core.models.inplace``), ``--no-fused`` the fused
CPU Linear (``opensora_core.models.fused``), to see what each saves.

Prints, per timed step: wall and process-CPU seconds, the resident-memory peak of the step and its working
memory (peak minus the RSS before it), and the matmul rate (2048x2048, same dtype) measured around it;
then the medians, the step's FLOPs (torch FlopCounterMode) and the achieved fraction of the matmul rate.
Run it under ``MALLOC_MMAP_THRESHOLD_=131072`` for memory figures that follow the live tensors (see
``benchmarks/measure.py``). Not a test.

    python benchmarks/step_time.py [--dtype bf16] [--autocast] [--compile] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import DTYPES, Timing, autocast_or_null, load_line, peak_memory  # noqa: E402

from opensora_core.models import fused, inplace  # noqa: E402
from opensora_core.models.stdit3 import STDiT3, STDiT3Config  # noqa: E402

LATENT = (15, 30, 53)  # 51 frames at 240p 9:16 through the v1.2 VAE
PIXELS = (240.0, 426.0)
TOKENS, VALID_TOKENS = 300, 40
GUIDANCE = 7.0
CONFIG = dict(hidden_size=1152, num_heads=16, depth=2)

aten = torch.ops.aten
if aten._scaled_dot_product_flash_attention_for_cpu.default not in torch.utils.flop_counter.flop_registry:

    # The CPU attention kernel has no formula in FlopCounterMode; count it like the other SDPA kernels.
    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

_LINEAR_POINTWISE = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
if _LINEAR_POINTWISE is not None and _LINEAR_POINTWISE.default not in torch.utils.flop_counter.flop_registry:

    # The fused CPU Linear (opensora_core/models/fused.py) is invisible to FlopCounterMode: count its GEMM.
    @register_flop_formula(_LINEAR_POINTWISE)
    def _linear_pointwise_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        rows = math.prod(input_shape[:-1])
        return 2 * rows * weight_shape[0] * weight_shape[1]  # (N, C_in) @ (C_in, C_out)


def build_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> STDiT3:
    """The benchmark's STDiT3 (random weights from ``seed``), frozen, in ``dtype``."""
    torch.manual_seed(seed)
    return STDiT3(STDiT3Config(**CONFIG)).to(dtype).eval().requires_grad_(False)


def build_inputs(model_dtype: torch.dtype = torch.float32, null_caption: torch.Tensor | None = None) -> dict:
    """The step's inputs (float32 latents and captions, as a sampler hands them; the model casts)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, *LATENT, generator=gen)
    prompt = torch.randn(1, 1, TOKENS, 4096, generator=gen)
    null = null_caption if null_caption is not None else torch.randn(1, 1, TOKENS, 4096, generator=gen)
    mask = torch.zeros(1, TOKENS, dtype=torch.long)
    mask[:, :VALID_TOKENS] = 1
    return dict(
        x=torch.cat([z, z]),
        timestep=torch.full((2,), 707.5),
        y=torch.cat([prompt, null.float()]),
        mask=mask,  # one row: the model tiles it to the CFG batch
        x_mask=torch.ones(2, LATENT[0], dtype=torch.bool),
        fps=torch.full((1,), 24.0),
        height=torch.full((2,), PIXELS[0]),
        width=torch.full((2,), PIXELS[1]),
        num_frames=torch.full((2,), 51.0),
        ar=torch.full((2,), PIXELS[0] / PIXELS[1]),
    )


def sampling_step(model, inputs: dict) -> torch.Tensor:
    v = model(**inputs)[:, :4]  # velocity channels
    cond, uncond = v.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """(wall, cpu) FLOP/s of a size x size matmul in ``dtype``, best of two short batches; cpu is per thread."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b

    def batch():
        for _ in range(repeats):
            a @ b

    timings = [Timing.of(batch) for _ in range(2)]
    flops = 2 * size**3 * repeats
    return flops / min(t.wall for t in timings), flops * torch.get_num_threads() / min(t.cpu for t in timings)


@dataclass
class StepResult:
    timing: Timing
    memory: object  # measure.Peak
    rate_wall: float
    rate_cpu: float


def timed_steps(model, inputs: dict, repeats: int, dtype: torch.dtype) -> list[StepResult]:
    """Per step: its timing and peak memory, and the matmul rate right before and after it (averaged, so a
    change of machine load affects both alike)."""
    sampling_step(model, inputs)  # warm-up (and compilation)
    results = []
    for _ in range(repeats):
        before = matmul_rate(dtype)
        with peak_memory() as memory:
            step = Timing.of(sampling_step, model, inputs)
        after = matmul_rate(dtype)
        results.append(StepResult(step, memory, (before[0] + after[0]) / 2, (before[1] + after[1]) / 2))
    return results


def report(results: list[StepResult], flops: float, threads: int) -> None:
    for r in results:
        print(f"  step {r.timing.wall:.3f} s wall, {r.timing.cpu / threads:.3f} s cpu/thread; peak {r.memory.peak:.0f} "
              f"MiB, working {r.memory.working:.0f} MiB; matmul around it {r.rate_wall / 1e9:.1f} GFLOP/s wall, "
              f"{r.rate_cpu / 1e9:.1f} by cpu time")
    median = statistics.median
    wall = [flops / r.timing.wall / r.rate_wall for r in results]
    cpu = [flops * threads / r.timing.cpu / r.rate_cpu for r in results]
    print(f"seconds per step (median): wall {median(r.timing.wall for r in results):.3f}, "
          f"cpu/thread {median(r.timing.cpu for r in results) / threads:.3f}")
    print(f"peak memory of the step (median): {median(r.memory.peak for r in results):.0f} MiB resident, "
          f"working {median(r.memory.working for r in results):.0f} MiB")
    print(f"FLOPs per step: {flops / 1e12:.4f} TFLOP")
    print(f"matmul rate (median): {median(r.rate_wall for r in results) / 1e9:.1f} GFLOP/s")
    print(f"achieved / matmul rate, wall clock: median {median(wall):.3f}, best {max(wall):.3f}")
    print(f"achieved / matmul rate, cpu time:   median {median(cpu):.3f}, best {max(cpu):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype (autocast dtype with --autocast)")
    parser.add_argument("--autocast", action="store_true", help="fp32 weights under CPU autocast to --dtype")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out-of-place", action="store_true", help="without the in-place inference fast path")
    parser.add_argument("--no-fused", action="store_true", help="without the fused CPU Linear (models/fused.py)")
    args = parser.parse_args()
    if args.autocast and args.dtype == "fp32":
        parser.error("--autocast needs --dtype bf16 or fp16")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out_of_place:
        inplace.can_overwrite = lambda *tensors: False  # this process only: every op takes its out-of-place branch
    fused.ENABLED = not args.no_fused

    dtype = DTYPES[args.dtype]
    model = build_model(torch.float32 if args.autocast else dtype)
    inputs = build_inputs(null_caption=model.null_caption(1))
    runner = torch.compile(model) if args.compile else model
    load_before = load_line()
    with torch.inference_mode(), autocast_or_null(dtype if args.autocast else None):
        with FlopCounterMode(display=False) as counter:
            sampling_step(model, inputs)
        flops = counter.get_total_flops()
        results = timed_steps(runner, inputs, args.repeats, dtype)
    threads = torch.get_num_threads()
    mode = f"{args.dtype} {'autocast (fp32 weights)' if args.autocast else 'weights'}"
    print(f"{mode}, threads {threads}, in-place fast path {'off' if args.out_of_place else 'on'}, "
          f"fused Linear {'off' if args.no_fused else 'on'}, "
          f"compile {'on' if args.compile else 'off'}; {load_before} before, {load_line()} after")
    report(results, flops, threads)


if __name__ == "__main__":
    main()
