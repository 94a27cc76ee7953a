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
# resident state the backend keeps after a call's first convolutions / GEMMs, bytes per compute dtype, for 3-D
# convolutions (the video VAEs' temporal/causal stages, and whatever runs after them in the process) and for 2-D
# ones alone (an image VAE). Measured (benchmarks/memory_calibration.py) as the constant part of a decode's working
# memory, it varied by about 12 MiB between runs on one machine (3-D: 12-24 MiB, 2-D fp32 0-8, bf16 9-21): the
# table holds the middle, so the estimate errs by at most ~6 MiB either way (10 % of a 64x112 decode).
RETAINED_STATE = {
    3: {torch.float32: 18 << 20, torch.bfloat16: 18 << 20, torch.float16: 18 << 20},
    2: {torch.float32: 3 << 20, torch.bfloat16: 15 << 20, torch.float16: 15 << 20},
}


def weight_copies_bytes(weight_elements: int, dtype: torch.dtype) -> int:
    """Bytes the backend holds while one layer with ``weight_elements`` weights runs in ``dtype``."""
    return WEIGHT_COPIES * weight_elements * dtype.itemsize


def retained_state_bytes(dtype: torch.dtype, conv_dims: int = 3) -> int:
    """The backend's per-process state that a first call of ``conv_dims``-D convolutions allocates (kept)."""
    table = RETAINED_STATE[conv_dims]
    return table.get(dtype, table[torch.float32])
