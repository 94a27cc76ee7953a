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


CASE_MARKERS = ("config.json", "tables.json")  # a case folder holds one (Open-Sora 2.0 tables: only tables.json)


def reference_cases(pattern: str, family: str = "*") -> list[Path]:
    """Case folders ``<family>/cases/<pattern>`` of the reference set (globs: families v1_1, v1_2, osp,
    v2_0), sorted; [] without the reference set."""
    root = reference_dir()
    if root is None:
        return []
    return sorted(p for p in root.glob(f"{family}/cases/{pattern}") if any((p / m).is_file() for m in CASE_MARKERS))


def reference_case(family: str, name: str) -> Path:
    """One case folder of the reference set; skips the test when it is not there."""
    found = reference_cases(name, family)
    if not found:
        pytest.skip(f"reference case {family}/cases/{name} not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return found[0]


def case_ids(cases: list[Path]) -> list[str]:
    """Test ids for parametrizing over case folders: their names."""
    return [case.name for case in cases]


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (tiny ops on shared cores run far faster single-threaded)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

