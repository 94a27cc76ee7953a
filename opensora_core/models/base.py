"""What STDiT, STDiT2 and STDiT3 share: construction from official kwargs and presets, the official
kwargs a state dict's shapes tell, the compute dtype, and the caption path."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import torch
from torch import nn

from ..model_args import multi_resolution_args
from ..official_config import OfficialConstructors
from ..text.caption import null_caption
from .captions import Captions, caption_mask, packed_captions
from .inplace import qk_statistics_bytes

# Token-wide tensors alive at a block's widest moment besides the MLP hidden layer (residual stream, its
# modulated norm, the MLP output), and the attention's own (q, k, v, output, projection: 4 beyond the 3).
SAMPLING_LIVE_WIDTHS = 3
ATTENTION_WIDTHS = 4


class STDiTBase(OfficialConstructors, nn.Module):
    """Base of the three model classes. Subclasses set ``CONFIG``, ``PRESETS`` and ``OFFICIAL_NAME``
    and build ``x_embedder`` and ``y_embedder``."""

    CONFIG: ClassVar[type]
    PRESETS: ClassVar[dict[str, Any]]
    OFFICIAL_NAME: ClassVar[str]
    # Config fields that decide the architecture (keys and shapes, table sizes); flags and dropout rates do not.
    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (
        "input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
        "pred_sigma", "caption_channels", "model_max_length",
    )
    BLOCKS: ClassVar[str] = "blocks"  # state-dict prefix of the (spatial) blocks
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ()  # entries a released file may omit (tables the model computes)
    # Config values no tensor shape shows, as every released config sets them (used when neither the file's
    # config, the caller nor a matching preset gives them).
    UNREADABLE_DEFAULTS: ClassVar[dict[str, Any]] = {"class_dropout_prob": 0.1, "drop_path": 0.0}
    SIZE_ARGS: ClassVar[bool] = True  # forward takes height/width/num_frames/ar/fps (model_args)
    CAPTION_TABLE: ClassVar[str] = "y_embedder.y_embedding"  # the null caption (L, C): its shape is the caption's

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = 2 * config.in_channels if config.pred_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.gradient_checkpointing = False  # checkpoint every block while training when True
        self.compute_dtype: torch.dtype | None = None  # None: the patch-embedding weight dtype

    @classmethod
    def config_from_shapes(cls, keys: Collection[str], shape: Callable[[str], tuple[int, ...]]) -> dict[str, Any]:
        """Official kwargs that the state dict's keys and shapes tell; ``None`` for values they cannot
        (the head count without q/k norm or RoPE; subclasses add their own)."""
        hidden, in_channels, *patch = shape("x_embedder.proj.weight")
        caption_len, caption_channels = shape("y_embedder.y_embedding")
        out_channels = shape("final_layer.linear.weight")[0] // math.prod(patch)
        return {
            "in_channels": in_channels,
            "patch_size": list(patch),
            "hidden_size": hidden,
            "depth": 1 + max(int(k.split(".")[1]) for k in keys if k.startswith(cls.BLOCKS + ".")),
            "num_heads": _heads_from_shapes(keys, shape, cls.BLOCKS, hidden),
            "mlp_ratio": shape(f"{cls.BLOCKS}.0.mlp.fc1.weight")[0] / hidden,
            "pred_sigma": out_channels == 2 * in_channels,
            "caption_channels": caption_channels,
            "model_max_length": caption_len,
            "class_dropout_prob": None,  # training values no shape shows
            "drop_path": None,
        }

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to (``compute_dtype`` or the patch-embedding weight dtype)."""
        return self.compute_dtype or self.x_embedder.proj.weight.dtype

    # ----------------------------------------------------------------------------------------------
    # What a sampling pipeline asks the model
    # ----------------------------------------------------------------------------------------------

    @property
    def caption_shape(self) -> tuple[int, int]:
        """(L, C): caption tokens and channels the model takes (the shape of its learned null caption)."""
        length, channels = self.y_embedder.y_embedding.shape
        return int(length), int(channels)

    def null_caption(self, batch: int) -> torch.Tensor:
        """The unconditional caption (B, 1, L, C) for classifier-free guidance."""
        return null_caption(self.y_embedder.y_embedding, batch)

    def model_args(self, batch: int, height: int, width: int, num_frames: int, fps: float, *,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The extra forward arguments for a (height, width, num_frames) pixel clip at ``fps`` ({} for v1.0)."""
        if not self.SIZE_ARGS:
            return {}
        return multi_resolution_args(batch, (height, width), num_frames, fps, dtype=self.dtype, device=device)

    def token_count(self, latent_size: tuple[int, int, int]) -> int:
        """Video tokens per sample for a latent of ``latent_size`` (t, h, w): the patch grid, padded up."""
        return math.prod(self.x_embedder.grid(latent_size))

    def forward_memory_bytes(self, samples: int, latent_size: tuple[int, int, int], *,
                             backend_workspace: bool = True) -> int:
        """Peak activation memory of one no-grad forward over ``samples`` latents of ``latent_size`` (t, h, w),
        in bytes (ComfyUI's ``memory_required`` for the native MODEL).

        Without autograd the blocks update the residual stream in place, so the widest moments hold
        ``3 + max(mlp_ratio, 4)`` token-wide tensors: the stream, its modulated norm, the MLP hidden layer and
        its output; or the q, k, v, attention output and projection (SDPA keeps no score matrix). Beside them:
        the caption features cast to the model dtype (held through the forward); the output comes after the
        blocks have freed theirs (with the sampler's guided batch: the caption batch it concatenates per step).
        ``backend_workspace`` adds what kernels allocate inside one op: with q/k RMS norm in a reduced-precision
        dtype, the float32 copy the statistics read (:func:`.inplace.qk_statistics_bytes`). Calibrated for
        STDiT3 against measured peaks of live tensors (``tests/test_memory_estimate.py``) and the process's
        resident peak (``benchmarks/memory_calibration.py``).
        """
        tokens = samples * self.token_count(latent_size)
        element = torch.empty((), dtype=self.dtype).element_size()
        widths = SAMPLING_LIVE_WIDTHS + max(self.config.mlp_ratio, ATTENTION_WIDTHS)
        activations = tokens * self.config.hidden_size * widths * element
        captions = samples * math.prod(self.caption_shape) * element
        statistics = qk_statistics_bytes(2 * tokens * self.config.hidden_size, self.dtype)
        kernels = statistics if backend_workspace and getattr(self.config, "qk_norm", False) else 0
        return int(activations + captions + kernels)

    def sampling_memory_bytes(self, batch_size: int, latent_size: tuple[int, int, int], *,
                              backend_workspace: bool = True) -> int:
        """Peak activation memory of one guided denoising step in bytes, for a memory manager to make room: the
        prompt and null-caption passes run as one batch of 2 x ``batch_size`` (:meth:`forward_memory_bytes`)."""
        return self.forward_memory_bytes(2 * batch_size, latent_size, backend_workspace=backend_workspace)

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


def _heads_from_shapes(keys: Collection[str], shape, blocks: str, hidden: int) -> int | None:
    """Heads from the q/k-norm width or the RoPE width (both are one head wide); None when neither is stored."""
    if f"{blocks}.0.attn.q_norm.weight" in keys:
        return hidden // shape(f"{blocks}.0.attn.q_norm.weight")[0]
    if "rope.freqs" in keys:
        return hidden // (2 * shape("rope.freqs")[0])
    return None
