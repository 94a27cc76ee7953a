"""Working memory of one Open-Sora 2.0 MMDiT call, from shapes: what the model and the memory estimate share.

:mod:`.mmdit_memory` adds the weights and the CPU measurement; :class:`~.mmdit.MMDiTModel` asks these
functions for the working memory of a sampling step (``sampling_memory_bytes``), which the pipeline hands to
ComfyUI's memory manager and checks against the device. The counts follow the block ``forward`` methods (see
the :mod:`.mmdit_memory` docstring). ``config`` arguments are :class:`~.mmdit.MMDiTConfig` objects, read through
their fields only (so the model module can import this one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mmdit_layers import ROPE_CHUNK_ELEMENTS

DOUBLE_BLOCK_PEAK = 7  # (R, S, C) tensors alive at the double-stream block's peak (its image MLP)
VECTOR_ROWS = 24  # (R, C) vectors alive with the blocks: vec, 2 x 6 modulation outputs, SiLU/MLP temporaries
SAMPLER_LATENTS = 8  # unpacked latent-sized tensors the sampler holds (x, c, u, u2, v, ...)


@dataclass(frozen=True)
class MemorySetting:
    """How the model runs: compute dtype, fp8 Linear weights, blocks kept on the device (None = all) and
    whether the guidance passes share one model call."""

    dtype: torch.dtype = torch.bfloat16
    fp8: bool = False
    blocks_on_device: int | None = None
    batch_passes: bool = True
    passes: int = 3  # 2 for t2v (the third pass is skipped)


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------


def activation_bytes(config, rows: int, image_tokens: int, text_tokens: int, setting: MemorySetting) -> int:
    """Peak transient bytes of one model call with ``rows`` rows (see the module docstring)."""
    item = torch.empty((), dtype=setting.dtype).element_size()
    seq, C, D = image_tokens + text_tokens, config.hidden_size, config.head_dim
    M = int(C * config.mlp_ratio)
    stream = rows * seq * C * item
    rope_chunk = (2 if setting.dtype == torch.float32 else 3) * min(ROPE_CHUNK_ELEMENTS, rows * seq * C) * 4
    # single block: stream + q + k + value/MLP buffer (C + M) while q/k rotate, + the attention output after
    single = max((3 * C + C + M) * rows * seq * item + rope_chunk, (4 * C + C + M) * rows * seq * item)
    double = DOUBLE_BLOCK_PEAK * stream
    blocks = max(single if config.depth_single_blocks else 0, double if config.depth else 0)
    tables = 2 * rows * seq * D * 4  # float32 cos/sin
    vectors = VECTOR_ROWS * rows * C * item  # timestep/CLIP vector, modulation outputs
    dequant = (M * C + 4 * C) * item if setting.fp8 else 0  # the widest layer's weight, dequantised
    return blocks + tables + vectors + dequant


def input_bytes(config, rows: int, image_tokens: int, text_tokens: int, batch: int,
                setting: MemorySetting) -> int:
    """Model inputs (packed latent, condition, T5 states, ids) and the sampler's latent-sized tensors."""
    item = torch.empty((), dtype=setting.dtype).element_size()
    per_row = image_tokens * (2 * config.in_channels + config.cond_channels + 3)
    per_row += text_tokens * (config.context_in_dim + 3)
    sampler = SAMPLER_LATENTS * batch * image_tokens * config.in_channels
    return (rows * per_row + sampler) * item


__all__ = ["DOUBLE_BLOCK_PEAK", "MemorySetting", "SAMPLER_LATENTS", "VECTOR_ROWS", "activation_bytes", "input_bytes"]
