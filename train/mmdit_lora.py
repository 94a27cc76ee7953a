"""LoRA adapters for the Open-Sora 2.0 MMDiT over a frozen bf16 or fp8 base, and the base's placement.

The base stays frozen in the dtype it was loaded in (bf16, or fp8 e4m3fn weights with per-layer scales, which
:class:`LoRAOver` wraps just as well as ``nn.Linear``); only the low-rank adapters train, in float32. Activation
checkpointing recomputes each block in the backward pass, and block swap keeps only ``blocks_on_device`` blocks
of frozen weights on the device (the adapters stay there). The training task is :mod:`.mmdit_task`; its export
has ComfyUI's LoRA keys (``diffusion_model.<official path>.lora_A/lora_B/alpha``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from opensora_core.lora import matches_target
from opensora_core.models.block_swap import enable_block_swap
from opensora_core.models.fp8 import Fp8Linear

# Linear layers adapted in every block (official module-path suffixes): the attention projections and MLPs of
# both streams of the double blocks, and the single blocks' q/k, fused value+MLP input and output layers.
MMDIT_TARGETS = (
    "img_attn.q_proj", "img_attn.k_proj", "img_attn.v_proj", "img_attn.proj", "img_mlp.0", "img_mlp.2",
    "txt_attn.q_proj", "txt_attn.k_proj", "txt_attn.v_proj", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2",
    "single_blocks.*.q_proj", "single_blocks.*.k_proj", "v_mlp", "linear2",
)
# Open-Sora 2.0's image-to-video training conditions (official ``condition_config`` names): they read a clip's
# first and/or last frame encoded alone, which the latent cache keeps (the v2v conditions are not ported).
I2V_TYPES = ("i2v_head", "i2v_tail", "i2v_loop")


class LoRAOver(nn.Module):
    """A trainable low-rank branch over a frozen Linear-like layer (``nn.Linear`` or an fp8 ``Fp8Linear``):
    ``base(x) + lora_B(lora_A(x)) * alpha / rank``; ``lora_B`` starts at zero, so a fresh adapter changes
    nothing. The adapters are float32 and cast to the input's dtype when they run."""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = int(rank), float(rank if alpha is None else alpha)
        device = next(base.buffers(), next(base.parameters(), None)).device
        self.lora_A = nn.Linear(base.in_features, self.rank, bias=False, device=device)
        self.lora_B = nn.Linear(self.rank, base.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = nn.functional.linear(nn.functional.linear(x, self.lora_A.weight.to(x.dtype)),
                                      self.lora_B.weight.to(x.dtype))  # (..., out)
        return self.base(x) + update * (self.alpha / self.rank)


def _target_paths(model: nn.Module, targets: Sequence[str]) -> list[str]:
    plain = tuple(t for t in targets if "*" not in t)
    wild = [t.split(".*.") for t in targets if "*" in t]
    paths = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Fp8Linear)):
            continue
        if matches_target(name, plain) or any(name.startswith(a + ".") and name.endswith("." + b) for a, b in wild):
            paths.append(name)
    return paths


def add_adapters(model: nn.Module, rank: int, alpha: float | None = None, *,
                 targets: Sequence[str] = MMDIT_TARGETS, seed: int = 0) -> list[str]:
    """Freeze ``model`` and wrap every targeted layer in a :class:`LoRAOver`; returns the wrapped paths.
    ``targets`` are module-path suffixes; ``"single_blocks.*.q_proj"`` matches inside one prefix only."""
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)  # the adapters' start, reproducible
    paths = _target_paths(model, targets)
    if not paths:
        raise ValueError(f"lora.targets: no Linear layer of {type(model).__name__} matches {list(targets)}; "
                         f"the MMDiT's are {list(MMDIT_TARGETS)}")
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, child, LoRAOver(getattr(parent, child), rank, alpha, generator=generator))
    return paths


def adapters(model: nn.Module) -> dict[str, LoRAOver]:
    """Official module path -> adapter (the path of the layer it wraps)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRAOver)}


def place_model(model: nn.Module, device: torch.device | str, *, blocks_on_device: int = 0,
                gradient_checkpointing: bool = True) -> None:
    """The frozen base on ``device`` or block-swapped (``blocks_on_device`` > 0), the adapters on ``device``."""
    model.gradient_checkpointing = gradient_checkpointing
    if blocks_on_device <= 0:
        model.to(device)
        return
    if not gradient_checkpointing:
        raise ValueError("model.blocks_on_device: block swap in training needs model.gradient_checkpointing (the "
                         "backward pass recomputes each block, which copies it in again)")
    enable_block_swap(model, device, blocks_on_device, keep_trainable=True)
    for m in adapters(model).values():
        m.lora_A.to(device), m.lora_B.to(device)


__all__ = ["I2V_TYPES", "LoRAOver", "MMDIT_TARGETS", "adapters", "add_adapters", "place_model"]
