"""Shared test fixtures: paths to the reference cases and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The tests run tiny models: one thread per process is faster than a thread pool (whose
# synchronisation dominates tiny ops, and collapses when the cores are shared), and
# subprocesses (CLI, 2-process training) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def reference_dir() -> Path | None:
    """The official reference set: $OPENSORA_REFERENCE_DIR or ../shared/reference beside the checkout."""
    env = os.environ.get("OPENSORA_REFERENCE_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "reference"
    return path if path.is_dir() else None


def reference_cases(pattern: str) -> list[Path]:
    """Case folders under the reference set whose name matches ``pattern`` (glob), sorted."""
    root = reference_dir()
    if root is None:
        return []
    return sorted(p for p in root.glob(f"v1_*/cases/{pattern}") if (p / "config.json").is_file())


@pytest.fixture(scope="session")
def reference() -> Path:
    root = reference_dir()
    if root is None:
        pytest.skip("reference set not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return root


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
