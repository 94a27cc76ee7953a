"""Conditioning inputs of the diffusion model and classifier-free guidance around it.

The STDiT models share the official forward signature
``model(x, timestep, y, mask=None, x_mask=None, **model_args)`` and return
(B, 2C, T, H, W): C prediction channels (velocity for v1.2, noise for v1.1) and
C variance channels. :class:`GuidedModel` turns such a model into the
``(x, t, x_mask) -> output`` callable the samplers use. The caption comes from
:mod:`opensora_core.text.caption` and the size/fps arguments from
:func:`opensora_core.model_args.multi_resolution_args`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch


class CaptionLike(Protocol):
    """Encoded prompts (``opensora_core.text.caption.Caption`` or anything with these fields).

    y:    (B, 1, L, C) text embeddings
    mask: (B, L) token mask, 1 = real token (or None: every token is used)
    """

    y: torch.Tensor
    mask: torch.Tensor | None


def _check_caption(caption: CaptionLike, y_null: torch.Tensor) -> None:
    y, mask = caption.y, caption.mask
    if y.dim() != 4 or y.shape[1] != 1:
        raise ValueError(f"caption y must be (B, 1, L, C), got {tuple(y.shape)}")
    if tuple(y_null.shape) != tuple(y.shape):
        raise ValueError(
            f"null caption {tuple(y_null.shape)} must match the caption {tuple(y.shape)}: "
            "use the model's null_caption(B) (its learned y_embedding repeated to (B, 1, L, C))"
        )
    if mask is not None and tuple(mask.shape) != (y.shape[0], y.shape[2]):
        raise ValueError(f"caption mask must be (B, L) = {(y.shape[0], y.shape[2])}, got {tuple(mask.shape)}")


class GuidedModel:
    """Classifier-free guidance: one model call on the doubled batch per step.

    The model sees x = [x; x], timestep = [t; t], y = [caption.y; y_null] (``y_null`` = the
    model's ``y_embedder.y_embedding`` repeated to (B, 1, L, C)), the prompt token mask for
    both halves (or ``null_mask`` for the second half when ``y_null`` is an encoded negative
    prompt) and ``model_args``. On the first ``channels`` output channels (default:
    the C prediction channels) the result is ``uncond + scale * (cond - uncond)``;
    the remaining channels come unguided from the prompt half. v1.2 RFLOW guides all
    velocity channels; v1.1 inference guides ``cfg_channel = 3`` of the 4 noise channels.
    Follows opensora/schedulers/rf/__init__.py (RFLOW.sample) and
    opensora/schedulers/iddpm/__init__.py (forward_with_cfg).
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        caption: CaptionLike,
        y_null: torch.Tensor,
        model_args: Mapping[str, torch.Tensor] | None = None,
        *,
        scale: float,
        channels: int | None = None,
        null_mask: torch.Tensor | None = None,
    ):
        _check_caption(caption, y_null)
        batch_tokens = (y_null.shape[0], y_null.shape[2])  # (B, L)
        if null_mask is not None and tuple(null_mask.shape) != batch_tokens:
            raise ValueError(f"null_mask must be (B, L) = {batch_tokens}, got {tuple(null_mask.shape)}")
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be >= 1 (or None for all prediction channels), got {channels}")
        self.model = model
        self.caption = caption
        self.y_null = y_null
        self.model_args = dict(model_args or {})
        self.scale = float(scale)
        self.channels = channels
        self.null_mask = null_mask

    def __call__(self, x: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        cap = self.caption
        if x.shape[0] != cap.y.shape[0]:
            raise ValueError(f"latent batch {x.shape[0]} does not match the caption batch {cap.y.shape[0]}")
        y = torch.cat([cap.y, self.y_null.to(cap.y)], 0)  # (2B, 1, L, C)
        mask = None if cap.mask is None else torch.cat([cap.mask, cap.mask if self.null_mask is None else self.null_mask])
        x_mask = None if x_mask is None else x_mask.repeat(2, 1)  # (2B, T)
        out = self.model(torch.cat([x, x], 0), torch.cat([t, t], 0), y, mask=mask, x_mask=x_mask, **self.model_args)
        cond, uncond = out.chunk(2, dim=0)  # (B, 2C, T, H, W) each
        k = out.shape[1] // 2 if self.channels is None else self.channels
        if k > out.shape[1]:
            raise ValueError(f"channels={k} exceeds the model's {out.shape[1]} output channels")
        guided = uncond[:, :k] + self.scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)


