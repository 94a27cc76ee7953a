"""STDiT: the Open-Sora v1.0 diffusion transformer (``OpenSora-v1-*-16x256x256.pth``, ``...-16x512x512.pth``).

Follows opensora/models/stdit/stdit.py at tag v1.0.0: a fixed latent size with fixed sin-cos tables
stored as persistent buffers (``pos_embed`` added to every frame, ``pos_embed_temporal`` added to the
temporal-attention input of block 0 only), timestep-only conditioning, no RoPE and no q/k norm. The
temporal branch takes the raw residual stream and reuses the spatial gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..dtypes import parse_dtype
from .base import STDiTBase
from .captions import CaptionEmbedder, Captions, CrossAttention
from .config import as_triple, check_heads
from .init import drop_path_rates, reset_table_, xavier_linears, zero_
from .inplace import add, modulate, residual
from .layers import Attention, FinalLayer, Mlp, PatchEmbed3D, TimestepEmbedder, modulation, run_block, unpatchify
from .positions import sincos_1d_fixed, sincos_2d_fixed
from .tensors import cast_to, layer_norm, scalar_per_sample

# ==================================================================================================
# Config
# ==================================================================================================


@dataclass
class STDiTConfig:
    """Constructor kwargs of the official v1.0 ``STDiT`` (same names and defaults).

    ``input_size`` is the LATENT size (T, H/8, W/8) the model is built for; ``space_scale`` /
    ``time_scale`` divide the table coordinates. ``enable_*`` switch kernels only; ``freeze`` only sets
    ``requires_grad``; ``no_temporal_pos_emb`` is unused by the official model. The official ``dtype``
    argument is accepted by :meth:`STDiT.from_official_config` as the parameter dtype.
    """

    input_size: tuple[int, int, int] = (1, 32, 32)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    no_temporal_pos_emb: bool = False
    caption_channels: int = 4096
    model_max_length: int = 120
    space_scale: float = 1.0
    time_scale: float = 1.0
    freeze: str | None = None
    enable_flashattn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False

    def __post_init__(self) -> None:
        self.input_size = as_triple(self.input_size, "input_size")
        self.patch_size = as_triple(self.patch_size, "patch_size")
        check_heads(self.hidden_size, self.num_heads, "STDiT", rope=False)
        if any(n % p for n, p in zip(self.input_size, self.patch_size, strict=True)):
            raise ValueError(f"STDiT: input_size {self.input_size} must be a multiple of patch_size {self.patch_size}")
        if self.freeze not in (None, "not_temporal", "text"):
            raise ValueError(f"STDiT: freeze must be None, 'not_temporal' or 'text', got {self.freeze!r}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(n // p for n, p in zip(self.input_size, self.patch_size, strict=True))


_XL2 = dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)
# "STDiT-XL/2" is the registry factory (official defaults, input_size (1, 32, 32)). The released
# checkpoints were built for fixed latent sizes (configs/opensora/inference/16x256x256.py, 16x512x512.py):
# their fixed tables are part of the state dict, so load them with the matching variant.
PRESETS: dict[str, STDiTConfig] = {
    "STDiT-XL/2": STDiTConfig(**_XL2),
    "STDiT-XL/2-16x256x256": STDiTConfig(**_XL2, input_size=(16, 32, 32), space_scale=0.5, time_scale=1.0),
    "STDiT-XL/2-16x512x512": STDiTConfig(**_XL2, input_size=(16, 64, 64), space_scale=1.0, time_scale=1.0),
}


# ==================================================================================================
# Block
# ==================================================================================================


class STDiTBlock(nn.Module):
    """Modulated spatial attention, unmodulated temporal attention (same gate), cross-attention, MLP.

    Follows opensora/models/stdit/stdit.py ``STDiTBlock``. Tokens are (B, T, S, C).
    """

    def __init__(self, cfg: STDiTConfig, drop_path: float, device=None, dtype=None, operations=nn):
        super().__init__()
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)
        self.drop_path = drop_path
        self.attn = Attention(dim, cfg.num_heads, qk_norm=False, **kw)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, **kw)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), dim, **kw)
        self.attn_temp = Attention(dim, cfg.num_heads, qk_norm=False, **kw)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, device=device, dtype=dtype) / dim**0.5)

    def forward(self, x: torch.Tensor, captions: Captions, t_mlp: torch.Tensor, temporal_table: torch.Tensor | None):
        mods = modulation(self.scale_shift_table, t_mlp, None, None)[:, :, :, None]  # (B, 6, 1, 1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(1)  # (B, 1, 1, C)

        h = self.attn(modulate(layer_norm(x), shift_msa, scale_msa))  # (B, T, S, C) attention over S
        x = residual(x, h, gate_msa, self.drop_path, self.training)

        h = x.transpose(1, 2)  # (B, S, T, C): raw residual stream, no norm
        if temporal_table is not None:
            h = h + temporal_table  # (1, T, C) broadcast; block 0 only
        h = self.attn_temp(h).transpose(1, 2)  # attention over T
        x = residual(x, h, gate_msa, self.drop_path, self.training)

        x = add(x, self.cross_attn(x, captions))

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        return residual(x, self.mlp(h), gate_mlp, self.drop_path, self.training)


# ==================================================================================================
# Model
# ==================================================================================================


class STDiT(STDiTBase):
    """Open-Sora v1.0 STDiT for one fixed latent size. ``forward(x, timestep, y, mask=None)`` returns
    (B, C_out, T, H, W) float32. Built with the layers' own default init; call
    :meth:`initialize_weights` to train from scratch."""

    CONFIG = STDiTConfig
    PRESETS = PRESETS
    OFFICIAL_NAME = "STDiT"
    ARCHITECTURE_FIELDS = (*STDiTBase.ARCHITECTURE_FIELDS, "space_scale", "time_scale")
    SIZE_ARGS = False  # conditioned on the timestep only
    OPTIONAL_KEYS = ("pos_embed", "pos_embed_temporal")  # released .pth files omit the fixed tables
    UNREADABLE_DEFAULTS = {**STDiTBase.UNREADABLE_DEFAULTS, "space_scale": 1.0, "time_scale": 1.0}  # constructor defaults

    @classmethod
    def config_from_shapes(cls, keys, shape) -> dict:
        """Base kwargs plus the latent size of the position tables when the file stores them (else None)
        and the table scales, which no shape shows (None)."""
        config = super().config_from_shapes(keys, shape)
        size = None
        if "pos_embed" in keys and "pos_embed_temporal" in keys:
            cells, side = shape("pos_embed")[1], math.isqrt(shape("pos_embed")[1])
            patch = config["patch_size"]
            if side * side == cells and patch[1] == patch[2]:  # square grid (every released size)
                size = [shape("pos_embed_temporal")[1] * patch[0], side * patch[1], side * patch[2]]
        return {**config, "input_size": size, "space_scale": None, "time_scale": None}

    def __init__(self, config: STDiTConfig | None = None, *, device=None, dtype=None, operations=nn) -> None:
        cfg = config or STDiTConfig()
        super().__init__(cfg)
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)

        self.register_buffer("pos_embed", self._spatial_table(device, dtype))
        self.register_buffer("pos_embed_temporal", self._temporal_table(device, dtype))
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, dim, **kw)
        self.t_embedder = TimestepEmbedder(dim, **kw)
        self.t_block = nn.Sequential(nn.SiLU(), operations.Linear(dim, 6 * dim, bias=True, device=device, dtype=dtype))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, dim, cfg.model_max_length, cfg.class_dropout_prob, **kw)
        rates = drop_path_rates(cfg.drop_path, cfg.depth)
        self.blocks = nn.ModuleList(STDiTBlock(cfg, rates[i], **kw) for i in range(cfg.depth))
        self.final_layer = FinalLayer(dim, math.prod(cfg.patch_size), self.out_channels, **kw)
        self._apply_freeze_flags()

    @classmethod
    def from_official_config(cls, config: dict[str, Any], *, device=None, dtype=None, operations=nn) -> STDiT:
        """Official v1.0 kwargs; the official ``dtype`` (the compute dtype, which the weights must have)
        becomes the parameter dtype unless ``dtype`` is given here."""
        config = dict(config)
        official_dtype = config.pop("dtype", None)
        if dtype is None and official_dtype is not None:
            dtype = parse_dtype(official_dtype)
        return cls(cls.config_from_kwargs(config), device=device, dtype=dtype, operations=operations)

    def _spatial_table(self, device, dtype) -> torch.Tensor:
        _, rows, cols = self.config.grid
        table = sincos_2d_fixed(self.config.hidden_size, rows, cols, self.config.space_scale, device=device)
        return table if dtype is None else table.to(dtype)  # (1, S, C)

    def _temporal_table(self, device, dtype) -> torch.Tensor:
        table = sincos_1d_fixed(self.config.hidden_size, self.config.grid[0], self.config.time_scale, device=device)
        return table if dtype is None else table.to(dtype)  # (1, T, C)

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def forward(self, x, timestep, y, mask=None):
        """x (B, C_in, T, H, W) at exactly ``input_size``; timestep (B,); y (B, 1, L, C_cap); mask (B', L)
        caption token mask (tiled for CFG). Returns (B, C_out, T, H, W) float32."""
        size = tuple(x.shape[-3:])
        if size != self.config.input_size:
            raise ValueError(
                f"STDiT (v1.0) was built for latent size {self.config.input_size} and got {size}; "
                f"build it with input_size={list(size)} (its fixed position tables depend on it)"
            )
        dtype = self.dtype
        B = x.shape[0]
        x, y = x.to(dtype), y.to(dtype)
        timestep = scalar_per_sample(timestep, B, "timestep", x).to(dtype)  # (B,)

        x = add(self.x_embedder(x), cast_to(self.pos_embed, x))  # (B, T, S, C)
        t = self.t_embedder(timestep, dtype)  # (B, C)
        t_mlp = self.t_block(t)  # (B, 6C)
        captions = self.encode_text(y, mask, B)
        temporal_table = cast_to(self.pos_embed_temporal, x)
        for i, block in enumerate(self.blocks):
            x = run_block(block, self.gradient_checkpointing, x, captions, t_mlp, temporal_table if i == 0 else None)

        x = self.final_layer(x, t)  # (B, T, S, P*C_out)
        return unpatchify(x, self.config.grid, self.patch_size, self.out_channels, size).float()

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official from-scratch init: xavier Linears (and patch conv) with zero bias; timestep, t_block
        and caption MLP weights N(0, 0.02); cross_attn.proj, attn_temp.proj and the final linear zero;
        tables randn/sqrt(C); null caption randn/sqrt(C_cap); fixed sin-cos buffers recomputed."""
        xavier_linears(self)
        conv = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(conv.data.view(conv.shape[0], -1))
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1],
                       self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.blocks:
            zero_(block.cross_attn.proj.weight, block.cross_attn.proj.bias)
            zero_(block.attn_temp.proj.weight, block.attn_temp.proj.bias)
            reset_table_(block.scale_shift_table)
        zero_(self.final_layer.linear.weight, self.final_layer.linear.bias)
        reset_table_(self.final_layer.scale_shift_table)
        emb = self.y_embedder.y_embedding
        emb.copy_(CaptionEmbedder.null_caption_init(*emb.shape, device=emb.device, dtype=emb.dtype))
        self.pos_embed.copy_(self._spatial_table(self.pos_embed.device, self.pos_embed.dtype))
        self.pos_embed_temporal.copy_(self._temporal_table(self.pos_embed.device, self.pos_embed.dtype))

    def _apply_freeze_flags(self) -> None:
        """``freeze="not_temporal"`` trains only attn_temp; ``freeze="text"`` freezes cross-attention."""
        for name, p in self.named_parameters():
            if (self.config.freeze == "not_temporal" and "attn_temp" not in name) or (
                self.config.freeze == "text" and "cross_attn" in name
            ):
                p.requires_grad_(False)
