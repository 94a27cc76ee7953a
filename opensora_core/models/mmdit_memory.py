"""Memory of Open-Sora 2.0 MMDiT inference: a shape-based estimate per setting, and a CPU measurement.

The estimate counts what this implementation keeps alive (see the block ``forward`` methods):

* weights on the compute device: every non-block layer, the resident blocks and, with block swap, one
  swapped block in flight (the largest); Linear weights take 1 byte + a float32 scale with fp8, biases and
  norm gains the compute dtype;
* activations of one model call with R rows (3 x batch when the three guidance passes share one call,
  2 x batch for t2v, whose third pass is skipped, batch when they run one at a time) and S = text + image
  tokens of width C: a single-stream block peaks at 9 R S C values (stream, q, k, the value+MLP buffer of
  width C + 4C, the attention output) or at 8 R S C plus the float32 temporaries of one RoPE chunk (up to
  2^24 values, 2-3 copies), a double-stream block at about 7 R S C; plus the float32 RoPE tables (2 R S D),
  the fp8 dequantised weight of the widest layer, the model inputs and the sampler's latents;
* ``overhead``: a fixed allowance for the CUDA context, cuBLAS workspace and allocator slack (0 on CPU).

:func:`measure_peak_bytes` counts the bytes of tensors created during a call (a dispatch-level tracker, CPU
and GPU alike), which is what ``activations`` + ``inputs`` predict.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..geometry.opensora_v2 import latent_shape
from .mmdit import MMDiTConfig, MMDiTModel
from .mmdit_activations import MemorySetting, activation_bytes, input_bytes

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    activations: int
    inputs: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.inputs + self.overhead

    def gib(self) -> dict[str, float]:
        return {k: round(getattr(self, k) / GIB, 2) for k in ("weights", "activations", "inputs", "overhead", "total")}


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def _module_bytes(module: nn.Module, setting: MemorySetting) -> int:
    """Bytes of a module's parameters as stored with ``setting`` (fp8: Linear weights 1 byte + scale)."""
    item = torch.empty((), dtype=setting.dtype).element_size()
    total = 0
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if setting.fp8 and isinstance(m, nn.Linear) and name == "weight":
                total += p.numel() + 4
            else:
                total += p.numel() * item
    return total


def weight_bytes(config: MMDiTConfig, setting: MemorySetting) -> tuple[int, int]:
    """(bytes on the compute device, bytes of the whole model) for ``setting``."""
    other, block_bytes = _stored_bytes(dataclasses.astuple(config), setting.dtype, setting.fp8)
    resident = len(block_bytes) if setting.blocks_on_device is None else setting.blocks_on_device
    if not 0 <= resident <= len(block_bytes):
        raise ValueError(f"blocks_on_device must be 0..{len(block_bytes)}, got {resident}")
    in_flight = max(block_bytes[resident:], default=0)
    return other + sum(block_bytes[:resident]) + in_flight, other + sum(block_bytes)


@functools.lru_cache(maxsize=16)
def _stored_bytes(config_fields: tuple, dtype: torch.dtype, fp8: bool) -> tuple[int, tuple[int, ...]]:
    """(bytes outside the blocks, bytes per block) of a model built on the meta device."""
    setting = MemorySetting(dtype=dtype, fp8=fp8)
    with torch.device("meta"):
        model = MMDiTModel(MMDiTConfig(*config_fields))
    block_bytes = tuple(_module_bytes(b, setting) for b in model.blocks)
    return _module_bytes(model, setting) - sum(block_bytes), block_bytes


def estimate_memory(config: MMDiTConfig, *, height: int, width: int, num_frames: int, batch: int = 1,
                    text_tokens: int = 512, setting: MemorySetting = MemorySetting(),
                    overhead_bytes: int = 0) -> MemoryEstimate:
    """Estimated peak memory on the compute device for sampling ``batch`` videos of height x width pixels
    and ``num_frames`` frames with ``setting``. Monotone in size, frames, batch and resident blocks."""
    shape = latent_shape(batch, height, width, num_frames, channels=config.latent_channels,
                         patch_size=config.patch_size)
    rows = batch * (setting.passes if setting.batch_passes else 1)
    weights, _ = weight_bytes(config, setting)
    return MemoryEstimate(
        weights=weights,
        activations=activation_bytes(config, rows, shape.tokens, text_tokens, setting),
        inputs=input_bytes(config, rows, shape.tokens, text_tokens, batch, setting),
        overhead=overhead_bytes,
    )


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of storages created by ops while active, until they are freed; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[tuple[str, int]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new storage
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = (str(storage.device), storage.data_ptr())
        size = storage.nbytes()
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key, size) -> None:
        self._seen.discard(key)
        self.live -= size


def measure_peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """(fn's result, peak bytes of the tensors fn created and held at once): inputs and weights that exist
    before the call are not counted."""
    tracker = _LiveBytes()
    with tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak


__all__ = [
    "MemoryEstimate",
    "MemorySetting",
    "activation_bytes",
    "estimate_memory",
    "measure_peak_bytes",
    "weight_bytes",
]
