"""Euler-ancestral sampling of Open-Sora-Plan v1.3 (v-prediction, zero terminal SNR, trailing spacing).

Restates diffusers 0.30.2 ``EulerAncestralDiscreteScheduler`` as the v1.3 scripts configure it
(opensora/utils/sample_utils.py ``get_scheduler`` @v1.3.1: ``prediction_type="v_prediction"``,
``rescale_betas_zero_snr=True``, ``timestep_spacing="trailing"``), in the k-diffusion shape:

* :func:`euler_ancestral_schedule` gives the model timesteps and the sigma table (ending in 0);
* :class:`VPredictionDenoiser` turns a model callable ``(x_in, t) -> v`` into a denoiser
  ``(x, sigma, t[, condition]) -> x0`` (the input scaling ``x / sqrt(sigma^2 + 1)`` = ``scale_model_input``,
  then the i2v condition channels appended, as the inpainting pipeline does);
* :func:`sample_euler_ancestral` runs the no-grad ancestral steps with draws from a :class:`~.core.NoiseSource`.

A family declares them as ``Sampler(schedule=release_schedule, sample=sample_euler_ancestral,
denoiser=v_prediction_guidance)``: the sampler starts from standard-normal noise (it scales it by
``init_noise_sigma``), and its ``mask`` argument carries the i2v condition channels the family's
conditioning builds (:mod:`opensora_core.conditioning.osp_inpaint`), or None for t2v.

Sigma handling (FACTS §11, §17): zero SNR makes the last cumulative alpha 0; the scheduler replaces it
by 2^-24, so the first sigma is sqrt(2^24 - 1) ~ 4096 and the starting latent is N(0, 1) * 4096
(``init_noise_sigma``, :func:`initial_latent`). All scheduler arithmetic is float32 with 0-dim tensors,
op for op as diffusers, so the tables equal the official ones computed on the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..text.caption import Caption
from .core import NoiseSource, ScheduleRequest, StepCallback, StepResult, draw_like, run_steps
from .ddpm_schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, alphas_cumprod
from .guidance import CaptionLike, ConcatCondition, NegativePromptGuidance

SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("v_prediction", "epsilon")
ZERO_SNR_FLOOR = 2.0**-24  # replaces the zero last cumulative alpha so that sigma stays finite


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EulerAncestralSchedule:
    """What ``set_timesteps`` leaves in the scheduler.

    timesteps:        (N,) float32 timesteps given to the model (999, 989, ... for 100 trailing steps)
    sigmas:           (N + 1,) float32, sigmas[i] belongs to timesteps[i]; the last is 0
    init_noise_sigma: 0-dim float32, the factor of the starting noise (sigma max for linspace/trailing,
                      sqrt(sigma_max^2 + 1) for leading)
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    init_noise_sigma: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def sampler_alphas_cumprod(*, zero_snr: bool = True, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                           beta_start: float = BETA_START, beta_end: float = BETA_END) -> torch.Tensor:
    """(N,) float32 cumulative alphas of the Euler-ancestral scheduler: with zero SNR the last is 2^-24."""
    cumprod = alphas_cumprod(zero_snr=zero_snr, num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                             beta_end=beta_end)
    if zero_snr:
        cumprod[-1] = ZERO_SNR_FLOOR
    return cumprod


def spaced_timesteps(num_steps: int, spacing: str = "trailing", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                     steps_offset: int = 0) -> np.ndarray:
    """(num_steps,) float32 timesteps, descending (diffusers ``set_timesteps``; Lin et al. 2023, Table 2)."""
    if int(num_steps) != num_steps or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be an integer in 1..{num_train_timesteps}, got {num_steps!r}")
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        timesteps = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.float32)
        return timesteps + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return np.arange(num_train_timesteps, 0, -ratio).round().copy().astype(np.float32) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")


def euler_ancestral_schedule(
    num_steps: int,
    *,
    zero_snr: bool = True,
    spacing: str | None = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
    steps_offset: int = 0,
) -> EulerAncestralSchedule:
    """Timesteps and sigmas of ``num_steps`` steps. Defaults = the v1.3 release scheduler.

    ``spacing`` None follows ``get_scheduler``: "trailing" with zero SNR, "leading" without.
    sigma(t) = sqrt((1 - alpha_bar) / alpha_bar), linearly interpolated at the (possibly fractional)
    timesteps in float64 (``np.interp``), then rounded to float32.
    """
    cumprod = sampler_alphas_cumprod(zero_snr=zero_snr, num_train_timesteps=num_train_timesteps,
                                     beta_start=beta_start, beta_end=beta_end)
    spacing = spacing or ("trailing" if zero_snr else "leading")
    timesteps = spaced_timesteps(num_steps, spacing, num_train_timesteps, steps_offset)
    table = (((1 - cumprod) / cumprod) ** 0.5).numpy()  # (N_train,) float32
    sigmas = np.interp(timesteps, np.arange(0, len(table)), table)
    sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    sigma_max = sigmas.max()
    init = sigma_max if spacing in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5
    return EulerAncestralSchedule(torch.from_numpy(timesteps), sigmas, init)


def release_schedule(request: ScheduleRequest) -> EulerAncestralSchedule:
    """The family ``Sampler.schedule``: the v1.3 release scheduler (zero SNR, trailing) for the request's steps."""
    return euler_ancestral_schedule(request.steps)


