"""Open-Sora-Plan v1.3 transformers: ``OpenSoraT2V_v1_3`` and the image-to-video / inpainting
``OpenSoraInpaint_v1_3`` (PKU-YuanGroup/Open-Sora-Plan @v1.3.1).

Follows opensora/models/diffusion/opensora_v1_3/modeling_opensora.py, modeling_inpaint.py and
modules.py: per-frame 2x2 patch embedding, adaLN-single timestep modulation, 32 blocks of
[modulated self-attention with RoPE-3D (full or Skiparse), cross-attention on the raw residual stream,
modulated feed-forward], a modulated output head. Parameter names equal the released checkpoints'.

Differences from the official code, all deliberate: ``attention_mask`` / ``encoder_attention_mask``
may be None (= everything valid; the official forward crashes), latent sizes that the patch does not
divide and ``patch_size_t`` > 1 raise ``ValueError`` (the official code floors / mis-shapes), any
``sparse_n`` runs (the official masks exist for 1 and 4 only), ``sparse1d=False`` means full attention
everywhere, and the output is float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from ..official_config import OfficialConstructors
from ..text.t5 import MT5_V1_3
from .inplace import modulate, residual
from .layers import run_block
from .tensors import layer_norm, scalar_per_sample
from .osp_layers import (
    AdaLayerNormSingle,
    AttentionContext,
    FeedForward,
    OspAttention,
    PatchEmbed2D,
    Skiparse,
    TextProjection,
    latent_mask_bias,
    layer_skiparse,
    rope_3d_tables,
    text_mask_bias,
)

# Official factory/training arguments that change no weight and no maths.
IGNORED_KEYS = {"skip_connection": "popped by the OpenSoraT2V_v1_3_2B_122 factory"}
SAMPLING_LIVE_COPIES = 3  # copies of the widest activation alive at once (block input, MLP hidden, output): an estimate
FF_MULT = 4  # diffusers FeedForward inner width = 4 x hidden


# ==================================================================================================
# Config
# ==================================================================================================


@dataclass
class OpenSoraT2VConfig:
    """Constructor kwargs of the official ``OpenSoraT2V_v1_3`` (same names and defaults).

    ``sample_size_*`` and ``upcast_attention`` change nothing (the v1.3 attention processor never upcasts);
    ``only_cross_attention`` / ``double_self_attention`` must stay False (no release uses them).
    """

    num_attention_heads: int = 16
    attention_head_dim: int = 88
    in_channels: int | None = None
    out_channels: int | None = None
    num_layers: int = 1
    dropout: float = 0.0
    cross_attention_dim: int | None = None
    attention_bias: bool = True
    sample_size_h: Any = None
    sample_size_w: Any = None
    sample_size_t: Any = None
    patch_size: int | None = None
    patch_size_t: int | None = None
    activation_fn: str = "geglu"
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int | None = None
    interpolation_scale_h: float = 1.0
    interpolation_scale_w: float = 1.0
    interpolation_scale_t: float = 1.0
    sparse1d: bool = False
    sparse_n: int = 2

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch_size", "patch_size_t", "caption_channels"):
            if getattr(self, name) is None:
                raise ValueError(f"OpenSoraT2V_v1_3: {name} is required (the released value is in the presets)")
        if self.patch_size_t != 1:
            raise ValueError(f"patch_size_t={self.patch_size_t}: the v1.3 patch embedding is per frame; only 1 works")
        if self.attention_head_dim % 6:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must be divisible by 6 (RoPE-3D: three "
                             "even parts)")
        if self.cross_attention_dim not in (None, self.hidden_size):
            raise ValueError(f"cross_attention_dim {self.cross_attention_dim} must equal the hidden size "
                             f"{self.hidden_size} (the caption projection outputs that width)")
        if self.only_cross_attention or self.double_self_attention:
            raise ValueError("only_cross_attention / double_self_attention are not supported (no release uses them)")
        if self.sparse_n < 1:
            raise ValueError(f"sparse_n must be >= 1, got {self.sparse_n}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels


@dataclass
class OpenSoraInpaintConfig(OpenSoraT2VConfig):
    """``OpenSoraInpaint_v1_3`` kwargs: the T2V ones plus ``vae_scale_factor_t`` (mask channels)."""

    vae_scale_factor_t: int = 4


_RELEASE_2B_122 = dict(
    num_layers=32, attention_head_dim=96, num_attention_heads=24, patch_size_t=1, patch_size=2,
    caption_channels=4096, cross_attention_dim=2304, activation_fn="gelu-approximate",
    in_channels=8, out_channels=8, attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
    sparse1d=True, sparse_n=4,
)  # factory OpenSoraT2V_v1_3_2B_122 + scripts/text_condition/gpu/train_t2v_v1_3.sh (WF-VAE D8, --sparse1d --sparse_n 4)

T2V_PRESETS: dict[str, OpenSoraT2VConfig] = {"OpenSoraT2V_v1_3-2B/122": OpenSoraT2VConfig(**_RELEASE_2B_122)}
INPAINT_PRESETS: dict[str, OpenSoraInpaintConfig] = {
    "OpenSoraInpaint_v1_3-2B/122": OpenSoraInpaintConfig(**_RELEASE_2B_122, vae_scale_factor_t=4)
}


# ==================================================================================================
# Block
# ==================================================================================================


class BasicTransformerBlock(nn.Module):
    """modules.py ``BasicTransformerBlock``: gated modulated self-attention, ungated cross-attention on the
    raw residual stream (no normalisation), gated modulated feed-forward."""

    def __init__(self, cfg: OpenSoraT2VConfig, sparse: Skiparse | None, device=None, dtype=None,
                 operations=nn) -> None:
        super().__init__()
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)
        heads, head_dim = cfg.num_attention_heads, cfg.attention_head_dim
        self.sparse = sparse
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, device=device, dtype=dtype) / dim**0.5)
        norm = dict(eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine, device=device, dtype=dtype)
        self.norm1 = operations.LayerNorm(dim, **norm)
        self.attn1 = OspAttention(dim, heads, head_dim, dim, cfg.attention_bias, cfg.dropout, **kw)
        self.norm2 = operations.LayerNorm(dim, **norm)
        self.attn2 = OspAttention(dim, heads, head_dim, dim, cfg.attention_bias, cfg.dropout, **kw)
        self.ff = FeedForward(dim, cfg.activation_fn, cfg.dropout, **kw)

    def forward(self, x: torch.Tensor, text: torch.Tensor, t6: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        table = self.scale_shift_table.to(device=x.device, dtype=x.dtype)
        mods = (table[None] + t6.view(t6.shape[0], 6, -1))[:, :, None]  # (B, 6, 1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(1)  # (B, 1, C) each

        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (B, S, C)
        x = residual(x, self.attn1.self_attention(h, ctx, self.sparse), gate_msa, 0.0, self.training)
        x = residual(x, self.attn2.cross_attention(x, text, ctx), None, 0.0, self.training)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)  # (B, S, C)
        return residual(x, self.ff(h), gate_mlp, 0.0, self.training)


# ==================================================================================================
# Model
# ==================================================================================================


class OpenSoraT2V_v1_3(OfficialConstructors, nn.Module):  # noqa: N801 (official class name)
    """Open-Sora-Plan v1.3 text-to-video transformer. ``forward`` takes the official call and returns
    the v prediction (B, C_out, T, H, W) in float32.

    Built with the layers' default init (load a checkpoint). ``gradient_checkpointing = True``
    checkpoints every block while training; ``compute_dtype`` (default: the patch-embedding weight
    dtype) is the dtype inputs are cast to, as the official ``self.dtype``.
    """

    CONFIG: ClassVar[type] = OpenSoraT2VConfig
    PRESETS: ClassVar[dict] = T2V_PRESETS
    OFFICIAL_NAME: ClassVar[str] = "OpenSoraT2V_v1_3"
    IGNORED_KWARGS: ClassVar[dict[str, str]] = IGNORED_KEYS
    # Config fields that decide the architecture (keys, shapes, sparsity and position scales).
    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
        "cross_attention_dim", "attention_bias", "patch_size", "patch_size_t", "activation_fn",
        "norm_elementwise_affine", "caption_channels", "interpolation_scale_h", "interpolation_scale_w",
        "interpolation_scale_t", "sparse1d", "sparse_n",
    )
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ()
    # what loading.dit needs known before it builds the model (the head count and width no shape tells apart)
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = ("num_attention_heads", "attention_head_dim")
    # values no tensor shows, as the release sets them (factory OpenSoraT2V_v1_3_2B_122, train_t2v_v1_3.sh)
    UNREADABLE_DEFAULTS: ClassVar[dict[str, Any]] = {
        "dropout": 0.0, "sparse1d": True, "sparse_n": 4, "activation_fn": "gelu-approximate", "norm_eps": 1e-6,
        "interpolation_scale_h": 1.0, "interpolation_scale_w": 1.0, "interpolation_scale_t": 1.0,
        "upcast_attention": False, "only_cross_attention": False, "double_self_attention": False,
    }

    def __init__(self, config: OpenSoraT2VConfig, *, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        cfg, dim = config, config.hidden_size
        kw = dict(device=device, dtype=dtype, operations=operations)
        self.config = cfg
        self.gradient_checkpointing = False
        self.compute_dtype: torch.dtype | None = None
        self.caption_projection = TextProjection(cfg.caption_channels, dim, **kw)
        self.pos_embed = PatchEmbed2D(cfg.patch_size, cfg.in_channels, dim, **kw)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(cfg, layer_skiparse(i, cfg.num_layers, cfg.sparse1d, cfg.sparse_n), **kw)
            for i in range(cfg.num_layers)
        )
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim, device=device, dtype=dtype) / dim**0.5)
        patch_out = cfg.patch_size_t * cfg.patch_size * cfg.patch_size * cfg.output_channels
        self.proj_out = operations.Linear(dim, patch_out, bias=True, device=device, dtype=dtype)
        self.adaln_single = AdaLayerNormSingle(dim, **kw)

    # ----------------------------------------------------------------------------------------------
    # construction
    # ----------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or self.pos_embed.proj.weight.dtype

    @property
    def in_channels(self) -> int:
        """Channels of the latent being denoised (the official ``config.in_channels``)."""
        return self.config.in_channels

    def attention_pattern(self) -> list[Skiparse | None]:
        """Per layer: None (full 3D attention) or its :class:`~.osp_layers.Skiparse` grouping."""
        return [block.sparse for block in self.transformer_blocks]

    # ----------------------------------------------------------------------------------------------
    # loading: what a state dict tells (see opensora_core.loading.dit)
    # ----------------------------------------------------------------------------------------------

    @classmethod
    def config_from_shapes(cls, keys: Collection[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
        """Official kwargs the keys and shapes tell; ``None`` for the rest (the head split of the hidden width,
        the sparsity, the exact GELU, the position scales: the file's config.json or a preset gives them)."""
        hidden, in_channels, patch, _ = shape("pos_embed.proj.weight")
        out = shape("proj_out.weight")[0] // (patch * patch)
        config: dict[str, Any] = {f.name: None for f in fields(cls.CONFIG)}
        config.update(
            in_channels=in_channels, out_channels=out, patch_size=patch, patch_size_t=1,
            num_layers=1 + max(int(k.split(".")[1]) for k in keys if k.startswith("transformer_blocks.")),
            cross_attention_dim=hidden, caption_channels=shape("caption_projection.linear_1.weight")[1],
            attention_bias="transformer_blocks.0.attn1.to_q.bias" in keys,
            norm_elementwise_affine="transformer_blocks.0.norm1.weight" in keys,
            sample_size_h=None, sample_size_w=None, sample_size_t=None,
        )
        if shape("transformer_blocks.0.ff.net.0.proj.weight")[0] == 2 * FF_MULT * hidden:
            config["activation_fn"] = "geglu"  # a gated projection is twice as wide
        return config

    # ----------------------------------------------------------------------------------------------
    # what a sampling pipeline asks the model (docs/architecture.md, "The model interface")
    # ----------------------------------------------------------------------------------------------

    @property
    def caption_shape(self) -> tuple[int, int]:
        """(L, C): the mT5 tokens of the release (``max_sequence_length`` 512) and the caption channels. The
        transformer itself takes any L; the text encoder pads to this one."""
        return MT5_V1_3.max_length, self.config.caption_channels

    def null_caption(self, batch: int) -> torch.Tensor:
        """There is none: v1.3 guides against an encoded negative prompt (the family's
        ``Defaults.negative_prompt``)."""
        raise ValueError(
            f"{self.OFFICIAL_NAME} has no learned null caption: classifier-free guidance uses an encoded negative "
            "prompt; give one (the release's is the default of generate() and the Text Encode node)"
        )

    def model_args(self, batch: int, height: int, width: int, num_frames: int, fps: float, *,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """No size or fps arguments: positions enter through RoPE only."""
        return {}

    def token_count(self, latent_size: tuple[int, int, int]) -> int:
        """Video tokens per sample for a latent of ``latent_size`` (t, h, w): the 1x2x2 patch grid."""
        t, h, w = latent_size
        p = self.config.patch_size
        return t * math.ceil(h / p) * math.ceil(w / p)

    def sampling_memory_bytes(self, batch_size: int, latent_size: tuple[int, int, int]) -> int:
        """Rough activation memory of one guided step (negative and positive prompt in one batch of
        2 x ``batch_size``): the feed-forward's widest activation next to the block input, attention through
        SDPA without materialising the scores. An estimate from the shapes, not calibrated on a GPU."""
        width = self.config.hidden_size * (1 + FF_MULT)
        element = torch.empty((), dtype=self.dtype).element_size()
        return int(2 * batch_size * self.token_count(latent_size) * width * element * SAMPLING_LIVE_COPIES)

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def forward(self, hidden_states, timestep, encoder_hidden_states, attention_mask=None,
                encoder_attention_mask=None, **kwargs) -> torch.Tensor:
        """Official call (``return_dict`` must be False or absent; other kwargs such as
        ``pooled_projections`` are ignored, as officially).

        hidden_states (B, C_in, T, H, W) latent (H, W divisible by the patch); timestep (B,) or scalar on
        the 0..1000 scale (floats, as the pipelines pass them); encoder_hidden_states (B, 1, L, C_cap)
        or (B, L, C_cap) text embeddings; attention_mask (B, T, H, W) latent mask, 1 = valid (None: all);
        encoder_attention_mask (B, L) or (B, 1, L), 1 = token (None: all).
        Returns (B, C_out, T, H, W) float32.
        """
        if kwargs.pop("return_dict", False):
            raise ValueError("OpenSoraT2V_v1_3.forward returns the output tensor; call it with return_dict=False")
        dtype, B = self.dtype, hidden_states.shape[0]
        grid = self._grid(hidden_states)
        x = self.embed_inputs(hidden_states.to(dtype))  # (B, S, C)
        t6, embedded = self.adaln_single(scalar_per_sample(timestep, B, "timestep", x), dtype)  # (B, 6C), (B, C)
        text = self._project_text(encoder_hidden_states, B, dtype)  # (B, L, C)
        ctx = AttentionContext(
            grid=grid,
            rope=rope_3d_tables(grid, self.config.attention_head_dim, self._rope_scales(), x.device, dtype),
            self_bias=latent_mask_bias(attention_mask, B, grid, self._patch(), dtype, x.device),
            text_bias=text_mask_bias(encoder_attention_mask, B, text.shape[1], dtype, x.device),
        )
        for block in self.transformer_blocks:
            x = run_block(block, self.gradient_checkpointing, x, text, t6, ctx)
        return self._output(x, embedded, grid).float()

    def embed_inputs(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> patch tokens (B, S, C)."""
        self._check_channels(hidden_states, self.config.in_channels)
        return self.pos_embed(hidden_states)

    def _project_text(self, y: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        y = y[:, None] if y.dim() == 3 else y
        if y.dim() != 4 or y.shape[1] != 1 or y.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states must be [B, 1, L, C] with B = {batch}, got {tuple(y.shape)}")
        return self.caption_projection(y.to(dtype))[:, 0]  # (B, L, C)

    def _output(self, x: torch.Tensor, embedded: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        table = self.scale_shift_table.to(device=x.device, dtype=x.dtype)
        shift, scale = (table[None] + embedded[:, None]).chunk(2, dim=1)  # (B, 1, C) each
        x = self.proj_out(modulate(layer_norm(x), shift, scale))  # norm_out (eps 1e-6) -> (B, S, pt*p*p*C_out)
        return self._unpatchify(x, grid)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, S, pt*p*p*C) with outputs ordered (pt, p, p, C) -> (B, C, T*pt, H*p, W*p)."""
        (T, H, W), p, pt, C = grid, self.config.patch_size, self.config.patch_size_t, self.config.output_channels
        x = x.reshape(x.shape[0], T, H, W, pt, p, p, C)
        x = torch.einsum("nthwopqc->nctohpwq", x)  # (B, C, T, pt, H, p, W, p)
        return x.reshape(x.shape[0], C, T * pt, H * p, W * p)

    # ----------------------------------------------------------------------------------------------
    # helpers
    # ----------------------------------------------------------------------------------------------

    def _patch(self) -> tuple[int, int, int]:
        return (self.config.patch_size_t, self.config.patch_size, self.config.patch_size)

    def _rope_scales(self) -> tuple[float, float, float]:
        c = self.config
        return (c.interpolation_scale_t, c.interpolation_scale_h, c.interpolation_scale_w)

    def _grid(self, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        if hidden_states.dim() != 5:
            raise ValueError(f"hidden_states must be a latent [B, C, T, H, W], got {tuple(hidden_states.shape)}")
        T, H, W = hidden_states.shape[-3:]
        p = self.config.patch_size
        if H % p or W % p:
            fixed = [f"{n - n % p} or {n - n % p + p}" for n in (H, W) if n % p]
            raise ValueError(
                f"latent height/width {H}x{W} must be divisible by the patch size {p} (nearest valid: "
                f"{', '.join(fixed)}); the pixel size must be a multiple of {8 * p}"
            )
        return (T, H // p, W // p)

    @staticmethod
    def _check_channels(hidden_states: torch.Tensor, expected: int) -> None:
        if hidden_states.shape[1] != expected:
            raise ValueError(f"hidden_states has {hidden_states.shape[1]} channels, the model expects {expected}")


class OpenSoraInpaint_v1_3(OpenSoraT2V_v1_3):  # noqa: N801 (official class name)
    """The v1.3 image-to-video / inpainting transformer (modeling_inpaint.py; ``--model_type inpaint`` or
    ``i2v`` loads it).

    Input channels: [noisy latent (C_in) | masked latent (C_in) | latent mask (vae_scale_factor_t)]. Each
    part has its own per-frame patch embedding; the masked-latent and mask tokens pass a bias-free Linear
    (zero-initialised by the official constructor); the three token sets are summed. Everything after the
    input is the T2V model; the output is the v prediction for the noisy latent (C_out channels).
    """

    CONFIG: ClassVar[type] = OpenSoraInpaintConfig
    PRESETS: ClassVar[dict] = INPAINT_PRESETS
    OFFICIAL_NAME: ClassVar[str] = "OpenSoraInpaint_v1_3"
    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (*OpenSoraT2V_v1_3.ARCHITECTURE_FIELDS, "vae_scale_factor_t")

    def __init__(self, config: OpenSoraInpaintConfig, *, device=None, dtype=None, operations=nn) -> None:
        super().__init__(config, device=device, dtype=dtype, operations=operations)
        cfg, dim = config, config.hidden_size
        kw = dict(device=device, dtype=dtype, operations=operations)
        self.pos_embed_masked_hidden_states = nn.ModuleList(
            [PatchEmbed2D(cfg.patch_size, cfg.in_channels, dim, **kw),
             operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)]
        )
        self.pos_embed_mask = nn.ModuleList(
            [PatchEmbed2D(cfg.patch_size, cfg.vae_scale_factor_t, dim, **kw),
             operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)]
        )

    @classmethod
    def config_from_shapes(cls, keys: Collection[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
        """The T2V kwargs plus ``vae_scale_factor_t`` (the mask channels of ``pos_embed_mask``)."""
        return {**super().config_from_shapes(keys, shape), "vae_scale_factor_t": shape("pos_embed_mask.0.proj.weight")[1]}

    @property
    def condition_channels(self) -> int:
        """Channels appended after the noisy latent: masked latent + mask."""
        return self.config.in_channels + self.config.vae_scale_factor_t

    def embed_inputs(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, 2*C_in + vae_scale_factor_t, T, H, W) -> summed tokens (B, S, C)."""
        c = self.config.in_channels
        self._check_channels(hidden_states, c + self.condition_channels)
        tokens = self.pos_embed(hidden_states[:, :c])  # (B, S, C)
        embed_masked, embed_mask = self.pos_embed_masked_hidden_states, self.pos_embed_mask
        masked = embed_masked[1](embed_masked[0](hidden_states[:, c : 2 * c]))  # (B, S, C)
        mask = embed_mask[1](embed_mask[0](hidden_states[:, 2 * c :]))  # (B, S, C)
        return tokens + masked + mask

    def zero_condition_projections(self) -> None:
        """The official init of the two condition Linears (zeros: a fresh model ignores the condition)."""
        with torch.no_grad():
            self.pos_embed_masked_hidden_states[1].weight.zero_()
            self.pos_embed_mask[1].weight.zero_()


__all__ = [
    "INPAINT_PRESETS",
    "T2V_PRESETS",
    "BasicTransformerBlock",
    "OpenSoraInpaintConfig",
    "OpenSoraInpaint_v1_3",
    "OpenSoraT2VConfig",
    "OpenSoraT2V_v1_3",
]
