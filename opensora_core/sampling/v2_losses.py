"""Open-Sora 2.0's training objective (``scripts/diffusion/train.py`` of the 2.0 code): a shifted flow with
logit-normal times, as the official trainer computes it.

For a clean latent x_0 [B, C, T, H, W] and noise x_1 ~ N(0, 1):

* t = sigmoid(n), n ~ N(0, 1) per sample, then shifted like the sampler's schedule:
  t <- alpha t / (1 + (alpha - 1) t) with alpha = :func:`~opensora_core.sampling.v2.shift_alpha` of the latent's
  tokens per frame (H W / 4 for 2x2 patches) and frame count (sqrt(T));
* x_t = (1 - t) x_0 + (1 - (1 - sigma_min) (1 - t)) x_1 (sigma_min = 1e-5);
* the model sees the packed x_t and ``timesteps`` = t; its target is the velocity (1 - sigma_min) x_1 - x_0;
* loss = mean squared error over every element, in float32.

The condition channels are those of inference (:class:`~opensora_core.conditioning.v2.ConditionV2`): zeros
for text-to-video; an i2v condition puts the reference latent in, and the loss still covers every frame (the
official default, ``no_i2v_ref_loss`` off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..conditioning.v2 import ConditionV2, build_condition
from ..models.mmdit import pack, prepare_inputs
from .v2 import shift_alpha

SIGMA_MIN = 1e-5  # train.py default ``sigma_min``


def training_alpha(latent_shape: tuple[int, ...], patch_size: int = 2) -> float:
    """alpha of a latent [B, C, T, H, W]: tokens per frame H W / p^2 and T frames (as the sampler's shift)."""
    *_, T, H, W = latent_shape
    return shift_alpha((H * W) // patch_size**2, T)


def sample_times(batch: int, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B] float32 logit-normal times shifted by ``alpha`` (1 = noise, 0 = data)."""
    device = generator.device if generator is not None else None
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    return alpha * t / (1 + (alpha - 1) * t)


@dataclass(frozen=True)
class V2FlowObjective:
    """The 2.0 flow loss (module docstring); ``model`` is the MMDiT's official keyword call."""

    sigma_min: float = SIGMA_MIN
    patch_size: int = 2

    def noised(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target velocity) for clean x0, noise x1 and times t [B]."""
        keep = (1 - t).view(-1, *[1] * (x0.ndim - 1)).to(x0)
        x_t = keep * x0 + (1 - (1 - self.sigma_min) * keep) * x1
        return x_t, (1 - self.sigma_min) * x1 - x0

    def loss(self, model: Callable[..., torch.Tensor], x0: torch.Tensor, txt: torch.Tensor, y_vec: torch.Tensor, *,
             condition: ConditionV2 | None = None, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar float32 loss for latents x0 [B, C, T, H, W] (model dtype) with T5 states txt [B, L, C_txt]
        and pooled CLIP y_vec [B, C_vec]; ``t`` / ``noise`` override the draws (tests)."""
        B = x0.shape[0]
        if t is None:
            t = sample_times(B, training_alpha(tuple(x0.shape), self.patch_size), generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else None)
        x_t, target = self.noised(x0, noise.to(x0), t.to(x0.device))
        condition = condition if condition is not None else build_condition(x0, "t2v")
        cond = pack(torch.cat((condition.masks, condition.masked_ref), dim=1), self.patch_size)
        inputs = prepare_inputs(x_t, txt, y_vec, self.patch_size)  # (B, N, C p^2) packed latent and ids
        pred = model(**inputs, timesteps=t.to(x0.device, x0.dtype), cond=cond.to(x0.device, x0.dtype))
        return F.mse_loss(pred.float(), pack(target, self.patch_size).float())


__all__ = ["SIGMA_MIN", "V2FlowObjective", "sample_times", "training_alpha"]
