"""The trainer under faults: non-finite losses and weights, full disks, damaged states and logs.

Every fault stops the run with a message that says what happened and how to go on, and nothing
garbage (NaN weights, half-written folders) is left where a later run would pick it up.
"""

from __future__ import annotations

import errno
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

import train_support
from opensora_core.checkpoints import CheckpointError, save_checkpoint
from opensora_train.checkpointing import TrainingStopped, list_checkpoints, save_training_state
from opensora_train.config import TrainConfig, from_dict
from opensora_train.dit import DiTTask
from opensora_train.trainer import Loop, _truncate_jsonl, train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    clips = train_support.write_clips(root / "clips", count=4, frames=20)
    return root, clips


def _config(workspace, name, **sections) -> TrainConfig:
    root, clips = workspace
    raw = train_support.tiny_config(root, clips=clips, **sections)
    raw["run"]["output_dir"] = str(root / name)
    raw.setdefault("cache", {})["dir"] = str(root / "cache")
    return from_dict(TrainConfig, raw)


# ---------------------------------------------------------------------------
# Non-finite loss and weights
# ---------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_before_the_weights_change(workspace, monkeypatch):
    """Step 2's loss is NaN: the run stops at once naming the step, the likely causes and the last good state;
    step 1's state is the last one written and holds finite weights."""
    real = DiTTask.compute_loss
    calls = []

    def nan_at_second_step(self, model, batch, rng):
        terms = real(self, model, batch, rng)
        calls.append(1)
        return {**terms, "loss": terms["loss"] * float("nan")} if len(calls) == 2 else terms

    monkeypatch.setattr(DiTTask, "compute_loss", nan_at_second_step)
    cfg = _config(workspace, "nan", run={"max_steps": 4}, checkpoint={"every": 1, "keep_last": 3})
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg)
    message = str(stopped.value)
    assert message.startswith("step 2: the loss is nan") and "optimizer.lr = 0.001" in message
    [state] = list_checkpoints(cfg.output_dir)
    assert state.name == "checkpoint-00000001" and f"the last good state is {state}" in message
    assert all(torch.isfinite(v).all() for v in load_file(str(state / "model.safetensors")).values())
    assert not (cfg.output_dir / "export").exists()


def test_no_training_state_is_saved_with_nan_weights(workspace, monkeypatch):
    real = Loop.optimizer_step

    def poison(self):
        real(self)
        if self.progress.step == 2:
            with torch.no_grad():
                next(self.unwrapped.parameters()).fill_(float("inf"))

    monkeypatch.setattr(Loop, "optimizer_step", poison)
    cfg = _config(workspace, "inf", run={"max_steps": 3}, checkpoint={"every": 1, "keep_last": 3})
    with pytest.raises(TrainingStopped, match=r"step 2: refusing to save a training state: 1 tensor\(s\) hold NaN"):
        train(cfg)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["checkpoint-00000001"]
    assert not list((cfg.output_dir / "checkpoints").glob(".tmp-*"))


def test_export_refuses_nan_weights(workspace, tmp_path):
    """The export command writes nothing from a state whose weights are not finite (e.g. an older run's)."""
    from opensora_train.export import export_from_state

    cfg = _config(workspace, "export", run={"max_steps": 1})
    train(cfg)
    [state] = list_checkpoints(cfg.output_dir)
    weights = load_file(str(state / "model.safetensors"))
    key = next(iter(weights))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(state / "model.safetensors"))
    (export,) = (cfg.output_dir / "export").glob("*.safetensors")
    export.unlink()
    with pytest.raises(CheckpointError, match=f"refusing to write {export}.*NaN or inf"):
        export_from_state(cfg)
    assert not export.exists()


