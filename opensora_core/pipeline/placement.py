"""Devices: where each module runs while a stage uses it (ComfyUI's memory manager in the nodes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn


class Placement(Protocol):
    """Moves a module to its compute device for a stage and back (ComfyUI's memory manager in the nodes)."""

    def use(self, module: nn.Module, working_memory: int = 0) -> contextlib.AbstractContextManager[torch.device]:
        """Load ``module`` for a stage that needs ``working_memory`` bytes besides its weights."""
        ...



class StayPut:
    """Default placement: modules stay where the caller put them."""

    @contextlib.contextmanager
    def use(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        yield device_of(module)



def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s weights are (the CPU for a module without weights)."""
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")