def initial_latent(noise: torch.Tensor, schedule: EulerAncestralSchedule) -> torch.Tensor:
    """The starting latent: standard normal ``noise`` times ``init_noise_sigma`` (``prepare_latents``)."""
    return noise * schedule.init_noise_sigma.to(noise.device)


# ---------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------


class VPredictionDenoiser:
    """``(x, sigma, t[, condition]) -> x0`` from a model callable ``(x_in, t) -> prediction``.

    x_in = x / sqrt(sigma^2 + 1) (``scale_model_input``), followed by the ``condition`` channels when given
    (:class:`~.guidance.ConcatCondition`: [masked latent, latent mask] of the i2v pipeline, unscaled); the
    model gets ``t`` as a (B,) tensor in x's dtype. v-prediction: x0 = v * (-sigma / sqrt(sigma^2 + 1)) +
    x / (sigma^2 + 1); epsilon: x0 = x - sigma * eps (the ``step`` formulas, x cast to float32 first).
    """

    def __init__(self, model, prediction_type: str = "v_prediction"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
        self.model = model
        self.prediction_type = prediction_type

    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / ((sigma**2 + 1) ** 0.5)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor,
                 condition: torch.Tensor | None = None) -> torch.Tensor:
        timestep = t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])  # (B,)
        model = self.model if condition is None else ConcatCondition(self.model, condition)
        out = model(self.model_input(x, sigma), timestep)  # (B, C, T, H, W)
        if torch.isnan(out).any():
            raise ValueError(f"the model output contains NaN at timestep {float(t)} (the official pipeline asserts)")
        sample = x.to(torch.float32)
        if self.prediction_type == "epsilon":
            return sample - sigma * out
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))


def v_prediction_guidance(model, caption: CaptionLike, y_null: torch.Tensor, model_args: dict | None = None, *,
                          scale: float, channels: int | None = None, null_mask: torch.Tensor | None = None,
                          rescale: float = 0.0) -> VPredictionDenoiser:
    """The family ``Sampler.denoiser``: negative-prompt guidance of the v1.3 transformer inside the v-prediction
    denoiser. ``caption``: the prompt (y and its token mask); ``y_null`` / ``null_mask``: the encoded negative
    prompt (the release's :data:`~opensora_core.text.osp_prompts.OSP_V1_3_NEGATIVE_PROMPT`) and its mask."""
    if channels is not None:
        raise ValueError("Open-Sora-Plan v1.3 guides every predicted channel: pass channels=None")
    guided = NegativePromptGuidance(model, caption, Caption(y_null, null_mask), scale=scale, rescale=rescale,
                                    model_args=model_args)
    return VPredictionDenoiser(guided)


# ---------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------


def ancestral_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """One Euler-ancestral step from sigma to sigma_next (diffusers ``step`` after ``pred_original_sample``):
    sigma_up = sqrt(s'^2 (s^2 - s'^2) / s^2), sigma_down = sqrt(s'^2 - sigma_up^2),
    x' = x + (x - x0) / s * (sigma_down - s) + noise * sigma_up, in float32, cast back to x's dtype."""
    sample = x.to(torch.float32)
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    derivative = (sample - denoised) / sigma
    prev = sample + derivative * (sigma_down - sigma)
    return (prev + noise * sigma_up).to(x.dtype)


@torch.no_grad()
def sample_euler_ancestral(
    denoiser,
    x: torch.Tensor,
    schedule: EulerAncestralSchedule,
    *,
    mask: torch.Tensor | None = None,
    noise: NoiseSource | None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler-ancestral steps along ``schedule`` (the v1.3 pipelines' denoising loop).

    denoiser: ``(x, sigma, t[, condition]) -> x0``, e.g. :class:`VPredictionDenoiser` around a guided model
    x:        (B, C, T, H, W) standard-normal starting noise; the loop starts from x * ``init_noise_sigma``
              (:func:`initial_latent`, ``prepare_latents``)
    mask:     the i2v condition channels (B, C', T, H, W) handed to the denoiser each step, or None (t2v)
    noise:    one standard normal draw shaped like x per step, the last step included (as diffusers
              draws; its sigma_up is 0), e.g. ``GeneratorNoise.from_seed(seed)``
    callback: fixed keys (:data:`~.core.CALLBACK_KEYS`); ``t`` is the step's model timestep
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    condition = {} if mask is None else {"condition": mask}

    def step(i: int, z: torch.Tensor) -> StepResult:
        sigma, sigma_next, t = sigmas[i], sigmas[i + 1], timesteps[i]  # 0-dim float32 (CPU)
        denoised = denoiser(z, sigma, t, **condition)  # (B, C, T, H, W) float32
        z = ancestral_step(z, denoised, sigma, sigma_next, draw_like(noise, denoised))
        return StepResult(z, t.expand(z.shape[0]), denoised)

    return run_steps(step, initial_latent(x, schedule), schedule.num_steps, callback)


__all__ = [
    "PREDICTION_TYPES",
    "SPACINGS",
    "ZERO_SNR_FLOOR",
    "EulerAncestralSchedule",
    "VPredictionDenoiser",
    "ancestral_step",
    "euler_ancestral_schedule",
    "initial_latent",
    "release_schedule",
    "sample_euler_ancestral",
    "sampler_alphas_cumprod",
    "spaced_timesteps",
    "v_prediction_guidance",
]
