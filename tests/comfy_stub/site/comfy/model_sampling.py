"""Test stand-in for ``comfy.model_sampling``: discrete-flow (CONST) and discrete-DDPM (EPS) sampling.

Our own implementation of what ComfyUI v0.3.64 documents for these classes: sigma <-> timestep, the
model input scaling, the denoised estimate, and how noise is mixed into a latent.
"""

from __future__ import annotations

import torch
from torch import nn


class EPS:
    """The model predicts the noise; x = x0 + sigma * noise."""

    def calculate_input(self, sigma, noise):
        return noise / (_shape(sigma, noise) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _shape(sigma, model_output)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _shape(sigma, noise)
        scale = torch.sqrt(1.0 + sigma**2) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class CONST:
    """Rectified flow: x = (1 - sigma) * x0 + sigma * noise; the model predicts noise - x0."""

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * _shape(sigma, model_output)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _shape(sigma, noise)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


def _shape(sigma, like):
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return sigma.reshape(sigma.shape[:1] + (1,) * (like.ndim - 1)) if sigma.ndim else sigma


def time_snr_shift(alpha, t):
    return alpha * t / (1 + (alpha - 1) * t) if alpha != 1.0 else t


class _SigmaTable(nn.Module):
    """The ends of a model sampling's sigma table (``self.sigmas``, ascending), as ComfyUI's classes give them."""

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class ModelSamplingDiscreteFlow(_SigmaTable):
    def __init__(self, model_config=None):
        super().__init__()
        settings = {} if model_config is None else model_config.sampling_settings
        self.set_parameters(shift=settings.get("shift", 1.0), multiplier=settings.get("multiplier", 1000))

    def set_parameters(self, shift=1.0, timesteps=1000, multiplier=1000):
        self.shift, self.multiplier = shift, multiplier
        self.sigmas = self.sigma(torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps * multiplier)

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, torch.as_tensor(timestep, dtype=torch.float32) / self.multiplier)


class ModelSamplingDiscrete(_SigmaTable):
    """DDPM betas ("linear": squared sqrt-spaced; "sqrt_linear": linear) -> sigma = sqrt((1 - acp) / acp)."""

    def __init__(self, model_config=None):
        super().__init__()
        s = {} if model_config is None else model_config.sampling_settings
        start, end = s.get("linear_start", 0.00085), s.get("linear_end", 0.012)
        if s.get("beta_schedule", "linear") == "sqrt_linear":
            betas = torch.linspace(start, end, 1000, dtype=torch.float64)
        else:
            betas = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        dists = torch.as_tensor(sigma).log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(torch.as_tensor(sigma).shape)

    def sigma(self, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
