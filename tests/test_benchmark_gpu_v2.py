"""benchmarks/gpu_v2.py: the --dry-run path runs on the CPU; without a GPU the real run stops clearly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_v2.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_v2_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_exercises_fp8_block_swap_and_both_sizes(capsys):
    assert _script().main(["--dry-run", "--steps", "2", "--fp8", "--blocks-on-device", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.strip().startswith(("256px", "768px"))]
    assert [r[0] for r in rows] == ["256px", "768px"]
    assert all(float(r[2]) > 0 for r in rows)  # seconds per step were measured


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real run would start")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        _script().main(["--steps", "1"])
