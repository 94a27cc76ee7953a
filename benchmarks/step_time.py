"""Time one STDiT3 sampling step on the CPU and compare its FLOP rate with a plain matmul's.

One step = the classifier-free-guidance pair as the official v1.2 sampler runs it: one forward of batch 2
(prompt + null caption, the prompt's token mask, an all-True x_mask) and the guidance combination.
Model: STDiT3 with hidden 1152, 16 heads, depth 2, random weights, float32; input 51 frames at 240p
(latent 15x30x53, pixel 240x426), 300 caption tokens of which 40 are valid.

Prints seconds per step (median after a warm-up), the step's FLOPs (torch FlopCounterMode), the 2048x2048
float32 matmul rate measured around each step in the same run, and the achieved fraction of it (median and
best over the steps), by wall clock and by process CPU time (the latter is less sensitive to other
processes sharing the cores). Not a test.

``--out-of-place`` turns the in-place inference fast path off (``opensora_core.models.inplace``: every op
allocates its result, as under autograd), to see what it saves.

    python benchmarks/step_time.py [--repeats 3] [--threads N] [--out-of-place]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from opensora_core.models import inplace  # noqa: E402
from opensora_core.models.stdit3 import STDiT3, STDiT3Config  # noqa: E402

LATENT = (15, 30, 53)  # 51 frames at 240p 9:16 through the v1.2 VAE
PIXELS = (240.0, 426.0)
TOKENS, VALID_TOKENS = 300, 40
GUIDANCE = 7.0

aten = torch.ops.aten
if aten._scaled_dot_product_flash_attention_for_cpu.default not in torch.utils.flop_counter.flop_registry:

    # The CPU attention kernel has no formula in FlopCounterMode; count it like the other SDPA kernels.
    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def build_inputs(model: STDiT3) -> dict:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, *LATENT, generator=gen)
    prompt = torch.randn(1, 1, TOKENS, 4096, generator=gen)
    null = model.null_caption(1)  # (1, 1, L, C)
    mask = torch.zeros(1, TOKENS, dtype=torch.long)
    mask[:, :VALID_TOKENS] = 1
    return dict(
        x=torch.cat([z, z]),
        timestep=torch.full((2,), 707.5),
        y=torch.cat([prompt, null]),
        mask=mask,  # one row: the model tiles it to the CFG batch
        x_mask=torch.ones(2, LATENT[0], dtype=torch.bool),
        fps=torch.full((1,), 24.0),
        height=torch.full((2,), PIXELS[0]),
        width=torch.full((2,), PIXELS[1]),
        num_frames=torch.full((2,), 51.0),
        ar=torch.full((2,), PIXELS[0] / PIXELS[1]),
    )


def sampling_step(model: STDiT3, inputs: dict) -> torch.Tensor:
    v = model(**inputs)[:, :4]  # velocity channels
    cond, uncond = v.chunk(2)
    return uncond + GUIDANCE * (cond - uncond)


@dataclass
class Timing:
    """Wall and process-CPU seconds of one call; CPU seconds exclude time the threads were preempted."""

    wall: float
    cpu: float

    @classmethod
    def of(cls, fn, *args) -> Timing:
        wall, cpu = time.perf_counter(), time.process_time()
        fn(*args)
        return cls(time.perf_counter() - wall, time.process_time() - cpu)


def matmul_rate(size: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """(wall, cpu) FLOP/s of a size x size float32 matmul, best of two short batches; cpu is per thread."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b

    def batch():
        for _ in range(repeats):
            a @ b

    timings = [Timing.of(batch) for _ in range(2)]
    flops = 2 * size**3 * repeats
    return flops / min(t.wall for t in timings), flops * torch.get_num_threads() / min(t.cpu for t in timings)


def timed_steps(model: STDiT3, inputs: dict, repeats: int) -> list[tuple[Timing, float, float]]:
    """(step timing, wall and cpu matmul FLOP/s around it) per step: the matmul rate is measured right
    before and right after each step and averaged, so a change of machine load affects both alike."""
    sampling_step(model, inputs)  # warm-up
    results = []
    for _ in range(repeats):
        before = matmul_rate()
        step = Timing.of(sampling_step, model, inputs)
        after = matmul_rate()
        results.append((step, (before[0] + after[0]) / 2, (before[1] + after[1]) / 2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out-of-place", action="store_true", help="without the in-place inference fast path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out_of_place:
        inplace.can_overwrite = lambda *tensors: False  # this process only: every op takes its out-of-place branch

    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(hidden_size=1152, num_heads=16, depth=2)).eval()
    inputs = build_inputs(model)
    load_before = os.getloadavg()
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            sampling_step(model, inputs)
        flops = counter.get_total_flops()
        results = timed_steps(model, inputs, args.repeats)
    load_after = os.getloadavg()

    threads = torch.get_num_threads()
    wall = [flops / step.wall / rate for step, rate, _ in results]
    cpu = [flops * threads / step.cpu / rate for step, _, rate in results]
    print(f"threads {threads}, in-place fast path {'off' if args.out_of_place else 'on'}, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    for step, rate, cpu_rate in results:
        print(f"  step {step.wall:.3f} s wall ({step.cpu / threads:.3f} s cpu/thread); "
              f"matmul 2048x2048 fp32 around it {rate / 1e9:.1f} GFLOP/s wall, {cpu_rate / 1e9:.1f} by cpu time")
    print(f"seconds per step (median): {statistics.median(step.wall for step, _, _ in results):.3f}")
    print(f"FLOPs per step: {flops / 1e12:.4f} TFLOP")
    print(f"matmul rate (median): {statistics.median(rate for _, rate, _ in results) / 1e9:.1f} GFLOP/s")
    print(f"achieved / matmul rate, wall clock: median {statistics.median(wall):.3f}, best {max(wall):.3f}")
    print(f"achieved / matmul rate, cpu time:   median {statistics.median(cpu):.3f}, best {max(cpu):.3f}")


if __name__ == "__main__":
    main()
