"""The discrete 1000-step noise schedule of Open-Sora-Plan v1.3, as diffusers builds it.

Both the training scheduler (``DDPMScheduler``, opensora/train/train_t2v_diffusers.py @v1.3.1) and the
sampler (``EulerAncestralDiscreteScheduler``, opensora/utils/sample_utils.py ``get_scheduler``) start
from diffusers' default linear betas 1e-4 .. 0.02 in float32 and, with ``--rescale_betas_zero_snr``
(every v1.3 script), rescale them to zero terminal SNR (Lin et al. 2023, Algorithm 1): the last
cumulative alpha becomes 0. Every array here is float32 and computed op for op as diffusers 0.30.2
does (the rescale subtracts nearly equal numbers near t = 999, so float64 or a different op order
changes the last sigmas by several ulps).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.0001
BETA_END = 0.02


def linear_betas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """(N,) float32 ``torch.linspace(beta_start, beta_end, N)`` (diffusers ``beta_schedule="linear"``)."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last cumulative alpha is exactly 0 (diffusers ``rescale_zero_terminal_snr``).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first value is unchanged;
    alphas are recovered from the ratios of consecutive alpha_bar.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(
    *,
    zero_snr: bool = True,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> torch.Tensor:
    """(N,) float32 cumulative alphas (the ``DDPMScheduler.alphas_cumprod`` training uses; with zero SNR the
    last entry is 0; the Euler-ancestral sampler replaces it, see
    :func:`.euler_ancestral.sampler_alphas_cumprod`)."""
    betas = linear_betas(num_train_timesteps, beta_start, beta_end)
    if zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0)


__all__ = ["BETA_END", "BETA_START", "NUM_TRAIN_TIMESTEPS", "alphas_cumprod", "linear_betas",
           "rescale_zero_terminal_snr"]
