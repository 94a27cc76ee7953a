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

import logging
import re
import shutil
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


def save_training_state(accelerator, output_dir: Path, step: int, *, keep_last: int, config_json: str) -> Path:
    """Save on every process into a temporary folder, then (main process) rename it and prune old ones."""
    root = checkpoint_root(output_dir)
    final, tmp = root / f"checkpoint-{step:08d}", root / f".tmp-checkpoint-{step:08d}"
    if accelerator.is_main_process:
        for stale in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / CONFIG_FILE).write_text(config_json)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved training state %s", final)
    accelerator.wait_for_everyone()
    return final


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


__all__ = ["CONFIG_FILE", "Progress", "checkpoint_root", "latest_checkpoint", "list_checkpoints", "resolve_resume",
           "save_training_state"]
