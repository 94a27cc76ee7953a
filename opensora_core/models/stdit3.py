"""STDiT3: the Open-Sora v1.2 diffusion transformer (``hpcai-tech/OpenSora-STDiT-v3``).

Follows opensora/models/stdit/stdit3.py at tag v1.2.0: interleaved spatial and temporal blocks with
adaLN-single modulation, RoPE in the temporal blocks (after the q/k RMS norm), a 2D sin-cos table scaled
by the output resolution, timestep + fps conditioning and a per-frame timestep-0 branch for condition
frames (``x_mask``). Parameter names equal the released checkpoint's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import STDiTBase
from .captions import CaptionEmbedder, Captions, CrossAttention
from .config import as_triple, check_heads
from .init import drop_path_rates, freeze_, reset_table_, xavier_linears, zero_
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
class STDiT3Config:
    """Constructor kwargs of the official ``STDiT3Config`` (same names and defaults).

    ``enable_*`` switch kernels/parallelism only; ``only_train_temporal`` / ``freeze_y_embedder`` only set
    ``requires_grad``; ``skip_y_embedder`` means ``y`` arrives already projected (see ``STDiT3.forward``).
    """

    input_size: tuple = (None, None, None)
    input_sq_size: int = 512
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    only_train_temporal: bool = False
    freeze_y_embedder: bool = False
    skip_y_embedder: bool = False

    def __post_init__(self) -> None:
        self.input_size = as_triple(self.input_size, "input_size", allow_none=True)
        self.patch_size = as_triple(self.patch_size, "patch_size")
        check_heads(self.hidden_size, self.num_heads, "STDiT3", rope=True)


# Released / registered configurations (opensora/models/stdit/stdit3.py factories; the XL/2 entry is the
# hub config.json of hpcai-tech/OpenSora-STDiT-v3).
PRESETS: dict[str, STDiT3Config] = {
    "STDiT3-XL/2": STDiT3Config(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16, freeze_y_embedder=True),
    "STDiT3-3B/2": STDiT3Config(depth=28, hidden_size=1872, patch_size=(1, 2, 2), num_heads=26, freeze_y_embedder=True),
}


# ==================================================================================================
# Block
# ==================================================================================================


@dataclass
class Conditioning:
    """Per-forward values every block reads."""

    captions: Captions
    t: torch.Tensor  # (B, C) timestep + fps embedding (the final layer's modulation)
    t0: torch.Tensor | None  # (B, C) same for timestep 0, only with condition frames
    t_mlp: torch.Tensor  # (B, 6C) block modulation from t
    t0_mlp: torch.Tensor | None  # (B, 6C) same for timestep 0, only with condition frames
    frame_mask: torch.Tensor | None  # (B, T) bool, None when every frame is generated
    rope: tuple[torch.Tensor, torch.Tensor]  # (cos, sin) over frames, each (T, head_dim)


class STDiT3Block(nn.Module):
    """One spatial or temporal block: modulated self-attention, cross-attention, modulated MLP.

    Follows opensora/models/stdit/stdit3.py ``STDiT3Block``. Tokens stay in (B, T, S, C) layout; a
    temporal block runs its attention on the (B, S, T, C) view with RoPE over frames.
    """

    def __init__(self, cfg: STDiT3Config, temporal: bool, drop_path: float, device=None, dtype=None, operations=nn):
        super().__init__()
        dim = cfg.hidden_size
        self.temporal = temporal
        self.drop_path = drop_path
        self.attn = Attention(dim, cfg.num_heads, cfg.qk_norm, device=device, dtype=dtype, operations=operations)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, device=device, dtype=dtype, operations=operations)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), dim, device=device, dtype=dtype, operations=operations)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, device=device, dtype=dtype) / dim**0.5)

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        mods = modulation(self.scale_shift_table, cond.t_mlp, cond.t0_mlp, cond.frame_mask)  # (B, 6, T|1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:, :, :, None].unbind(1)  # (B, T|1, 1, C)

        h = modulate(layer_norm(x), shift_msa, scale_msa)  # (B, T, S, C)
        if self.temporal:
            h = self.attn(h.transpose(1, 2), cond.rope).transpose(1, 2)  # attention over T per position
        else:
            h = self.attn(h)  # attention over S per frame
        x = residual(x, h, gate_msa, self.drop_path, self.training)

        x = add(x, self.cross_attn(x, cond.captions))

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        return residual(x, self.mlp(h), gate_mlp, self.drop_path, self.training)


# ==================================================================================================
# Model
# ==================================================================================================


class STDiT3(STDiTBase):
    """Open-Sora v1.2 STDiT3. ``forward`` takes the official call and returns (B, C_out, T, H, W) float32.

    Built with the layers' own default init; call :meth:`initialize_weights` to train from scratch.
    Set ``gradient_checkpointing = True`` to checkpoint every block while training. ``compute_dtype``
    (default: the patch-embedding weight dtype) is the dtype inputs are cast to.
    """

    CONFIG = STDiT3Config
    PRESETS = PRESETS
    OFFICIAL_NAME = "STDiT3"
    ARCHITECTURE_FIELDS = (*STDiTBase.ARCHITECTURE_FIELDS, "qk_norm")
    BLOCKS = "spatial_blocks"
    UNREADABLE_DEFAULTS = {**STDiTBase.UNREADABLE_DEFAULTS, "input_sq_size": 512}  # every released config sets 512

    @classmethod
    def config_from_shapes(cls, keys, shape) -> dict:
        """Base kwargs plus the free input size, the q/k norm switch and an unknown ``input_sq_size``."""
        config = super().config_from_shapes(keys, shape)
        qk_norm = f"{cls.BLOCKS}.0.attn.q_norm.weight" in keys
        return {**config, "input_size": [None, None, None], "input_sq_size": None, "qk_norm": qk_norm}

    def __init__(self, config: STDiT3Config | None = None, *, device=None, dtype=None, operations=nn) -> None:
        cfg = config or STDiT3Config()
        super().__init__(cfg)
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)

        self.rope = RotaryEmbedding(dim // cfg.num_heads, device=device, dtype=dtype)
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, dim, **kw)
        self.t_embedder = TimestepEmbedder(dim, **kw)
        self.fps_embedder = SizeEmbedder(dim, **kw)
        self.t_block = nn.Sequential(nn.SiLU(), operations.Linear(dim, 6 * dim, bias=True, device=device, dtype=dtype))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, dim, cfg.model_max_length, cfg.class_dropout_prob, **kw)
        rates = drop_path_rates(cfg.drop_path, cfg.depth)
        self.spatial_blocks = nn.ModuleList(STDiT3Block(cfg, False, rates[i], **kw) for i in range(cfg.depth))
        self.temporal_blocks = nn.ModuleList(STDiT3Block(cfg, True, rates[i], **kw) for i in range(cfg.depth))
        self.final_layer = FinalLayer(dim, math.prod(cfg.patch_size), self.out_channels, **kw)
        self._apply_freeze_flags()

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, **kwargs):
        """Official call (extra kwargs such as num_frames/ar are ignored).

        x (B, C_in, T, H, W) latents; timestep (B,) on the 0..1000 scale; y (B, 1, L, C_cap) caption
        features; mask (B', L) caption token mask (B' divides B; tiled for classifier-free guidance);
        x_mask (B, T) bool, False = condition frame (timestep-0 modulation); fps (B',); height, width (B,)
        pixel size (only sample 0's is used). Returns (B, C_out, T, H, W) float32.
        """
        dtype = self.dtype
        B, size = x.shape[0], tuple(x.shape[-3:])
        x, y = x.to(dtype), y.to(dtype)
        timestep = scalar_per_sample(timestep, B, "timestep", x).to(dtype)  # (B,)
        grid = self.x_embedder.grid(size)  # (T', H', W')

        x = add(self.x_embedder(x), resolution_pos_table(self.config, grid, height, width, x))  # (B, T', S, C)
        cond = self._conditioning(x, timestep, y, mask, x_mask, fps, grid[0])
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks, strict=True):
            x = run_block(spatial, self.gradient_checkpointing, x, cond)
            x = run_block(temporal, self.gradient_checkpointing, x, cond)

        x = self.final_layer(x, cond.t, cond.t0, cond.frame_mask)  # (B, T', S, P*C_out)
        return unpatchify(x, grid, self.patch_size, self.out_channels, size).float()

    def _conditioning(self, x, timestep, y, mask, x_mask, fps, frames) -> Conditioning:
        B, dtype = x.shape[0], x.dtype
        fps_emb = self.fps_embedder(scalar_per_sample(fps, B, "fps", x), B, dtype)  # (B, C)
        t = self.t_embedder(timestep, dtype) + fps_emb  # (B, C)
        frame_mask = frame_mask_or_none(x_mask, B, frames)
        t0 = None if frame_mask is None else self.t_embedder(torch.zeros_like(timestep), dtype) + fps_emb
        return Conditioning(
            captions=self.encode_text(y, mask, B),
            t=t,
            t0=t0,
            t_mlp=self.t_block(t),
            t0_mlp=None if t0 is None else self.t_block(t0),
            frame_mask=frame_mask,
            rope=self.rope.tables(frames, x),
        )

    # ----------------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official from-scratch init: xavier Linears with zero bias; fps embedder N(0, 0.02) then zero;
        temporal blocks start as identity (attn.proj, cross_attn.proj, mlp.fc2 weights zero); tables
        randn/sqrt(C); the null caption randn/sqrt(C_cap); q/k norm gains one; RoPE frequencies analytic."""
        xavier_linears(self)
        nn.init.normal_(self.fps_embedder.mlp[0].weight, std=0.02)
        zero_(self.fps_embedder.mlp[0].bias, self.fps_embedder.mlp[2].weight, self.fps_embedder.mlp[2].bias)
        for block in self.temporal_blocks:
            zero_(block.attn.proj.weight, block.cross_attn.proj.weight, block.mlp.fc2.weight)
        for block in [*self.spatial_blocks, *self.temporal_blocks]:
            reset_table_(block.scale_shift_table)
            for norm in (block.attn.q_norm, block.attn.k_norm):
                if norm is not None:
                    nn.init.ones_(norm.weight)
        reset_table_(self.final_layer.scale_shift_table)
        emb = self.y_embedder.y_embedding
        emb.copy_(CaptionEmbedder.null_caption_init(*emb.shape, device=emb.device, dtype=emb.dtype))
        self.rope.reset_parameters()

    def _apply_freeze_flags(self) -> None:
        """``only_train_temporal`` and ``freeze_y_embedder`` as the official constructor applies them."""
        if self.config.only_train_temporal:
            freeze_(self.parameters())
            for block in self.temporal_blocks:
                block.requires_grad_(True)
        if self.config.freeze_y_embedder:
            freeze_(self.y_embedder.parameters())
        self.rope.freqs.requires_grad_(False)
