"""Exponential moving average of the trainable weights (``update_ema`` of opensora/utils/train_utils.py).

The EMA keeps float32 copies of the parameters that require gradients (all of them in a full
fine-tune, only the adapters with LoRA) and is registered with ``accelerator.register_for_checkpointing``
so resumed runs continue it. It starts equal to the model (the official ``update_ema(..., decay=0)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_ema(shadow: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """shadow = decay * shadow + (1 - decay) * weights, for every trainable weight."""
    for name, param in trainable_parameters(model).items():
        shadow[name].lerp_(param.detach().float(), 1.0 - decay)


class EMA:
    """Shadow weights with ``state_dict``/``load_state_dict`` for accelerate's checkpointing."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in trainable_parameters(model).items()}

    def update(self, model: nn.Module) -> None:
        update_ema(self.shadow, model, self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"the saved EMA does not match the model's trainable weights: {sorted(missing)[:5]}")
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model`` (for validation and export)."""
        params = trainable_parameters(model)
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])


__all__ = ["EMA", "trainable_parameters", "update_ema"]
