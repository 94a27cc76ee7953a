"""MMDiT: the Open-Sora 2.0 video diffusion transformer (``Open_Sora_v2.safetensors``, 11B).

Follows opensora/models/mmdit/model.py of hpcaitech/Open-Sora (main, the 2.0 code): a Flux-style
multimodal DiT with 19 double-stream and 38 single-stream blocks. The model sees packed tokens: the
latent [B, 16, T, H, W] is cut into 2x2 patches of 64 channels (:func:`pack`), each token has a
(frame, row, column) position id (:func:`position_ids`) for a 3-axis RoPE, the T5 tokens have id 0, and
the pooled CLIP vector joins the timestep embedding. ``cond`` (the packed condition mask + reference latent,
68 channels) is added through ``cond_in`` for image/video conditioning; the released model always takes it.

Parameter names equal the release, so the checkpoint loads with ``strict=True``. Build from the official
kwargs with ``build_model("MMDiTModel", config)``; works under ``with torch.device("meta")``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn

from ..official_config import OfficialConstructors
from ..text.t5 import T5_V2_0
from .block_swap import in_flight_bytes
from .fp8 import Fp8Linear
from .inplace import add
from .layers import run_block
from .mmdit_activations import MemorySetting, activation_bytes, input_bytes
from .mmdit_layers import (
    TIMESTEP_DIM,
    DoubleStreamBlock,
    EmbedND,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    timestep_embedding,
)

# Entries of the official config dicts that describe files, not the model (configs/diffusion/inference/*.py).
# keys of the official model dict that name the file, not the model
FILE_KEYS = {
    "type": "the registry name (flux)", "from_pretrained": "the weights file", "cache_dir": "a download folder",
}


# ==================================================================================================
# Config
# ==================================================================================================


@dataclass
class MMDiTConfig:
    """Constructor kwargs of the official ``MMDiTConfig`` (same names; the same fields are required).

    ``use_liger_rope`` picks the RoPE variant: True (released) = rotate-half pairs (x_j, x_{j+D/2}),
    False = Flux's interleaved pairs (x_2j, x_2j+1); the kernels themselves are not needed.
    ``grad_ckpt_settings`` only affects training (activation checkpointing).
    """

    in_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: tuple[int, ...]
    theta: int
    qkv_bias: bool
    guidance_embed: bool
    cond_embed: bool = False
    fused_qkv: bool = True
    grad_ckpt_settings: tuple[int, int] | None = None
    use_liger_rope: bool = False
    patch_size: int = 2

    def __post_init__(self) -> None:
        self.axes_dim = tuple(int(d) for d in self.axes_dim)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"MMDiT: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"MMDiT: axes_dim {list(self.axes_dim)} must sum to the head dim {self.head_dim}")
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"MMDiT: every axes_dim entry must be even, got {list(self.axes_dim)}")
        if self.patch_size < 1:
            raise ValueError(f"MMDiT: patch_size must be >= 1, got {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_channels(self) -> int:
        """Channels of the unpacked latent (16 for the Hunyuan VAE): in_channels / patch_size^2."""
        return self.in_channels // self.patch_size**2

    @property
    def cond_channels(self) -> int:
        """Channels of the packed condition: the mask (patch_size^2) then the reference latent (in_channels)."""
        return self.in_channels + self.patch_size**2


_RELEASED = dict(
    in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
    depth_single_blocks=38, axes_dim=(16, 56, 56), theta=10_000, qkv_bias=True,
)

# configs/diffusion/inference/256px.py (768px.py inherits it: one checkpoint for both resolutions);
# high_compression.py (Video DC-AE latents, patch 1); plugins/t2i2v.py (FLUX.1-dev for the first frame).
PRESETS: dict[str, MMDiTConfig] = {
    "OpenSora-v2-MMDiT": MMDiTConfig(**_RELEASED, guidance_embed=False, cond_embed=True, fused_qkv=False,
                                     use_liger_rope=True),
    "OpenSora-v2-MMDiT-DC-AE": MMDiTConfig(**{**_RELEASED, "in_channels": 128}, guidance_embed=False, cond_embed=True,
                                           fused_qkv=False, use_liger_rope=True, patch_size=1),
    "FLUX.1-dev": MMDiTConfig(**_RELEASED, guidance_embed=True, cond_embed=False),
}


# ==================================================================================================
# Token layout: packing and position ids (opensora/utils/sampling.py)
# ==================================================================================================


def pack(x: torch.Tensor, patch_size: int = 2) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, T*(H/p)*(W/p), C*p*p]: tokens frame-major then row then column, channels
    ordered (channel, row-in-patch, column-in-patch)."""
    B, C, T, H, W = x.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"latent height/width {H}x{W} must be multiples of the patch size {patch_size}")
    return rearrange(x, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=patch_size, pw=patch_size)


