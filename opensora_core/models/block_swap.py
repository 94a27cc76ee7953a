"""Block swap (sequential offload): keep only some transformer blocks on the compute device.

The first ``blocks_on_device`` blocks (in execution order) stay on ``device``; the others live on
``offload_device`` (CPU RAM, pinned when CUDA is available) and are copied to ``device`` right before they
run; after the block the device copy is dropped and the block points at its offloaded tensors again (weights
do not change in inference, so nothing is copied back). The forward itself is unchanged: forward hooks do the
moving. For training a frozen base (``keep_trainable=True``) the parameters that require gradients (LoRA
adapters) are not swapped and stay on ``device``, so their gradients land there; with activation checkpointing
the recomputed forward copies the block in again for the backward pass.

    swap = BlockSwap(model.blocks, "cuda", blocks_on_device=20).attach()
    model.img_in.cuda(); ...              # or: enable_block_swap(model, "cuda", 20)
    swap.detach()                         # blocks stay where they are

On a CPU-only machine it runs with device = offload_device = "cpu" (the copies are then real but useless),
which is how the tests check that the output is unchanged.
"""

from __future__ import annotations

import weakref
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
    keep_trainable: bool = False  # parameters that require gradients stay on the device (not swapped)
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

    def attach(self, *, move_resident: bool = True) -> BlockSwap:
        """Place the blocks (resident ones on the device unless ``move_resident`` is False, the others
        offloaded) and install the hooks."""
        if self._hooks:
            raise RuntimeError("BlockSwap is already attached")
        for block in self.blocks[: self.blocks_on_device] if move_resident else []:
            block.to(self.device)
        for block in self.swapped:
            trainable = [p for p in block.parameters() if p.requires_grad and self.keep_trainable]
            block.to(self.offload_device)
            for p in trainable:
                p.data = p.data.to(self.device)
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
                if not (p.requires_grad and self.keep_trainable):  # trainable ones may stay on the device
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


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, BlockSwap] = weakref.WeakKeyDictionary()  # model -> its swap


def enable_block_swap(model: nn.Module, device: torch.device | str, blocks_on_device: int,
                      offload_device: torch.device | str = "cpu", *, move: bool = True,
                      keep_trainable: bool = False) -> BlockSwap:
    """Block swap for a model with a ``blocks`` list (the MMDiT): every non-block module goes to ``device``,
    the first ``blocks_on_device`` blocks too, the rest are swapped in per call.

    ``move=False`` leaves the non-block modules and the resident blocks where they are (a memory manager such
    as ComfyUI's loads them when the model runs); only the swapped blocks are offloaded then.
    ``keep_trainable``: parameters that require gradients are not swapped (training adapters on a frozen base).
    """
    if model in _ATTACHED:
        raise RuntimeError("block swap is already enabled on this model; call disable_block_swap(model) first")
    blocks = list(model.blocks)
    if not move:
        swap = BlockSwap(blocks, device, blocks_on_device, offload_device, keep_trainable=keep_trainable)
        _ATTACHED[model] = swap.attach(move_resident=False)
        return swap
    in_blocks = {id(t) for block in blocks for t in [*block.parameters(), *block.buffers()]}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in in_blocks:
                p.data = p.data.to(device)
        for name, b in module.named_buffers(recurse=False):
            if id(b) not in in_blocks:
                module._buffers[name] = b.to(device)
    swap = BlockSwap(blocks, device, blocks_on_device, offload_device, keep_trainable=keep_trainable).attach()
    _ATTACHED[model] = swap
    return swap


def disable_block_swap(model: nn.Module) -> None:
    """Remove the model's block swap (swapped blocks stay on the offload device)."""
    swap = _ATTACHED.pop(model, None)
    if swap is not None:
        swap.detach()


def block_swap_of(model: nn.Module) -> BlockSwap | None:
    """The block swap enabled on ``model`` by :func:`enable_block_swap`, or None."""
    return _ATTACHED.get(model)


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def in_flight_bytes(model: nn.Module) -> int:
    """Bytes of the largest swapped block (the one copied to the device while it runs); 0 without block swap."""
    swap = _ATTACHED.get(model)
    return max((_bytes(block) for block in swap.swapped), default=0) if swap is not None else 0


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the weights that stay on the compute device while the model runs: everything but the swapped
    blocks (all of it without block swap)."""
    swap = _ATTACHED.get(model)
    swapped = sum(_bytes(block) for block in swap.swapped) if swap is not None else 0
    return _bytes(model) - swapped


__all__ = ["BlockSwap", "block_swap_of", "disable_block_swap", "enable_block_swap", "in_flight_bytes",
           "resident_bytes"]
