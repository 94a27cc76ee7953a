"""What the CPU benchmarks share: timing by wall clock and process CPU time, peak resident memory of one
call, the dtype names, and running a measurement in a fresh process.

Peak memory: Linux keeps a resident-set high-water mark per process (``VmHWM``); writing ``5`` to
``/proc/self/clear_refs`` resets it to the current RSS, so the peak of one call is read without the
model build's own high-water. glibc's malloc raises its mmap threshold as large blocks are freed, after
which tensors come from a heap that keeps pages; :func:`child_env` fixes the threshold (128 KiB) so the
high-water follows the live tensors (``--default-malloc`` in the scripts keeps glibc's behaviour).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MALLOC_MMAP_THRESHOLD = 128 * 1024


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


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")


def rss_mib() -> float:
    return _status_mib("VmRSS")


@dataclass
class Peak:
    """Resident memory (MiB) before a call and its high-water during the call."""

    before: float
    peak: float

    @property
    def working(self) -> float:
        return self.peak - self.before


@contextlib.contextmanager
def peak_memory():
    """``with peak_memory() as p: ...`` -> ``p.before``, ``p.peak``, ``p.working`` in MiB."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    result = Peak(rss_mib(), 0.0)
    yield result
    result.peak = _status_mib("VmHWM")


def autocast_or_null(dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def child_env(default_malloc: bool = False) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    return env


def run_child(script: str, args: list[str], default_malloc: bool = False) -> dict:
    """Run ``python script args`` in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env=child_env(default_malloc))
    if out.returncode:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} cores"