def test_save_checkpoint_refuses_non_finite_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(CheckpointError, match=r"refusing to write .*w\.safetensors: 1 tensor\(s\) .* \(e\.g\. b\)"):
        save_checkpoint({"a": torch.ones(2), "b": torch.tensor([1.0, float("-inf")])}, path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Full disk
# ---------------------------------------------------------------------------


class FakeAccelerator:
    """One process; ``save_state`` writes a file, and runs out of space on the saves listed in ``full``."""

    is_main_process = True

    def __init__(self, full: set[int]):
        self.full, self.saves = full, 0

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        self.saves += 1
        with open(f"{folder}/model.safetensors", "wb") as handle:
            handle.write(b"partial")
            if self.saves in self.full:
                raise OSError(errno.ENOSPC, "No space left on device", f"{folder}/model.safetensors")


def test_disk_full_during_a_save_keeps_the_previous_state_and_no_temp_folder(tmp_path):
    accelerator = FakeAccelerator(full={2})
    first = save_training_state(accelerator, tmp_path, 1, keep_last=3, config_json="{}")
    with pytest.raises(TrainingStopped) as stopped:
        save_training_state(accelerator, tmp_path, 2, keep_last=3, config_json="{}")
    message = str(stopped.value)
    assert "no space left on device" in message and f"the previous state {first} is intact" in message
    assert list_checkpoints(tmp_path) == [first] and (first / "model.safetensors").read_bytes() == b"partial"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000001"]


def test_the_train_command_reports_a_stop_and_a_full_disk(monkeypatch, capsys):
    from opensora_train import cli

    def stopped(args):
        raise TrainingStopped("step 3: the loss is nan")

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "out/cache/x.safetensors")

    for command, expected in ((stopped, "training stopped: step 3: the loss is nan"),
                              (full, "no space left on device while writing out/cache/x.safetensors")):
        monkeypatch.setitem(cli.COMMANDS, "train", command)
        assert cli.main(["train", "--config", "x.toml"]) == 1
        assert expected in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Damaged states and logs
# ---------------------------------------------------------------------------


def _two_states(workspace, name):
    """Two training states of which the newer one's weights file was cut in half (a copy cut short)."""
    cfg = _config(workspace, name, run={"max_steps": 2}, checkpoint={"every": 1, "keep_last": 3})
    train(cfg)
    states = list_checkpoints(cfg.output_dir)
    assert [p.name for p in states] == ["checkpoint-00000001", "checkpoint-00000002"]
    model = states[1] / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return cfg, states


def test_resume_latest_from_a_damaged_state_falls_back_to_the_previous_one(workspace, caplog):
    cfg, states = _two_states(workspace, "fallback")
    resumed = _config(workspace, "fallback", run={"max_steps": 3},
                      checkpoint={"every": 1, "keep_last": 3, "resume": "latest"})
    with caplog.at_level(logging.WARNING, logger="opensora"):
        result = train(resumed)
    assert f"the state {states[1]} is damaged" in caplog.text and "model.safetensors" in caplog.text
    assert f"resuming from the previous one, {states[0]}" in caplog.text
    assert sorted(result.losses) == [2, 3]  # went on from step 1


def test_resume_from_a_named_damaged_state_names_the_file_and_the_way_out(workspace):
    cfg, states = _two_states(workspace, "named")
    damaged = states[1]
    named = _config(workspace, "named", run={"max_steps": 3},
                    checkpoint={"every": 0, "keep_last": 3, "resume": str(damaged)})
    with pytest.raises(TrainingStopped) as stopped:
        train(named)
    message = str(stopped.value)
    assert f"checkpoint.resume: the state {damaged} is damaged: {damaged / 'model.safetensors'}" in message
    assert "not a valid safetensors file" in message
    assert f"--set checkpoint.resume={states[0]}" in message


def test_a_half_written_last_log_line_is_dropped_with_a_warning(tmp_path, caplog):
    log = tmp_path / "loss.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="opensora"):
        _truncate_jsonl(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n'
    assert "line 3 is not a whole record" in caplog.text