def unpack(x: torch.Tensor, frames: int, height: int, width: int, patch_size: int = 2) -> torch.Tensor:
    """Inverse of :func:`pack`: [B, N, C*p*p] -> [B, C, frames, height, width] (latent sizes)."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"latent height/width {height}x{width} must be multiples of the patch size {patch_size}")
    h, w = height // patch_size, width // patch_size
    if x.shape[1] != frames * h * w:
        raise ValueError(f"{x.shape[1]} tokens cannot be unpacked to {frames} frames of {h}x{w} patches")
    return rearrange(x, "b (t h w) (c ph pw) -> b c t (h ph) (w pw)", t=frames, h=h, w=w, ph=patch_size, pw=patch_size)


def position_ids(batch: int, frames: int, height: int, width: int, patch_size: int = 2, *, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """Image-token ids [B, T*(H/p)*(W/p), 3] = (frame, patch row, patch column) as floats (``prepare_ids``).

    ``height``/``width`` are latent sizes; like the official code, a size that is not a multiple of the
    patch is floored here (and rejected by :func:`pack`).
    """
    grid = torch.meshgrid(
        torch.arange(frames), torch.arange(height // patch_size), torch.arange(width // patch_size), indexing="ij"
    )
    ids = torch.stack(grid, dim=-1).reshape(1, -1, 3)  # (1, N, 3)
    return ids.expand(batch, -1, -1).to(device=device, dtype=dtype)


def text_ids(batch: int, tokens: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Text-token ids: all zero [B, L_txt, 3] (the T5 output already encodes positions)."""
    return torch.zeros(batch, tokens, 3, device=device, dtype=dtype)


def prepare_inputs(z: torch.Tensor, txt: torch.Tensor, y_vec: torch.Tensor,
                   patch_size: int = 2) -> dict[str, torch.Tensor]:
    """Model inputs for a latent z [B, C, T, H, W] and its T5 states txt [B | 1, L, C_txt] and pooled CLIP
    y_vec [B | 1, C_vec] (``prepare_ids``): packed ``img``, ``img_ids``, ``txt``/``y_vec`` (one row repeated
    to B), zero ``txt_ids``; ids and text cast to z's dtype and device."""
    B, _, T, H, W = z.shape
    txt = _rows(txt, B, "txt")
    y_vec = _rows(y_vec, B, "y_vec")
    return {
        "img": pack(z, patch_size),
        "img_ids": position_ids(B, T, H, W, patch_size, device=z.device, dtype=z.dtype),
        "txt": txt.to(z.device, z.dtype),
        "txt_ids": text_ids(B, txt.shape[1], device=z.device, dtype=z.dtype),
        "y_vec": y_vec.to(z.device, z.dtype),
    }


