"""Training states: ``accelerator.save_state`` into a temporary folder, renamed when complete.

Layout under ``<output_dir>/checkpoints/``::

    checkpoint-00000200/    accelerate state (model, optimizer, RNG, registered objects) + train_config.json
    checkpoint-00000400/
    .tmp-checkpoint-00000600/   a save in progress (never resumed from; removed by the next save)

Only complete folders are named ``checkpoint-*``, so a crash mid-save leaves the previous state
usable; the last ``keep_last`` are kept. :class:`Progress` (step, epoch, batches consumed) is
registered for checkpointing so a resumed run continues at the same batch of the same epoch.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("opensora")

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "train_config.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Progress:
    """Where training stands: optimizer steps done, epoch, batches of that epoch consumed, micro-steps."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    micro_step: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


class TrainingStopped(RuntimeError):
    """Training cannot go on (non-finite loss, full disk, damaged state); the message says why and what to do."""


def save_training_state(accelerator, output_dir: Path, step: int, *, keep_last: int, config_json: str) -> Path:
    """Save on every process into a temporary folder, then (main process) rename it and prune old ones.

    A failed save (a full disk) removes the temporary folder and leaves the previous states as they were.
    """
    root = checkpoint_root(output_dir)
    final, tmp = root / f"checkpoint-{step:08d}", root / f".tmp-checkpoint-{step:08d}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / CONFIG_FILE).write_text(config_json)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _save_failed(err, step, output_dir) from None
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved training state %s", final)
    accelerator.wait_for_everyone()
    return final


def _save_failed(err: OSError, step: int, output_dir: Path) -> TrainingStopped:
    last = latest_checkpoint(output_dir)
    kept = f"the previous state {last} is intact" if last else "no earlier state exists"
    what = "no space left on device" if err.errno == errno.ENOSPC else f"{err.strerror or err}"
    resume = "; free space, then resume with checkpoint.resume = \"latest\"" if last else ""
    return TrainingStopped(
        f"saving the training state of step {step} under {checkpoint_root(output_dir)} failed: {what}; "
        f"the unfinished folder was removed and {kept}{resume}"
    )


def damaged_files(folder: Path) -> list[str]:
    """Files of a state folder that cannot be read: safetensors headers, and torch/zip archives tested whole."""
    from opensora_core.checkpoints import CheckpointError, check_safetensors

    problems = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                check_safetensors(file)
            elif file.suffix in (".bin", ".pkl", ".pt", ".pth"):
                with zipfile.ZipFile(file) as archive:  # torch.save writes zip archives with CRCs
                    bad = archive.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} is corrupt")
        except (CheckpointError, zipfile.BadZipFile, OSError) as err:
            problems.append(f"{file} ({file.stat().st_size} bytes: {err})")
    return problems


def load_state_or_older(accelerator, path: Path, output_dir: Path, *, fall_back: bool) -> Path:
    """``accelerator.load_state(path)``; a damaged state is named, and with ``fall_back`` ("latest") the next
    older complete state is loaded instead, with a warning. Returns the folder loaded."""
    candidates = [path]
    if fall_back:
        candidates += [p for p in reversed(list_checkpoints(output_dir)) if p != path]
    for number, candidate in enumerate(candidates):
        try:
            accelerator.load_state(str(candidate))
            return candidate
        except Exception as err:  # accelerate raises whatever safetensors / torch.load / pickle raise
            named = damaged_files(candidate) or [f"{candidate} ({type(err).__name__}: {err})"]
            older = candidates[number + 1] if number + 1 < len(candidates) else None
            if older is None:
                others = [p for p in list_checkpoints(output_dir) if p != candidate]
                before = [p for p in others if p.name < candidate.name] or others
                hint = (f"resume from the previous complete state with --set checkpoint.resume={before[-1]}"
                        if before else "no other complete state exists; start afresh (checkpoint.resume = \"\")")
                raise TrainingStopped(
                    f"checkpoint.resume: the state {candidate} is damaged: {'; '.join(named)}; {hint}"
                ) from None
            log.warning("the state %s is damaged (%s); resuming from the previous one, %s",
                        candidate, "; ".join(named), older)
    raise AssertionError("unreachable")


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """The folder to resume from: "" -> None, "latest" -> newest complete one (None if none), else the path."""
    if not resume:
        return None
    if resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            log.info("checkpoint.resume = latest: nothing under %s yet, starting fresh", checkpoint_root(output_dir))
        return found
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a checkpoint folder")
    return path


__all__ = ["CONFIG_FILE", "Progress", "TrainingStopped", "checkpoint_root", "damaged_files", "latest_checkpoint",
           "list_checkpoints", "load_state_or_older", "resolve_resume", "save_training_state"]
