"""Parity runner: replay the official reference cases with our code only.

A *case* is a folder with ``config.json`` and either ``weights.safetensors`` +
``io.safetensors`` (tensors named ``in.*``, ``rng.*``, ``out.*``, ...) or a
``table.json``/``tables.json`` of pure-logic examples. A *handler* recognises a
case from its config, builds our objects from it, feeds the inputs and returns
one :class:`Comparison` per expected output. The runner compares, checks that
every ``out.*`` tensor was compared, and reports one line per case.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

TABLES_ONLY_FILE = "tables.json"  # a case folder may hold only this (Open-Sora 2.0 tables)
# Handler modules, in matching order. Each defines ``HANDLERS: list[Handler]``.
HANDLER_MODULES = (
    "stdit", "vae", "osp_vae", "v2_vae", "sampling", "inference", "tables", "osp_dit", "osp_sampling", "v2",
    "v2_tables",
)


@dataclass
class Case:
    """One reference case folder, with lazily loaded files."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def config(self) -> dict:
        if not self.has("config.json") and self.has(TABLES_ONLY_FILE):
            return {}  # a pure-logic case with only its tables file
        return json.loads((self.path / "config.json").read_text())

    @cached_property
    def io(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "io.safetensors"))

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "weights.safetensors"))

    def has(self, filename: str) -> bool:
        return (self.path / filename).is_file()

    def json(self, filename: str) -> Any:
        return json.loads((self.path / filename).read_text())

    def outputs(self) -> list[str]:
        """Names of the expected output tensors (``out.*``) of this case."""
        if not self.has("io.safetensors"):
            return []
        return sorted(k for k in self.io if k.startswith("out."))

    def tolerance(self, key: str | None = None) -> tuple[float, float]:
        """(atol, rtol) from ``recommended_tolerance`` (optionally a named sub-entry such as "z")."""
        tol = self.config.get("recommended_tolerance", {})
        if key is not None and isinstance(tol.get(key), dict):
            tol = tol[key]
        return float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))


@dataclass
class Comparison:
    """An expected value and ours. Tensors compare with ``|a - e| <= atol + rtol*|e|``
    (NaN matches NaN); anything else must be equal."""

    name: str
    actual: Any
    expected: Any
    atol: float = 0.0
    rtol: float = 0.0

    def check(self) -> tuple[bool, float, str]:
        """(passed, max_abs_err, message)."""
        if isinstance(self.expected, torch.Tensor):
            return _check_tensor(self)
        same = _normalise(self.actual) == _normalise(self.expected)
        msg = "" if same else f"{self.name}: got {self.actual!r}, expected {self.expected!r}"
        return same, 0.0 if same else math.inf, msg


def _check_tensor(c: Comparison) -> tuple[bool, float, str]:
    actual = torch.as_tensor(c.actual)
    expected = c.expected
    if tuple(actual.shape) != tuple(expected.shape):
        return False, math.inf, f"{c.name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    if expected.dtype == torch.bool or not expected.is_floating_point():
        same = torch.equal(actual.to(expected.dtype), expected)
        err = 0.0 if same else float((actual.double() - expected.double()).abs().max())
        return same, err, "" if same else f"{c.name}: values differ (max {err:.3g})"
    a, e = actual.double(), expected.double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        return False, math.inf, f"{c.name}: NaN positions differ"
    diff = (a - e).abs().masked_fill(nan_e, 0.0)
    err = float(diff.max()) if diff.numel() else 0.0
    bad = diff > c.atol + c.rtol * e.abs().masked_fill(nan_e, 0.0)
    ok = not bool(bad.any())
    msg = "" if ok else f"{c.name}: {int(bad.sum())}/{bad.numel()} values outside atol={c.atol:g} rtol={c.rtol:g}"
    return ok, err, msg


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    return value


@dataclass
class Handler:
    """Recognises a kind of case and replays it."""

    name: str
    matches: Callable[[Case], bool]
    run: Callable[[Case], list[Comparison]]


@dataclass
class CaseResult:
    name: str
    passed: bool
    max_abs_err: float
    seconds: float
    messages: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        text = f"{self.name} {status} max_abs_err={self.max_abs_err:.3g}"
        if not self.passed and self.messages:
            text += "  (" + "; ".join(self.messages[:3]) + ")"
        return text


def handlers() -> list[Handler]:
    found = []
    for module in HANDLER_MODULES:
        found.extend(importlib.import_module(f"{__package__}.{module}").HANDLERS)
    return found


def find_handler(case: Case) -> Handler | None:
    for handler in handlers():
        if handler.matches(case):
            return handler
    return None


def run_case(path: str | Path) -> CaseResult:
    """Replay one case folder and compare every expected output."""
    case = Case(Path(path))
    start = time.perf_counter()
    handler = find_handler(case)
    if handler is None:
        return CaseResult(case.name, False, math.inf, 0.0, ["unsupported case kind"])
    try:
        with torch.no_grad():
            comparisons = handler.run(case)
    except Exception as err:  # a crash is a failure of that case, reported with its cause
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        return CaseResult(case.name, False, math.inf, time.perf_counter() - start, [f"{type(err).__name__}: {err}", *tb[-2:]])
    return _judge(case, comparisons, time.perf_counter() - start)


def _judge(case: Case, comparisons: list[Comparison], seconds: float) -> CaseResult:
    messages, worst, passed = [], 0.0, bool(comparisons)
    if not comparisons:
        messages.append("handler compared nothing")
    missing = set(case.outputs()) - {c.name for c in comparisons}
    if missing:
        passed = False
        messages.append("expected outputs not compared: " + ", ".join(sorted(missing)))
    for comparison in comparisons:
        ok, err, msg = comparison.check()
        worst = max(worst, err)
        if not ok:
            passed = False
            messages.append(msg)
    return CaseResult(case.name, passed, worst, seconds, messages)


def discover(paths: list[str | Path]) -> list[Path]:
    """Case folders under the given paths (a folder with config.json, or with only tables.json, is a case)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if _is_case_folder(path):
            found.append(path)
        elif path.is_dir():
            markers = [*path.rglob("config.json"), *path.rglob(TABLES_ONLY_FILE)]
            found.extend(sorted({p.parent for p in markers if _is_case_folder(p.parent)}))
        else:
            raise FileNotFoundError(f"{path}: not a case folder (no config.json) and not a directory")
    return found


def _is_case_folder(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / TABLES_ONLY_FILE).is_file()