# ---------------------------------------------------------------------------
# Open-Sora-Plan v1.3: an encoded negative prompt, batch [negative, positive]
# ---------------------------------------------------------------------------


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """diffusers ``rescale_noise_cfg`` (Lin et al. 2023, §3.4): mix the guided prediction rescaled to the
    per-sample std of the conditional one with the guided prediction, by ``factor``."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


class NegativePromptGuidance:
    """Classifier-free guidance of the Open-Sora-Plan v1.3 pipelines: a model callable ``(x_in, t) -> v``.

    With ``scale > 1`` one model call on the doubled batch: x = [x; x], t = [t; t], text =
    [negative.y; positive.y] with masks [negative.mask; positive.mask]; the output halves give
    ``uncond + scale * (cond - uncond)`` (then :func:`rescale_guidance` when ``rescale`` > 0). With
    ``scale <= 1`` the positive prompt alone (the official ``do_classifier_free_guidance`` is scale > 1).
    The model is called as ``model(x, t, y, encoder_attention_mask=mask, **model_args)`` (the v1.3
    transformer's official argument order). Follows opensora/sample/pipeline_opensora.py ``__call__`` @v1.3.1.
    """

    def __init__(self, model: Callable[..., torch.Tensor], positive: CaptionLike, negative: CaptionLike, *,
                 scale: float, rescale: float = 0.0, model_args: Mapping[str, torch.Tensor] | None = None):
        if tuple(positive.y.shape) != tuple(negative.y.shape):
            raise ValueError(f"negative prompt {tuple(negative.y.shape)} must match the prompt "
                             f"{tuple(positive.y.shape)} (same batch and max_sequence_length)")
        if (positive.mask is None) != (negative.mask is None):
            raise ValueError("give token masks for both the prompt and the negative prompt, or for neither")
        self.model = model
        self.positive = positive
        self.negative = negative
        self.scale = float(scale)
        self.rescale = float(rescale)
        self.model_args = dict(model_args or {})

    @property
    def guided(self) -> bool:
        return self.scale > 1

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pos, neg = self.positive, self.negative
        if x.shape[0] != pos.y.shape[0]:
            raise ValueError(f"latent batch {x.shape[0]} does not match the prompt batch {pos.y.shape[0]}")
        if not self.guided:
            return self.model(x, t, pos.y, encoder_attention_mask=pos.mask, **self.model_args)
        y = torch.cat([neg.y, pos.y.to(neg.y)], 0)  # (2B, 1, L, C)
        mask = None if pos.mask is None else torch.cat([neg.mask, pos.mask.to(neg.mask)], 0)  # (2B, L)
        out = self.model(torch.cat([x, x], 0), torch.cat([t, t], 0), y, encoder_attention_mask=mask,
                         **self.model_args)
        uncond, cond = out.chunk(2, dim=0)  # (B, C, T, H, W) each
        guided = uncond + self.scale * (cond - uncond)
        return rescale_guidance(guided, cond, self.rescale) if self.rescale > 0 else guided


class ConcatCondition:
    """Appends fixed condition channels to the model input: ``model(cat([x, condition], 1), *args)``.

    ``condition`` (B', C', T, H, W) is tiled along the batch when B' divides it (the v1.3 i2v pipeline
    concatenates [masked latent, latent mask] after the scaled latent, the same for both guidance halves).
    """

    def __init__(self, model: Callable[..., torch.Tensor], condition: torch.Tensor):
        self.model = model
        self.condition = condition

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        cond = self.condition.to(device=x.device, dtype=x.dtype)
        if cond.shape[2:] != x.shape[2:]:
            raise ValueError(f"condition {tuple(cond.shape)} does not match the latent {tuple(x.shape)} in T, H, W")
        if x.shape[0] % cond.shape[0]:
            raise ValueError(f"condition batch {cond.shape[0]} does not divide the model batch {x.shape[0]}")
        cond = cond.repeat(x.shape[0] // cond.shape[0], *([1] * (cond.dim() - 1)))
        return self.model(torch.cat([x, cond], dim=1), *args, **kwargs)
