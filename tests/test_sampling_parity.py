"""The sampler parity handlers: wiring checked with stand-in models, full runs with our STDiTs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from opensora_core.families import official_class
from opensora_core.parity import sampling as handlers
from opensora_core.parity.runner import Case, _judge, run_case


class Replay(torch.nn.Module):
    """Returns the recorded per-step model outputs in order."""

    def __init__(self, outputs: torch.Tensor):
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, x, timestep, y, mask=None, x_mask=None, **kwargs):
        self.calls += 1
        return self.outputs[self.calls - 1]


class Constant(torch.nn.Module):
    """Predicts zeros; carries the null-caption buffer the IDDPM handler reads."""

    def __init__(self, length: int, channels: int):
        super().__init__()
        self.y_embedder = torch.nn.Module()
        self.y_embedder.register_buffer("y_embedding", torch.zeros(length, channels))

    def forward(self, x, timestep, y, mask=None, x_mask=None, **kwargs):
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


def _run_with(monkeypatch, case: Case, model: torch.nn.Module):
    monkeypatch.setattr(handlers, "_build_model", lambda *args: model)
    handler = next(h for h in handlers.HANDLERS if h.matches(case))
    return handler.run(case)


@pytest.mark.parametrize("name", ["rflow_sample_t2v", "rflow_sample_masked"])
def test_rflow_handler_passes_with_the_recorded_model_outputs(reference, monkeypatch, name):
    """Timesteps, guidance, Euler steps, mask strategy and draws reproduce out.* and every trace.*."""
    case = Case(reference / "v1_2/cases" / name)
    comparisons = _run_with(monkeypatch, case, Replay(case.io["trace.model_out"]))
    result = _judge(case, comparisons, 0.0)
    assert result.passed and result.max_abs_err == 0.0, result.messages
    assert {"trace.model_in_x", "trace.model_in_t", "trace.model_out"} <= {c.name for c in comparisons}


def test_rflow_handler_notices_a_wrong_guidance_scale(reference, monkeypatch, tmp_path):
    folder = tmp_path / "held_out"
    shutil.copytree(reference / "v1_2/cases/rflow_sample_masked", folder)
    config = json.loads((folder / "config.json").read_text())
    config["scheduler_constructor_kwargs"]["cfg_scale"] = 8.0
    (folder / "config.json").chmod(0o644)
    (folder / "config.json").write_text(json.dumps(config))
    case = Case(folder)
    result = _judge(case, _run_with(monkeypatch, case, Replay(case.io["trace.model_out"])), 0.0)
    assert not result.passed


def test_iddpm_handler_rebuilds_schedule_masks_and_x_masks(reference, monkeypatch):
    """Without the recorded model these parts do not depend on the model's outputs."""
    case = Case(reference / "v1_1/cases/iddpm_sample_masked")
    comparisons = _run_with(monkeypatch, case, Constant(12, 32))
    independent = [c for c in comparisons if c.name.startswith(("sched.", "in.", "traj.x_mask"))]
    assert len(independent) == 7 + 2 + 5
    assert all(c.check()[0] for c in independent), [c.check()[2] for c in independent if not c.check()[0]]


def test_iddpm_handler_runs_both_recorded_configurations(reference, monkeypatch):
    case = Case(reference / "v1_1/cases/iddpm_sample_t2v")
    names = {c.name for c in _run_with(monkeypatch, case, Constant(12, 32))}
    assert {"out.samples", "out.samples_cfg_channel_none", "traj.step004"} <= names


def _have(class_name: str) -> bool:
    try:
        official_class(class_name)
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have("STDiT3"), reason="STDiT3 is not in this build yet")
@pytest.mark.parametrize("name", ["rflow_sample_t2v", "rflow_sample_masked"])
def test_rflow_cases_pass_with_our_stdit3(reference, name):
    result = run_case(reference / "v1_2/cases" / name)
    assert result.passed, result.messages


@pytest.mark.skipif(not _have("STDiT2"), reason="STDiT2 is not in this build yet")
@pytest.mark.parametrize("name", ["iddpm_sample_t2v", "iddpm_sample_masked"])
def test_iddpm_cases_pass_with_our_stdit2(reference, name):
    result = run_case(reference / "v1_1/cases" / name)
    assert result.passed, result.messages
