"""What the compute backend holds beside a model call's live tensors, for the working-memory estimates.

The shape models (the VAEs' ``decode_memory_bytes``) count the tensors a call keeps alive;
a memory manager also has to make room for what the kernels allocate themselves. Measured on the CPU
(oneDNN, ``benchmarks/memory_calibration.py``): a convolution or a Linear holds a reordered copy of its
weight and a scratch buffer of the same size while it runs, and the process keeps the backend's state
(scratchpad, primitive cache, generated kernels) from its first calls on, a fixed amount per dtype.
On CUDA the cuDNN/cuBLAS workspaces are of the same order, so the same terms bound them.
"""

from __future__ import annotations

import torch

WEIGHT_COPIES = 2  # reordered weight + scratch of one conv / Linear call, in weights (oneDNN, measured)
# resident state the backend keeps after a call's first convolutions / GEMMs, bytes per compute dtype (measured)
RETAINED_STATE = {torch.float32: 24 << 20, torch.bfloat16: 24 << 20, torch.float16: 24 << 20}


def weight_copies_bytes(weight_elements: int, dtype: torch.dtype) -> int:
    """Bytes the backend holds while one layer with ``weight_elements`` weights runs in ``dtype``."""
    return WEIGHT_COPIES * weight_elements * dtype.itemsize


def retained_state_bytes(dtype: torch.dtype) -> int:
    """The backend's per-process state that a first call allocates (kept afterwards)."""
    return RETAINED_STATE.get(dtype, RETAINED_STATE[torch.float32])
