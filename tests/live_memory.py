"""Peak bytes of live tensors over a call: every storage an op creates counts until it is freed.

Exact and deterministic (unlike the process's resident memory), but blind to kernel workspaces; runs
under ``torch.no_grad`` (a dispatch mode sees no ops under ``torch.inference_mode``).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    """``with LiveTensors(ignore=model.parameters()) as live: ...`` -> ``live.peak`` bytes."""

    def __init__(self, ignore=()) -> None:
        super().__init__()
        self.sizes = {t.untyped_storage().data_ptr(): 0 for t in ignore}  # storages that existed before
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = storage.data_ptr()
        if key in self.sizes or storage.nbytes() == 0:
            return
        self.sizes[key] = storage.nbytes()
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key) -> None:
        self.live -= self.sizes.pop(key, 0)
