"""Training objectives: timestep sampling, noising and losses of v1.2 (rectified flow) and v1.1 (IDDPM).

Both objectives expose the same four steps, so one training step serves both::

    t = objective.sample_timesteps(batch, generator, height=..., width=..., num_frames=...)
    x_t = objective.noisy_input(x0, noise, t, frame_mask)
    out = model(x_t, t, y, mask, x_mask=frame_mask, **size_args)       # (B, 2C, T, H, W)
    terms = objective.losses(out, x0, x_t, noise, t, frame_mask)     # {"loss": (B,), ...}

``frame_mask`` is the training mask (B, T) bool over latent frames: True = a frame the model
generates (noised and supervised), False = a condition frame. Condition frames enter the model
at noise level 0 (the clean latent for rectified flow, ``q_sample`` at t = 0 for IDDPM), are
modulated with timestep 0 inside the model (``x_mask``) and are left out of every loss term
(follows scripts/train.py and the ``training_losses`` of opensora/schedulers/rf/rectified_flow.py
at v1.2.0 and opensora/schedulers/iddpm/gaussian_diffusion.py at v1.1.0).

The schedules are those the samplers use: :func:`~.rflow.timestep_transform` and the 1000-step
:func:`~.iddpm.iddpm_schedule` (float32 arrays, as v1.1 builds them for training too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .iddpm import DIFFUSION_STEPS, SpacedSchedule, iddpm_schedule
from .rflow import NUM_TIMESTEPS, timestep_transform
from .vpred_losses import VPredictionObjective

RF_SAMPLE_METHODS = ("logit-normal", "uniform")
LOG2 = math.log(2.0)

# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def mean_flat(tensor: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean over every non-batch axis of (B, C, T, H, W); with a frame mask (B, T), the
    mean over the kept frames only (follows gaussian_diffusion.py ``mean_flat``).

    A sample without any kept frame gets 0 rather than the official 0/0.
    """
    if frame_mask is None:
        return tensor.mean(dim=tuple(range(1, tensor.dim())))
    if tensor.dim() != 5 or tuple(frame_mask.shape) != (tensor.shape[0], tensor.shape[2]):
        raise ValueError(
            f"frame_mask {tuple(frame_mask.shape)} does not fit a (B, C, T, H, W) tensor {tuple(tensor.shape)}"
        )
    keep = frame_mask.to(tensor.dtype)  # (B, T)
    per_frame = tensor.sum(dim=(1, 3, 4))  # (B, T)
    per_element = tensor.shape[1] * tensor.shape[3] * tensor.shape[4]
    return (per_frame * keep).sum(dim=1) / (keep.sum(dim=1) * per_element).clamp(min=1)


