"""Precision names: the one table of dtype names the command line, the nodes, the trainer and the
official configs use ("fp32", "bf16", "fp16"), and the parser for the spellings official configs write."""

from __future__ import annotations

from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Other spellings in official configs ("half", "float"); torch names ("float16", "torch.bfloat16") are read too.
_ALIASES: dict[str, torch.dtype] = {"half": torch.float16, "float": torch.float32}


def parse_dtype(value: Any) -> torch.dtype:
    """A torch dtype from a torch.dtype or a name such as "bf16", "float16", "torch.float32"."""
    if isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.")
    dtype = DTYPES.get(key) or _ALIASES.get(key) or getattr(torch, key, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}; use {', '.join(DTYPES)}")
    return dtype


def cpu_computes(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN has kernels for ``dtype`` (float32 always; bf16 / fp16 with AVX-512 or their own
    instructions). Without them, e.g. on an AVX2-only CPU, bf16 convolutions ran 17-40x slower than float32 and
    oneDNN refused a bf16 linear with epilogue outright."""
    if dtype == torch.float32:
        return True
    if not torch.backends.mkldnn.is_available():
        return False
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    return probe is not None and bool(getattr(torch.ops.mkldnn, probe)())


__all__ = ["DTYPES", "cpu_computes", "parse_dtype"]
