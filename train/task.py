"""What a training task gives the engine (:mod:`.trainer`): its data and the per-task steps.

The DiT task (:mod:`.dit`) and the VAE task (:mod:`.vae_task`) implement :class:`Task`; the engine
only sees this interface, so the tasks depend on this module and the engine on them, never back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from .rng import StepRandomness


@dataclass
class TaskData:
    dataset: torch.utils.data.Dataset
    sampler: Any  # BucketBatchSampler
    summary: str = ""
    collate: Callable | None = None  # the loader's collate_fn (None: torch's default)


class Task(Protocol):
    places_model: bool  # build_model puts the model on the device itself (block swap): accelerate must not move it

    def prepare_data(self, accelerator) -> TaskData: ...

    def build_model(self) -> nn.Module: ...

    def compute_loss(self, model: nn.Module, batch: dict, rng: StepRandomness) -> dict[str, torch.Tensor]: ...

    def validate(self, model: nn.Module, step: int, accelerator, tracker) -> list[Path]: ...

    def export(self, model: nn.Module, step: int, state: dict[str, torch.Tensor]) -> list[Path]: ...


__all__ = ["Task", "TaskData"]