def keep_condition_frames(x_t: torch.Tensor, x_clean: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """``x_t`` on generated frames, ``x_clean`` (the t = 0 input) on condition frames."""
    if frame_mask is None:
        return x_t
    return torch.where(frame_mask[:, None, :, None, None], x_t, x_clean)  # (B, C, T, H, W)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))  # (B, 1, 1, 1, 1)


# ---------------------------------------------------------------------------
# v1.2: rectified flow
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RectifiedFlowObjective:
    """Rectified-flow training of STDiT3 (``RFlowScheduler.training_losses``).

    t on 0..num_timesteps, t = num_timesteps is noise; x_t = (1 - t/N) x0 + (t/N) eps; the model
    predicts the velocity x0 - eps (channels :C of its output); loss = MSE over the generated
    frames. ``sample_method`` "logit-normal" (all official v1.2 stages: t/N = sigmoid(loc + scale * n),
    n ~ N(0, 1)) or "uniform"; ``timestep_transform`` shifts t by the resolution/length ratio of the
    sample (the same transform the sampler uses; needs height/width/num_frames in pixels).
    """

    sample_method: str = "logit-normal"
    loc: float = 0.0
    scale: float = 1.0
    use_timestep_transform: bool = True
    transform_scale: float = 1.0
    num_timesteps: int = NUM_TIMESTEPS

    def __post_init__(self) -> None:
        if self.sample_method not in RF_SAMPLE_METHODS:
            raise ValueError(f"unknown sample_method {self.sample_method!r}; use one of {', '.join(RF_SAMPLE_METHODS)}")

    def sample_timesteps(self, batch: int, generator: torch.Generator, *, height=None, width=None, num_frames=None):
        """(B,) float32 timesteps on ``generator``'s device; size arguments are (B,) pixel tensors."""
        device = generator.device
        if self.sample_method == "uniform":
            u = torch.rand(batch, generator=generator, device=device)
        else:
            u = torch.sigmoid(torch.randn(batch, generator=generator, device=device) * self.scale + self.loc)
        t = u * self.num_timesteps  # (B,)
        if not self.use_timestep_transform:
            return t
        if height is None or width is None or num_frames is None:
            raise ValueError("the timestep transform needs height, width and num_frames (pixel sizes per sample)")
        args = [v.to(device=device, dtype=torch.float32) for v in (height, width, num_frames)]
        return timestep_transform(t, *args, num_timesteps=self.num_timesteps, scale=self.transform_scale)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t/N) x0 + (t/N) eps, op for op as the official ``add_noise``."""
        keep = _per_sample(1 - t.float() / self.num_timesteps, x0)  # (B, 1, 1, 1, 1) weight of the data
        return keep * x0 + (1 - keep) * noise

    def noisy_input(self, x0, noise, t, frame_mask=None) -> torch.Tensor:
        x_t = self.add_noise(x0, noise, t)
        if frame_mask is None:
            return x_t
        return keep_condition_frames(x_t, self.add_noise(x0, noise, torch.zeros_like(t)), frame_mask)

    def losses(self, output, x0, x_t, noise, t, frame_mask=None) -> dict[str, torch.Tensor]:
        velocity = output[:, : x0.shape[1]].float()  # (B, C, T, H, W): channels C.. (learned sigma) unused
        loss = mean_flat((velocity - (x0 - noise)).pow(2), frame_mask)  # (B,)
        return {"loss": loss}


# ---------------------------------------------------------------------------
# v1.1: IDDPM (epsilon MSE + variational bound for the learned variance)
# ---------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    spread = torch.exp(logvar1 - logvar2) + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
    return 0.5 * (-1.0 + logvar2 - logvar1 + spread)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """tanh approximation of the standard normal CDF (the one IDDPM's likelihood uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for data quantised to 256 levels in [-1, 1] (bins of width 2/255),
    with open-ended edge bins; in nats."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _at(array: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return array.to(t.device)[t].float()[:, None, None, None, None]  # (B, 1, 1, 1, 1)


@dataclass
class IDDPMObjective:
    """IDDPM training of STDiT2 (``GaussianDiffusion.training_losses`` with loss type MSE).

    t ~ uniform{0..N-1}; x_t = q_sample(x0, t, eps); the model predicts eps (channels :C) and, with
    ``learn_sigma``, the variance interpolation v (channels C:2C). loss = MSE(eps) + vb, where vb is
    the variational bound in bits with the mean prediction frozen (KL to the true posterior; the
    decoder NLL at t = 0), both averaged over the generated frames only.
    """

    diffusion_steps: int = DIFFUSION_STEPS
    learn_sigma: bool = True
    _schedule: SpacedSchedule | None = field(default=None, init=False, repr=False)

    @property
    def schedule(self) -> SpacedSchedule:
        if self._schedule is None:
            self._schedule = iddpm_schedule(None, self.diffusion_steps)
        return self._schedule

    @property
    def num_timesteps(self) -> int:
        return self.diffusion_steps

    def sample_timesteps(self, batch: int, generator: torch.Generator, **size_args) -> torch.Tensor:
        """(B,) int64 timesteps, uniform over 0..N-1 (size arguments are not used)."""
        return torch.randint(0, self.diffusion_steps, (batch,), generator=generator, device=generator.device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return _at(s.sqrt_alphas_cumprod, t) * x0 + _at(s.sqrt_one_minus_alphas_cumprod, t) * noise

    def noisy_input(self, x0, noise, t, frame_mask=None) -> torch.Tensor:
        x_t = self.q_sample(x0, t, noise)
        if frame_mask is None:
            return x_t
        return keep_condition_frames(x_t, self.q_sample(x0, torch.zeros_like(t), noise), frame_mask)

    def losses(self, output, x0, x_t, noise, t, frame_mask=None) -> dict[str, torch.Tensor]:
        channels = x0.shape[1]
        output = output.float()
        eps = output[:, :channels]  # (B, C, T, H, W)
        terms = {"mse": mean_flat((noise - eps).pow(2), frame_mask)}
        if self.learn_sigma:
            if output.shape[1] != 2 * channels:
                raise ValueError(f"learn_sigma needs 2 x {channels} output channels, got {output.shape[1]}")
            var_values = output[:, channels : 2 * channels]
            terms["vb"] = self.variational_bound(eps.detach(), var_values, x0, x_t, t, frame_mask)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    def variational_bound(self, eps, var_values, x0, x_t, t, frame_mask=None) -> torch.Tensor:
        """(B,) bits per dimension: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)), or the decoder NLL at t = 0."""
        s = self.schedule
        true_mean = _at(s.posterior_mean_coef1, t) * x0 + _at(s.posterior_mean_coef2, t) * x_t
        true_log_var = _at(s.posterior_log_variance_clipped, t)
        frac = (var_values + 1) / 2  # the model's [-1, 1] output -> [min, max] log variance
        model_log_var = frac * _at(s.log_betas, t) + (1 - frac) * _at(s.posterior_log_variance_clipped, t)
        pred_x0 = _at(s.sqrt_recip_alphas_cumprod, t) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t) * eps
        model_mean = _at(s.posterior_mean_coef1, t) * pred_x0 + _at(s.posterior_mean_coef2, t) * x_t
        kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var), frame_mask) / LOG2
        nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        nll = mean_flat(nll, frame_mask) / LOG2
        return torch.where(t == 0, nll, kl)


# ---------------------------------------------------------------------------
# Choosing an objective
# ---------------------------------------------------------------------------

TrainingObjective = RectifiedFlowObjective | IDDPMObjective | VPredictionObjective
OBJECTIVES = {"rflow": RectifiedFlowObjective, "iddpm": IDDPMObjective, "vprediction": VPredictionObjective}


def build_objective(kind: str, **options) -> TrainingObjective:
    """``"rflow"`` -> :class:`RectifiedFlowObjective` (v1.2), ``"iddpm"`` -> :class:`IDDPMObjective` (v1.1),
    ``"vprediction"`` -> :class:`~.vpred_losses.VPredictionObjective` (Open-Sora-Plan v1.3), with ``options``."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown training objective {kind!r}; use 'rflow' (v1.2), 'iddpm' (v1.1) or "
                         "'vprediction' (Open-Sora-Plan v1.3)")
    return OBJECTIVES[kind](**options)


__all__ = [
    "OBJECTIVES",
    "RF_SAMPLE_METHODS",
    "IDDPMObjective",
    "RectifiedFlowObjective",
    "TrainingObjective",
    "approx_standard_normal_cdf",
    "build_objective",
    "discretized_gaussian_log_likelihood",
    "keep_condition_frames",
    "mean_flat",
    "normal_kl",
]
