"""benchmarks/gpu.py: its --dry-run runs the GPU benchmark's code path on the CPU with tiny models."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from conftest import REPO


def _gpu_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_dry_run_goes_through_every_stage(capsys):
    gpu = _gpu_benchmark()
    threads = torch.get_num_threads()
    try:
        assert gpu.main(["--dry-run"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for stage in ("T5EncoderModel", "STDiT3", "VideoAutoencoderPipeline", "total"):
        assert stage in out


def test_without_cuda_it_says_so_and_exits(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert _gpu_benchmark().main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