def _rows(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if value.shape[0] == 1 and batch > 1:
        return value.expand(batch, *value.shape[1:])
    if value.shape[0] != batch:
        raise ValueError(f"{name} has {value.shape[0]} rows for a latent batch of {batch} (give 1 or {batch})")
    return value


# ==================================================================================================
# Model
# ==================================================================================================


class MMDiTModel(OfficialConstructors, nn.Module):
    """Open-Sora 2.0 MMDiT. ``forward`` takes the official call and returns [B, N, in_channels] velocities
    (pointing from data to noise) in the compute dtype.

    ``compute_dtype`` (default: the ``img_in`` weight dtype) is the dtype inputs are cast to; set it when the
    Linear weights are stored in another dtype (fp8 operations). ``gradient_checkpointing = True``
    checkpoints every block while training.
    """

    CONFIG: ClassVar[type] = MMDiTConfig
    PRESETS: ClassVar[dict[str, MMDiTConfig]] = PRESETS
    OFFICIAL_NAME: ClassVar[str] = "MMDiTModel"
    IGNORED_KWARGS: ClassVar[dict[str, str]] = FILE_KEYS
    # Config fields that decide the architecture (all but the training-only grad_ckpt_settings).
    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (
        "in_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mlp_ratio", "num_heads", "depth",
        "depth_single_blocks", "axes_dim", "theta", "qkv_bias", "guidance_embed", "cond_embed", "fused_qkv",
        "use_liger_rope", "patch_size",
    )
    # What the loader needs (opensora_core.loading.dit): every entry is in the released file, and the values no
    # tensor shows come from the presets or the file's saved config.
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ()
    UNREADABLE_DEFAULTS: ClassVar[dict[str, Any]] = {}
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = ("axes_dim", "theta", "use_liger_rope")

    def __init__(self, config: MMDiTConfig, *, device=None, dtype=None, operations=nn) -> None:
        super().__init__()
        cfg = self.config = config
        dim, kw = cfg.hidden_size, dict(device=device, dtype=dtype, operations=operations)
        self.in_channels = self.out_channels = cfg.in_channels
        self.patch_size = cfg.patch_size
        self.gradient_checkpointing = False
        self.compute_dtype: torch.dtype | None = None
        # the three guidance passes as one call of 3B rows (official) or three calls of B rows (a third of the
        # activation memory, the same result up to rounding); read by the sampler through model_args
        self.batch_passes = True

        self.pe_embedder = EmbedND(cfg.head_dim, cfg.theta, cfg.axes_dim, rotate_half=cfg.use_liger_rope)
        self.img_in = operations.Linear(cfg.in_channels, dim, bias=True, device=device, dtype=dtype)
        self.time_in = MLPEmbedder(TIMESTEP_DIM, dim, **kw)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, dim, **kw)
        self.guidance_in = MLPEmbedder(TIMESTEP_DIM, dim, **kw) if cfg.guidance_embed else nn.Identity()
        self.cond_in = (
            operations.Linear(cfg.cond_channels, dim, bias=True, device=device, dtype=dtype)
            if cfg.cond_embed else nn.Identity()
        )
        self.txt_in = operations.Linear(cfg.context_in_dim, dim, bias=True, device=device, dtype=dtype)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.fused_qkv, **kw)
            for _ in range(cfg.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(dim, cfg.num_heads, cfg.mlp_ratio, cfg.fused_qkv, **kw)
            for _ in range(cfg.depth_single_blocks)
        )
        self.final_layer = LastLayer(dim, cfg.in_channels, **kw)  # LastLayer(hidden, patch 1, in_channels)

    @classmethod
    def config_from_kwargs(cls, config: Mapping[str, Any]) -> MMDiTConfig:
        """``MMDiTConfig`` from the official model dict (``model=`` of configs/diffusion/inference/256px.py;
        ``type``/``from_pretrained``/``cache_dir`` ignored); every field without a default must be given."""
        required = {f.name for f in dataclasses.fields(MMDiTConfig) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(config))
        if missing:
            raise ValueError(f"MMDiTModel: config lacks {', '.join(missing)} (every official model dict sets them)")
        if config.get("type", "flux") != "flux":
            raise ValueError(f"MMDiTModel: config type {config['type']!r} is not the MMDiT ('flux')")
        return super().config_from_kwargs(config)

    @classmethod
    def config_from_shapes(cls, keys: Collection[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
        """Official kwargs a state dict's keys and shapes tell; ``None`` for the RoPE settings (``axes_dim``,
        ``theta``, ``use_liger_rope``), which no tensor shows (the released preset or a saved config gives them)."""
        hidden, in_channels = shape("img_in.weight")
        norm = next(k for k in ("double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.0.norm.query_norm.scale")
                    if k in keys)
        fused = "double_blocks.0.img_attn.qkv.weight" in keys or "single_blocks.0.linear1.weight" in keys
        cond = shape("cond_in.weight")[1] if "cond_in.weight" in keys else None
        return {
            "in_channels": in_channels,
            "vec_in_dim": shape("vector_in.in_layer.weight")[1],
            "context_in_dim": shape("txt_in.weight")[1],
            "hidden_size": hidden,
            "mlp_ratio": _mlp_ratio(keys, shape, hidden),
            "num_heads": hidden // shape(norm)[0],
            "depth": _count(keys, "double_blocks."),
            "depth_single_blocks": _count(keys, "single_blocks."),
            "axes_dim": None,
            "theta": None,
            "qkv_bias": any(k.endswith(("img_attn.q_proj.bias", "img_attn.qkv.bias")) for k in keys),
            "guidance_embed": "guidance_in.in_layer.weight" in keys,
            "cond_embed": cond is not None,
            "fused_qkv": fused,
            "use_liger_rope": None,
            "patch_size": None if cond is None else math.isqrt(cond - in_channels),
        }

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: ``compute_dtype``, else the Linear layers' own (an fp8 Linear keeps its compute dtype
        apart from its storage), else the ``img_in`` weight dtype."""
        return self.compute_dtype or getattr(self.img_in, "compute_dtype", None) or self.img_in.weight.dtype

    @property
    def blocks(self) -> list[nn.Module]:
        """Every transformer block in execution order (double, then single)."""
        return [*self.double_blocks, *self.single_blocks]

    # ----------------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------------

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond=None, guidance=None, **kwargs):
        """Official call. img [B, N, in_channels] packed latent; img_ids [B, N, 3]; txt [B, L, context_in_dim]
        (T5); txt_ids [B, L, 3]; timesteps [B] in [0, 1]; y_vec [B, vec_in_dim] (pooled CLIP); cond
        [B, N, in_channels + p^2] (required with cond_embed); guidance [B] (only with guidance_embed).
        Other keyword arguments are ignored, as in the official forward. Returns [B, N, in_channels]."""
        img, txt, vec, pe = self._block_inputs(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        for block in self.double_blocks:
            img, txt = run_block(block, self.gradient_checkpointing, img, txt, vec, pe, self.pe_embedder)
        n_txt = txt.shape[1]
        x = torch.cat((txt, img), dim=1)  # (B, L_txt + N, C)
        del img, txt
        for block in self.single_blocks:
            x = run_block(block, self.gradient_checkpointing, x, vec, pe, self.pe_embedder)
        return self.final_layer(x[:, n_txt:], vec)  # (B, N, in_channels)

    def _block_inputs(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance):
        """Projected image/text tokens (B, N, C) / (B, L, C), the vector (B, C) and the RoPE tables."""
        if img.dim() != 3 or txt.dim() != 3:
            raise ValueError(
                f"img and txt must be [B, tokens, channels], got {tuple(img.shape)} and {tuple(txt.shape)}"
            )
        dtype = self.dtype
        x = self.img_in(img.to(dtype))  # (B, N, C)
        if self.config.cond_embed:
            if cond is None:
                raise ValueError("this MMDiT has cond_embed: pass cond (zeros [B, N, in_channels + p^2] for t2v)")
            x = add(x, self.cond_in(cond.to(dtype)))
        vec = self.time_in(timestep_embedding(_per_sample(timesteps, x, "timesteps").to(dtype)))  # (B, C)
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this MMDiT is guidance-distilled (guidance_embed): pass guidance [B]")
            vec = vec + self.guidance_in(timestep_embedding(_per_sample(guidance, x, "guidance").to(dtype)))
        vec = vec + self.vector_in(y_vec.to(dtype))
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1).to(x.device))  # (B, L_txt + N, D) x 2
        return x, self.txt_in(txt.to(dtype)), vec, pe

    # ----------------------------------------------------------------------------------------------
    # What a sampling pipeline asks the model (opensora_core.pipeline)
    # ----------------------------------------------------------------------------------------------

    @property
    def caption_shape(self) -> tuple[int | None, int]:
        """(tokens, channels) of the T5 states the model takes: any number of tokens (no mask, no learned
        caption table; the release encodes 512), ``context_in_dim`` channels."""
        return None, self.config.context_in_dim

    def null_caption(self, batch: int) -> torch.Tensor:
        raise ValueError("the Open-Sora 2.0 MMDiT has no learned null caption: it guides against an encoded "
                         "negative prompt (official: the empty prompt), which the caption must carry")

    def model_args(self, batch: int, height: int, width: int, num_frames: int, fps: float, *,
                   device: torch.device | str | None = None) -> dict[str, Any]:
        """What the three-pass denoiser reads besides the text: the patch size and :attr:`batch_passes` (the
        model takes no size or fps arguments; the frame rate is part of the prompt)."""
        return {"patch_size": self.patch_size, "batch_passes": self.batch_passes}

    def token_count(self, latent_size: tuple[int, int, int]) -> int:
        """Image tokens per sample for a latent (t, h, w): one per patch."""
        t, h, w = latent_size
        return t * (h // self.patch_size) * (w // self.patch_size)

    def forward_memory_bytes(self, samples: int, latent_size: tuple[int, int, int]) -> int:
        """Working memory of one forward over ``samples`` rows of a latent (t, h, w), from shapes
        (:mod:`.mmdit_activations`): activations and model inputs with the released 512 text tokens, no sampler
        latents (ComfyUI's ``memory_required`` for the native MODEL, whose sampler holds its own)."""
        setting = MemorySetting(dtype=self.dtype, fp8=isinstance(self.img_in, Fp8Linear))
        tokens, text = self.token_count(latent_size), T5_V2_0.max_length
        return activation_bytes(self.config, samples, tokens, text, setting) + input_bytes(
            self.config, samples, tokens, text, 0, setting)

    def sampling_memory_bytes(self, batch_size: int, latent_size: tuple[int, int, int]) -> int:
        """Working memory of one sampling step on the compute device, from shapes (:mod:`.mmdit_activations`):
        the activations of one model call (3 x batch rows, or batch rows without :attr:`batch_passes`) with the
        released 512 text tokens, the model inputs and the sampler's latents, and with block swap the swapped
        block in flight. Weights kept on the device are not included."""
        setting = MemorySetting(dtype=self.dtype, fp8=isinstance(self.img_in, Fp8Linear),
                                batch_passes=self.batch_passes)
        rows = batch_size * (setting.passes if self.batch_passes else 1)
        tokens, text = self.token_count(latent_size), T5_V2_0.max_length
        working = activation_bytes(self.config, rows, tokens, text, setting)
        return working + input_bytes(self.config, rows, tokens, text, batch_size, setting) + in_flight_bytes(self)

    # ----------------------------------------------------------------------------------------------
    # initialisation
    # ----------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Official init: the layers' defaults, with ``cond_in`` zeroed (the condition starts switched off)."""
        if self.config.cond_embed:
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)


def _count(keys: Collection[str], prefix: str) -> int:
    """Numbered children under ``prefix`` (max index + 1; 0 when there is none)."""
    indices = [int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)]
    return max(indices) + 1 if indices else 0


