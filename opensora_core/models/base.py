"""What STDiT, STDiT2 and STDiT3 share: construction from official kwargs and presets, the compute
dtype, and the caption path."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..official_config import config_from_official
from .layers import Captions, caption_mask, packed_captions


class STDiTBase(nn.Module):
    """Base of the three model classes. Subclasses set ``CONFIG``, ``PRESETS`` and ``OFFICIAL_NAME``
    and build ``x_embedder`` and ``y_embedder``."""

    CONFIG: ClassVar[type]
    PRESETS: ClassVar[dict[str, Any]]
    OFFICIAL_NAME: ClassVar[str]

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = 2 * config.in_channels if config.pred_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.gradient_checkpointing = False  # checkpoint every block while training when True
        self.compute_dtype: torch.dtype | None = None  # None: the patch-embedding weight dtype

    @classmethod
    def from_official_config(cls, config: dict[str, Any], *, device=None, dtype=None, operations=nn):
        """Build from the official constructor kwargs (a released ``config.json`` or a case's
        ``constructor_kwargs``). Kernel/parallel/freeze flags and Hugging Face bookkeeping keys are
        accepted; any other unknown key raises ``ValueError``."""
        cfg = config_from_official(cls.CONFIG, config, cls.OFFICIAL_NAME)
        return cls(cfg, device=device, dtype=dtype, operations=operations)

    @classmethod
    def from_preset(cls, name: str, *, device=None, dtype=None, operations=nn, **overrides):
        """Build a named preset (``PRESETS``), optionally overriding config fields."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.OFFICIAL_NAME} preset {name!r}; known: {', '.join(cls.PRESETS)}")
        config = dataclasses.replace(cls.PRESETS[name], **overrides)
        return cls(config, device=device, dtype=dtype, operations=operations)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to (``compute_dtype`` or the patch-embedding weight dtype)."""
        return self.compute_dtype or self.x_embedder.proj.weight.dtype

    def encode_text(self, y: torch.Tensor, mask: torch.Tensor | None, batch: int) -> Captions:
        """Caption features (B, 1, L, C_cap) + token mask -> projected valid tokens per sample.

        In training mode each caption is replaced by the null caption with ``class_dropout_prob``.
        With ``skip_y_embedder`` (STDiT3 only) ``y`` holds already projected, packed tokens and ``mask``
        their per-sample lengths.
        """
        if getattr(self.config, "skip_y_embedder", False):
            return packed_captions(y, mask, batch)
        y = y.squeeze(1) if y.dim() == 4 else y  # (B, L, C_cap)
        if y.dim() != 3 or y.shape[0] != batch:
            raise ValueError(f"y must be [B, 1, L, caption_channels] with B = {batch}, got {tuple(y.shape)}")
        if self.training and self.y_embedder.uncond_prob > 0:
            y = self.y_embedder.drop_captions(y)
        return self.y_embedder(y, caption_mask(mask, batch, y.shape[1]))
