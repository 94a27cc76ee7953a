"""Devices: where each module runs while a stage uses it (ComfyUI's memory manager in the nodes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from ..models.block_swap import block_swap_of


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



class Offload:
    """Each module on ``device`` only while a stage uses it, then back on the CPU (the command line on a GPU:
    T5 and CLIP are released before sampling, the model before the decode). A model with block swap
    (:func:`~opensora_core.models.block_swap.enable_block_swap`) is left as the swap placed it."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    @contextlib.contextmanager
    def use(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        if block_swap_of(module) is not None or self.device.type == "cpu":
            yield self.device
            return
        module.to(self.device)
        try:
            yield self.device
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