def _mlp_ratio(keys: Collection[str], shape, hidden: int) -> float:
    if "double_blocks.0.img_mlp.0.weight" in keys:
        return shape("double_blocks.0.img_mlp.0.weight")[0] / hidden
    widths = shape("single_blocks.0.v_mlp.weight" if "single_blocks.0.v_mlp.weight" in keys
                   else "single_blocks.0.linear1.weight")[0]
    fused = "single_blocks.0.linear1.weight" in keys
    return (widths - (3 if fused else 1) * hidden) / hidden


def _per_sample(value, like: torch.Tensor, name: str) -> torch.Tensor:
    """A (B,) tensor on ``like``'s device from a tensor/float (one value broadcast to the batch)."""
    value = torch.as_tensor(value, device=like.device).reshape(-1)
    if value.numel() == 1:
        value = value.expand(like.shape[0])
    if value.numel() != like.shape[0]:
        raise ValueError(f"{name} must have one value per sample ({like.shape[0]}), got {value.numel()}")
    return value


def parameter_count(config: MMDiTConfig) -> int:
    """Parameters of a model with ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = MMDiTModel(config)
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MMDiTConfig",
    "MMDiTModel",
    "PRESETS",
    "pack",
    "parameter_count",
    "position_ids",
    "prepare_inputs",
    "text_ids",
    "unpack",
]
