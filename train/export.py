"""``opensora-train export``: exported weights from a saved training state, without training.

Reads the state's ``model.safetensors`` (single-process / DDP states; FSDP and DeepSpeed states are
exported by ``train`` itself at the end of the run) and, with ``export.use_ema``, the EMA registered in
it, then writes the same files ``train`` writes at its end. LoRA states hold only the adapters; the base
weights come from ``model.checkpoint`` again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpointing import latest_checkpoint
from .config import TrainConfig
from .ema import EMA
from .trainer import existing_exports, make_task
from .validate import validate_config

log = logging.getLogger("opensora")

EMA_STATE = "custom_checkpoint_2.pkl"  # registration order in Loop.register_state: progress, scheduler, EMA
PROGRESS_STATE = "custom_checkpoint_0.pkl"


def export_from_state(cfg: TrainConfig, checkpoint: Path | None = None, *, overwrite: bool = False) -> list[Path]:
    """Write the run's export files from a state; files already there are replaced only with ``overwrite``."""
    validate_config(cfg)
    existing = existing_exports(cfg)
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, existing))} already exist(s); pass --overwrite to replace, or "
                              "move them away first")
    path = checkpoint or latest_checkpoint(cfg.output_dir)
    if path is None or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no exportable training state (model.safetensors) at {path or cfg.output_dir}")
    task = make_task(cfg)
    if cfg.run.task == "vae":
        task.prepare_data(_NoAccelerator())  # the VAE export calibrates on data (no caches involved)
    model = task.build_model()
    saved = {k.removeprefix("module."): v for k, v in load_file(str(path / "model.safetensors")).items()}
    result = model.load_state_dict(saved, strict=not cfg.lora.enabled)
    if cfg.lora.enabled and result.unexpected_keys:
        raise ValueError(f"{path}: keys the model lacks: {result.unexpected_keys[:5]}")
    step = int(torch.load(path / PROGRESS_STATE, weights_only=True)["step"])
    if cfg.ema.enabled and cfg.export.use_ema and (path / EMA_STATE).is_file():
        ema = EMA(model, cfg.ema.decay)
        ema.load_state_dict(torch.load(path / EMA_STATE, weights_only=True))
        with ema.applied(model):
            return task.export(model, step, model.state_dict())
    return task.export(model, step, model.state_dict())


class _NoAccelerator:
    """The few accelerator attributes a task's data phase reads, for a single process."""

    device = torch.device("cpu")
    process_index = 0
    num_processes = 1
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


__all__ = ["export_from_state"]
