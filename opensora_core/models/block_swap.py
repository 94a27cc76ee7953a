"""Block swap (sequential offload): keep only some transformer blocks on the compute device.

The first ``blocks_on_device`` blocks (in execution order) stay on ``device``; the others live on
``offload_device`` (CPU RAM, pinned when CUDA is available) and are copied to ``device`` right before they
run; after the block the device copy is dropped and the block points at its offloaded tensors again (weights
do not change in inference, so nothing is copied back). The forward itself is unchanged: forward hooks do the
moving. Inference only.

    swap = BlockSwap(model.blocks, "cuda", blocks_on_device=20).attach()
    model.img_in.cuda(); ...              # or: enable_block_swap(model, "cuda", 20)
    swap.detach()                         # blocks stay where they are

On a CPU-only machine it runs with device = offload_device = "cpu" (the copies are then real but useless),
which is how the tests check that the output is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class _Slot:
    """One tensor of a block: a parameter's ``.data`` or a buffer entry, and its offloaded copy."""

    module: nn.Module
    name: str
    is_param: bool
    offloaded: torch.Tensor

    def point_to(self, tensor: torch.Tensor) -> None:
        if self.is_param:
            getattr(self.module, self.name).data = tensor
        else:
            self.module._buffers[self.name] = tensor


@dataclass
class BlockSwap:
    """Moves each swapped block to ``device`` just before it runs and back after (see module docstring)."""

    blocks: Sequence[nn.Module]
    device: torch.device | str
    blocks_on_device: int
    offload_device: torch.device | str = "cpu"
    pin_memory: bool | None = None  # None: pin when CUDA is available
    copies: int = field(default=0, init=False)  # blocks copied to the device so far (for tests/benchmarks)
    _slots: dict[int, list[_Slot]] = field(default_factory=dict, init=False, repr=False)
    _hooks: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.blocks_on_device <= len(self.blocks):
            raise ValueError(
                f"blocks_on_device must be 0..{len(self.blocks)} (the model's blocks), got {self.blocks_on_device}"
            )
        self.device = torch.device(self.device)
        self.offload_device = torch.device(self.offload_device)
        if self.pin_memory is None:
            self.pin_memory = torch.cuda.is_available() and self.offload_device.type == "cpu"

    @property
    def swapped(self) -> list[nn.Module]:
        return list(self.blocks[self.blocks_on_device:])

    def attach(self) -> BlockSwap:
        """Place the blocks (resident ones on the device, the others offloaded) and install the hooks."""
        if self._hooks:
            raise RuntimeError("BlockSwap is already attached")
        for block in self.blocks[: self.blocks_on_device]:
            block.to(self.device)
        for block in self.swapped:
            block.to(self.offload_device)
            self._slots[id(block)] = self._offload_slots(block)
            self._hooks.append(block.register_forward_pre_hook(self._before))
            self._hooks.append(block.register_forward_hook(self._after))
        return self

    def detach(self) -> None:
        """Remove the hooks; swapped blocks stay on the offload device."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._slots.clear()

    def _offload_slots(self, block: nn.Module) -> list[_Slot]:
        slots = []
        for module in block.modules():
            for name, p in module.named_parameters(recurse=False):
                slots.append(_Slot(module, name, True, self._offloaded(p.data)))
            for name, b in module.named_buffers(recurse=False):
                slots.append(_Slot(module, name, False, self._offloaded(b)))
        for slot in slots:
            slot.point_to(slot.offloaded)
        return slots

    def _offloaded(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.offload_device)
        return tensor.pin_memory() if self.pin_memory else tensor

    def _before(self, block: nn.Module, args) -> None:
        for slot in self._slots[id(block)]:
            slot.point_to(slot.offloaded.to(self.device, non_blocking=self.pin_memory, copy=True))
        self.copies += 1

    def _after(self, block: nn.Module, args, output) -> None:
        for slot in self._slots[id(block)]:
            slot.point_to(slot.offloaded)


def enable_block_swap(model: nn.Module, device: torch.device | str, blocks_on_device: int,
                      offload_device: torch.device | str = "cpu") -> BlockSwap:
    """Block swap for a model with a ``blocks`` list (the MMDiT): every non-block module goes to ``device``,
    the first ``blocks_on_device`` blocks too, the rest are swapped in per call."""
    blocks = list(model.blocks)
    in_blocks = {id(t) for block in blocks for t in [*block.parameters(), *block.buffers()]}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in in_blocks:
                p.data = p.data.to(device)
        for name, b in module.named_buffers(recurse=False):
            if id(b) not in in_blocks:
                module._buffers[name] = b.to(device)
    return BlockSwap(blocks, device, blocks_on_device, offload_device).attach()


__all__ = ["BlockSwap", "enable_block_swap"]
