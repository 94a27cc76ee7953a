"""STDiT2: the Open-Sora v1.1 diffusion transformer (``hpcai-tech/OpenSora-STDiT-v2-stage2/3``).

Follows opensora/models/stdit/stdit2.py at tag v1.1.0: each block holds a spatial branch, a temporal
branch (own modulation table, RoPE rotated BEFORE the q/k RMS norm), cross-attention and an MLP;
conditioning on timestep, pixel size, aspect ratio, frame count and fps; per-frame timestep-0 branch for
condition frames (``x_mask``). Parameter names equal the released checkpoints'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import STDiTBase
from .captions import CaptionEmbedder, Captions, CrossAttention
from .config import as_triple, check_heads
from .init import drop_path_rates, reset_table_, xavier_linears, zero_
from .inplace import add, modulate, residual
from .layers import (
    Attention,
    FinalLayer,
    Mlp,
    PatchEmbed3D,
    SizeEmbedder,
    TimestepEmbedder,
    frame_mask_or_none,
    modulation,
    run_block,
    unpatchify,
)
from .positions import RotaryEmbedding, resolution_pos_table
from .tensors import layer_norm, scalar_per_sample

# ==================================================================================================
# Config
# ==================================================================================================


@dataclass
class STDiT2Config:
    """Constructor kwargs of the official ``STDiT2Config`` (same names and defaults).

    ``enable_flash_attn`` / ``enable_layernorm_kernel`` switch kernels only; ``freeze`` ("not_temporal"
    or "text") only sets ``requires_grad``; ``no_temporal_pos_emb`` is unused by the official model.
    """

    input_size: tuple = (None, None, None)
    input_sq_size: int = 32
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
    freeze: str | None = None
    qk_norm: bool = False
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False

    def __post_init__(self) -> None:
        self.input_size = as_triple(self.input_size, "input_size", allow_none=True)
        self.patch_size = as_triple(self.patch_size, "patch_size")
        check_heads(self.hidden_size, self.num_heads, "STDiT2", rope=True)
        if self.hidden_size % 3:
            raise ValueError(f"STDiT2: hidden_size {self.hidden_size} must be divisible by 3 (size embedders)")
        if self.freeze not in (None, "not_temporal", "text"):
            raise ValueError(f"STDiT2: freeze must be None, 'not_temporal' or 'text', got {self.freeze!r}")


# The released v1.1 weights (stage2 and stage3): the registry factory STDiT2-XL/2 (depth 28, hidden 1152,
# patch (1,2,2), 16 heads) with the values every v1.1 config sets (qk_norm, 200 tokens, input_sq_size 512).
PRESETS: dict[str, STDiT2Config] = {
    "STDiT2-XL/2": STDiT2Config(
        depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16,
        qk_norm=True, model_max_length=200, input_sq_size=512,
    ),
}


# ==================================================================================================
# Block
# ==================================================================================================


@dataclass
class Conditioning:
    """Per-forward values every block reads."""

    captions: Captions
    t_mlp: torch.Tensor  # (B, 6C) spatial/MLP modulation from t + size info
    t_tmp_mlp: torch.Tensor  # (B, 3C) temporal modulation from t + frame count/fps
    t0_mlp: torch.Tensor | None  # the same two for timestep 0, only with condition frames
    t0_tmp_mlp: torch.Tensor | None
    frame_mask: torch.Tensor | None  # (B, T) bool, None when every frame is generated
    rope: tuple[torch.Tensor, torch.Tensor]  # (cos, sin) over frames, each (T, head_dim)


class STDiT2Block(nn.Module):
    """Spatial attention, temporal attention, cross-attention and MLP, each modulated and gated.

    Follows opensora/models/stdit/stdit2.py ``STDiT2Block``. Tokens are (B, T, S, C); the temporal
    branch attends on the (B, S, T, C) view.
    """

    def __init__(self, cfg: STDiT2Config, drop_path: float, device=None, dtype=None, operations=nn):
        super().__init__()
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)
        self.drop_path = drop_path
        self.attn = Attention(dim, cfg.num_heads, cfg.qk_norm, **kw)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, **kw)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), dim, **kw)
        self.attn_temp = Attention(dim, cfg.num_heads, cfg.qk_norm, rope_before_norm=True, **kw)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, device=device, dtype=dtype) / dim**0.5)
        self.scale_shift_table_temporal = nn.Parameter(torch.randn(3, dim, device=device, dtype=dtype) / dim**0.5)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        mods = modulation(self.scale_shift_table, cond.t_mlp, cond.t0_mlp, cond.frame_mask)  # (B, 6, T|1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:, :, :, None].unbind(1)  # (B, T|1, 1, C)
        mods = modulation(self.scale_shift_table_temporal, cond.t_tmp_mlp, cond.t0_tmp_mlp, cond.frame_mask)
        shift_tmp, scale_tmp, gate_tmp = mods[:, :, :, None].unbind(1)

        h = self.attn(modulate(layer_norm(x), shift_msa, scale_msa))  # (B, T, S, C) attention over S
        x = residual(x, h, gate_msa, self.drop_path, self.training)

        h = modulate(layer_norm(x), shift_tmp, scale_tmp)
        h = self.attn_temp(h.transpose(1, 2), cond.rope).transpose(1, 2)  # attention over T
        x = residual(x, h, gate_tmp, self.drop_path, self.training)

        x = add(x, self.cross_attn(x, cond.captions))

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        return residual(x, self.mlp(h), gate_mlp, self.drop_path, self.training)


# ==================================================================================================
# Model
# ==================================================================================================


class STDiT2(STDiTBase):
    """Open-Sora v1.1 STDiT2. ``forward`` takes the official call and returns (B, C_out, T, H, W) float32.

    Built with the layers' own default init; call :meth:`initialize_weights` to train from scratch.
    """

    CONFIG = STDiT2Config
    PRESETS = PRESETS
    OFFICIAL_NAME = "STDiT2"
    ARCHITECTURE_FIELDS = (*STDiTBase.ARCHITECTURE_FIELDS, "qk_norm")
    UNREADABLE_DEFAULTS = {**STDiTBase.UNREADABLE_DEFAULTS, "input_sq_size": 512}  # every released config sets 512

    @classmethod
    def config_from_shapes(cls, keys, shape) -> dict:
        """Base kwargs plus the free input size, the q/k norm switch and an unknown ``input_sq_size``."""
        config = super().config_from_shapes(keys, shape)
        qk_norm = f"{cls.BLOCKS}.0.attn.q_norm.weight" in keys
        return {**config, "input_size": [None, None, None], "input_sq_size": None, "qk_norm": qk_norm}

    def __init__(self, config: STDiT2Config | None = None, *, device=None, dtype=None, operations=nn) -> None:
        cfg = config or STDiT2Config()
        super().__init__(cfg)
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)
        linear = dict(bias=True, device=device, dtype=dtype)

        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, dim, **kw)
        self.t_embedder = TimestepEmbedder(dim, **kw)
        self.t_block = nn.Sequential(nn.SiLU(), operations.Linear(dim, 6 * dim, **linear))
        self.t_block_temp = nn.Sequential(nn.SiLU(), operations.Linear(dim, 3 * dim, **linear))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, dim, cfg.model_max_length, cfg.class_dropout_prob, **kw)
        self.rope = RotaryEmbedding(dim // cfg.num_heads, device=device, dtype=dtype)
        rates = drop_path_rates(cfg.drop_path, cfg.depth)
        self.blocks = nn.ModuleList(STDiT2Block(cfg, rates[i], **kw) for i in range(cfg.depth))
        self.final_layer = FinalLayer(dim, math.prod(cfg.patch_size), self.out_channels, **kw)
        self.csize_embedder = SizeEmbedder(dim // 3, **kw)
        self.ar_embedder = SizeEmbedder(dim // 3, **kw)
        self.fl_embedder = SizeEmbedder(dim, **kw)
        self.fps_embedder = SizeEmbedder(dim, **kw)
        self._apply_freeze_flags()

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def forward(
        self, x, timestep, y, mask=None, x_mask=None, num_frames=None, height=None, width=None, ar=None, fps=None
    ):
        """Official call. x (B, C_in, T, H, W); timestep (B,); y (B, 1, L, C_cap); mask (B', L) caption
        token mask (tiled for CFG); x_mask (B, T) bool, False = condition frame; num_frames, height, width
        (pixels), ar, fps: (B,) tensors. Returns (B, C_out, T, H, W) float32.
        """
        dtype = self.dtype
        B, size = x.shape[0], tuple(x.shape[-3:])
        x, y = x.to(dtype), y.to(dtype)
        timestep = scalar_per_sample(timestep, B, "timestep", x).to(dtype)  # (B,)
        grid = self.x_embedder.grid(size)  # (T', H', W')

        x = add(self.x_embedder(x), resolution_pos_table(self.config, grid, height, width, x))  # (B, T', S, C)
        t, t0, cond = self._conditioning(x, timestep, y, mask, x_mask, (num_frames, height, width, ar, fps), grid[0])
        for block in self.blocks:
            x = run_block(block, self.gradient_checkpointing, x, cond)

        x = self.final_layer(x, t, t0, cond.frame_mask)  # (B, T', S, P*C_out)
        return unpatchify(x, grid, self.patch_size, self.out_channels, size).float()

    def _size_info(self, sizes, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data_info, fl): [csize(height) | csize(width) | ar] and frame-count + fps embeddings, (B, C) each."""
        names = ("num_frames", "height", "width", "ar", "fps")
        num_frames, height, width, ar, fps = (
            scalar_per_sample(v, batch, n, like) for v, n in zip(sizes, names, strict=True)
        )
        dtype = like.dtype
        csize = self.csize_embedder(torch.stack([height, width], dim=1), batch, dtype)  # (B, 2C/3)
        data_info = torch.cat([csize, self.ar_embedder(ar, batch, dtype)], dim=1)  # (B, C)
        fl = self.fl_embedder(num_frames, batch, dtype) + self.fps_embedder(fps, batch, dtype)  # (B, C)
        return data_info, fl

    def _conditioning(self, x, timestep, y, mask, x_mask, sizes, frames):
        B, dtype = x.shape[0], x.dtype
        data_info, fl = self._size_info(sizes, B, x)
        t = self.t_embedder(timestep, dtype)  # (B, C)
        frame_mask = frame_mask_or_none(x_mask, B, frames)
        t0 = None if frame_mask is None else self.t_embedder(torch.zeros_like(timestep), dtype)
        cond = Conditioning(
            captions=self.encode_text(y, mask, B),
            t_mlp=self.t_block(t + data_info),
            t_tmp_mlp=self.t_block_temp(t + fl),
            t0_mlp=None if t0 is None else self.t_block(t0 + data_info),
            t0_tmp_mlp=None if t0 is None else self.t_block_temp(t0 + fl),
            frame_mask=frame_mask,
            rope=self.rope.tables(frames, x),
        )
        # final layer: bare t for generated frames, but t0 + size info for condition frames (official)
        return t, (None if t0 is None else t0 + data_info), cond

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official from-scratch init: xavier Linears (and patch conv) with zero bias; timestep, t_block(s)
        and caption MLP weights N(0, 0.02); cross_attn.proj, attn_temp.proj and the final linear zero;
        tables randn/sqrt(C); null caption randn/sqrt(C_cap); q/k gains one; RoPE frequencies analytic."""
        xavier_linears(self)
        conv = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(conv.data.view(conv.shape[0], -1))
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.t_block_temp[1],
                       self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.blocks:
            zero_(block.cross_attn.proj.weight, block.cross_attn.proj.bias)
            zero_(block.attn_temp.proj.weight, block.attn_temp.proj.bias)
            reset_table_(block.scale_shift_table)
            reset_table_(block.scale_shift_table_temporal)
            for norm in (block.attn.q_norm, block.attn.k_norm, block.attn_temp.q_norm, block.attn_temp.k_norm):
                if norm is not None:
                    nn.init.ones_(norm.weight)
        zero_(self.final_layer.linear.weight, self.final_layer.linear.bias)
        reset_table_(self.final_layer.scale_shift_table)
        emb = self.y_embedder.y_embedding
        emb.copy_(CaptionEmbedder.null_caption_init(*emb.shape, device=emb.device, dtype=emb.dtype))
        self.rope.reset_parameters()

    def _apply_freeze_flags(self) -> None:
        """``freeze="not_temporal"`` trains only attn_temp; ``freeze="text"`` freezes cross-attention."""
        for name, p in self.named_parameters():
            if (self.config.freeze == "not_temporal" and "attn_temp" not in name) or (
                self.config.freeze == "text" and "cross_attn" in name
            ):
                p.requires_grad_(False)
        self.rope.freqs.requires_grad_(False)
