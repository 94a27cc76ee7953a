"""Training objective of Open-Sora-Plan v1.3: v-prediction on the zero-SNR DDPM schedule with min-SNR-gamma
weighting.

Follows opensora/train/train_t2v_diffusers.py and train_inpaint.py @v1.3.1 (``--prediction_type
v_prediction --rescale_betas_zero_snr --snr_gamma 5.0``) with diffusers 0.30.2 ``DDPMScheduler.add_noise`` /
``get_velocity`` and ``training_utils.compute_snr``::

    t = explicit_uniform_timesteps(batch, generator)                 # (B,) int64 in 0..999
    ac = alphas_cumprod(zero_snr=True)                               # .ddpm_schedule, last entry 0
    x_t = add_noise(x0, noise, t, ac)                                # sqrt(ac) x0 + sqrt(1 - ac) eps
    v = model(x_t, t, ...)                                           # inpainting: condition channels appended
    loss = v_prediction_loss(v, velocity(x0, noise, t, ac), min_snr_weights(snr(t, ac), 5.0), latent_mask)

The latent mask (B, T, H, W) (1 = real latent pixel, 0 = bucket padding) is the transformer's
``attention_mask``; the loss averages over its ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ddpm_schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod

SNR_GAMMA_V1_3 = 5.0  # train_t2v_v1_3.sh --snr_gamma


def _at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t] in ``like``'s dtype, shaped (B, 1, ...) to broadcast over ``like``."""
    values = alphas_cumprod.to(device=like.device, dtype=like.dtype)[t.to(like.device)].flatten()
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ac_t) x0 + sqrt(1 - ac_t) noise (``DDPMScheduler.add_noise``; ac cast to x0's dtype first)."""
    ac = _at(alphas_cumprod, t, x0)  # (B, 1, 1, 1, 1)
    return ac**0.5 * x0 + (1 - ac) ** 0.5 * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The v-prediction target v = sqrt(ac_t) noise - sqrt(1 - ac_t) x0 (``DDPMScheduler.get_velocity``)."""
    ac = _at(alphas_cumprod, t, x0)
    return ac**0.5 * noise - (1 - ac) ** 0.5 * x0


def snr(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """(B,) float32 signal-to-noise ratio ac_t / (1 - ac_t), as (sqrt(ac) / sqrt(1 - ac))^2 (``compute_snr``);
    0 at the zero-SNR last step."""
    alpha = (alphas_cumprod**0.5).to(t.device)[t].float()
    sigma = ((1.0 - alphas_cumprod) ** 0.5).to(t.device)[t].float()
    return (alpha / sigma) ** 2


def min_snr_weights(snr_values: torch.Tensor, gamma: float = SNR_GAMMA_V1_3,
                    prediction_type: str = "v_prediction") -> torch.Tensor:
    """(B,) min-SNR-gamma loss weights (Hang et al. 2023): min(snr, gamma) / (snr + 1) for v-prediction,
    min(snr, gamma) / snr for epsilon (official; 0/0 = NaN at zero SNR, so epsilon + zero SNR cannot train)."""
    clipped = torch.stack([snr_values, gamma * torch.ones_like(snr_values)], dim=1).min(dim=1)[0]
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1)
    if prediction_type == "epsilon":
        return clipped / snr_values
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use 'v_prediction' or 'epsilon'")


def v_prediction_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    latent_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar MSE loss of the v1.3 trainers.

    prediction, target (B, C, T, H, W); weights (B,) per sample (None: the ``--snr_gamma``-less loss);
    latent_mask (B, T, H, W), 1 = real pixel: sum(loss * mask * w) / sum(mask over C*T*H*W), else mean(loss * w).
    """
    B, C = prediction.shape[:2]
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").reshape(B, -1)  # (B, C*T*H*W)
    w = torch.ones(B, 1, device=loss.device) if weights is None else weights.reshape(B, 1).to(loss.device)
    if latent_mask is None:
        return (loss * w).mean()
    if tuple(latent_mask.shape) != (B, *prediction.shape[2:]):
        raise ValueError(f"latent_mask must be (B, T, H, W) = {(B, *prediction.shape[2:])}, got "
                         f"{tuple(latent_mask.shape)}")
    mask = latent_mask[:, None].expand(-1, C, -1, -1, -1).float().reshape(B, -1).to(loss.device)
    return (loss * mask * w).sum() / mask.sum()


def explicit_uniform_timesteps(
    batch: int,
    generator: torch.Generator,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """(B,) int64 timesteps, uniform over this rank's share of 0..N-1 (``explicit_uniform_sampling``: rank r
    draws round(U(N/n * r - 0.5, N/n * (r + 1) - 0.5))). The official code draws with Python's ``random``;
    this draws from ``generator`` (same distribution, another stream)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
    share = num_train_timesteps / world_size
    low, high = share * rank - 0.5, share * (rank + 1) - 0.5
    u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64)
    return torch.round(low + (high - low) * u).long()


# ---------------------------------------------------------------------------
# The objective the trainer runs (the interface of sampling.losses' objectives)
# ---------------------------------------------------------------------------


@dataclass
class VPredictionObjective:
    """Open-Sora-Plan v1.3 training as one object with the trainer's four steps (see ``sampling.losses``)::

        t = objective.sample_timesteps(batch, generator)           # (B,) int64, explicit uniform
        x_t = objective.noisy_input(x0, noise, t)                   # sqrt(ac) x0 + sqrt(1 - ac) eps
        v = model(x_t, t, ...)                                      # the v prediction (B, C, T, H, W)
        terms = objective.losses(v, x0, x_t, noise, t)              # {"loss": (B,)}

    The per-sample loss is the mean squared error to sqrt(ac) eps - sqrt(1 - ac) x0, times the min-SNR-gamma
    weight when ``snr_gamma`` is set; its mean over the batch is the official scalar (every sample has the
    same number of elements). No frame masks: the v1.3 text-to-video trainer has none.
    """

    zero_snr: bool = True
    snr_gamma: float | None = SNR_GAMMA_V1_3
    num_timesteps: int = NUM_TRAIN_TIMESTEPS
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive (or None: unweighted), got {self.snr_gamma}")
        self.alphas_cumprod = alphas_cumprod(zero_snr=self.zero_snr, num_train_timesteps=self.num_timesteps)

    def sample_timesteps(self, batch: int, generator: torch.Generator, **_sizes) -> torch.Tensor:
        """(B,) int64 timesteps on ``generator``'s device (size arguments are not used by this objective)."""
        return explicit_uniform_timesteps(batch, generator, self.num_timesteps)

    def noisy_input(self, x0, noise, t, frame_mask=None) -> torch.Tensor:
        if frame_mask is not None:
            raise ValueError("Open-Sora-Plan v1.3 text-to-video training takes no frame masks (mask_ratios)")
        return add_noise(x0, noise, t, self.alphas_cumprod)

    def losses(self, output, x0, x_t, noise, t, frame_mask=None) -> dict[str, torch.Tensor]:
        target = velocity(x0, noise, t, self.alphas_cumprod)  # (B, C, T, H, W)
        per_sample = F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
        if self.snr_gamma is not None:
            per_sample = per_sample * min_snr_weights(snr(t, self.alphas_cumprod), self.snr_gamma).to(per_sample)
        return {"loss": per_sample}


__all__ = [
    "SNR_GAMMA_V1_3",
    "VPredictionObjective",
    "add_noise",
    "explicit_uniform_timesteps",
    "min_snr_weights",
    "snr",
    "v_prediction_loss",
    "velocity",
]
