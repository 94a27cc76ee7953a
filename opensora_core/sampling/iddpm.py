"""IDDPM sampling of Open-Sora v1.0/v1.1 with timestep respacing.

Base process: 1000 linear betas 1e-4 -> 0.02 (float64), epsilon prediction and a
learned-range variance. ``num_steps`` respaced steps keep the original timesteps
round(k * 999 / (n - 1)) and rebuild betas from ratios of cumulative alphas. The two
releases compute the respaced arrays differently, and each is reproduced bit for bit:

* v1.1 (and v1.2's iddpm) rebuilds the betas with a float32 tensor constructor, so every
  respaced array is computed in float32 torch arithmetic (``precision="float32"``);
* v1.0 keeps everything in float64 numpy (``np.linspace`` base betas, ``np.cumprod``, ...)
  and casts to float32 when a coefficient is gathered (``_extract_into_tensor``), which
  equals casting each array once (``precision="float64"``).

The model always receives the ORIGINAL timestep. Follows opensora/schedulers/iddpm/
(__init__.py, respace.py, gaussian_diffusion.py at v1.1.0 and v1.0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .core import Denoiser, NoiseSource, StepCallback, StepResult, draw_like, run_steps
from .frames import IDDPMFrameRule, ReferenceFrames, check_frame_mask

DIFFUSION_STEPS = 1000
CFG_DRAW_COPIES = 2  # v1.1 keeps a CFG-doubled state and draws noise for all of it


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------


def linear_betas(diffusion_steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """float64 linear betas, 1e-4 .. 0.02 scaled to the step count (get_named_beta_schedule "linear")."""
    scale = 1000 / diffusion_steps
    return torch.linspace(scale * 0.0001, scale * 0.02, diffusion_steps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Original timesteps kept by respacing (respace.py ``space_timesteps``), sorted.

    ``section_counts``: steps per equal section ("10,15,20"), one count (``100``), or "ddimN"
    (the fixed integer stride that gives exactly N steps).
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        wanted = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"no integer stride gives exactly {wanted} of {num_timesteps} steps")
    if isinstance(section_counts, str):
        counts = [int(c) for c in section_counts.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = list(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated like the official loop: k * stride can round differently
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


@dataclass(frozen=True)
class SpacedSchedule:
    """Respaced diffusion arrays, one entry per kept step (index 0 = least noise)."""

    timestep_map: torch.Tensor  # (N,) int64 original timesteps
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    log_betas: torch.Tensor

    def __len__(self) -> int:
        return int(self.timestep_map.shape[0])

    def to(self, device: torch.device | str) -> SpacedSchedule:
        return SpacedSchedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def spaced_schedule(kept: Sequence[int], base_betas: torch.Tensor) -> SpacedSchedule:
    """Arrays of the respaced process keeping ``kept`` original steps (SpacedDiffusion + GaussianDiffusion)."""
    kept = sorted(kept)
    base_cumprod = torch.cumprod(1.0 - base_betas, dim=0)  # float64
    cumprod = base_cumprod[kept]
    previous = torch.cat([torch.ones(1, dtype=cumprod.dtype), cumprod[:-1]])
    betas = (1 - cumprod / previous).to(torch.float32)  # the float32 rebuild of v1.1
    if betas.shape[0] < 2:
        raise ValueError("IDDPM sampling needs at least 2 steps")
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, dim=0)
    acp_prev = torch.cat([torch.tensor([1.0]), acp[:-1]])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    return SpacedSchedule(
        timestep_map=torch.tensor(kept, dtype=torch.int64),
        betas=betas,
        alphas_cumprod=acp,
        sqrt_alphas_cumprod=torch.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - acp),
        sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / acp - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
        posterior_mean_coef1=betas * torch.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * torch.sqrt(alphas) / (1.0 - acp),
        log_betas=torch.log(betas),
    )


def spaced_schedule_float64(kept: Sequence[int], diffusion_steps: int = DIFFUSION_STEPS) -> SpacedSchedule:
    """v1.0's respaced arrays: the whole computation in float64 numpy, each array cast to float32 at the end.

    Same expressions in the same order as v1.0.0 gaussian_diffusion.py / respace.py; numpy (not torch)
    so that linspace, cumprod and log are numpy's own.
    """
    kept = sorted(kept)
    scale = 1000 / diffusion_steps
    base = np.cumprod(1.0 - np.linspace(scale * 0.0001, scale * 0.02, diffusion_steps, dtype=np.float64))
    last, new_betas = 1.0, []
    for i in kept:  # respace.py: 1 - alpha_cumprod / last_alpha_cumprod over the kept steps
        new_betas.append(1 - base[i] / last)
        last = base[i]
    betas = np.array(new_betas, dtype=np.float64)
    if betas.shape[0] < 2:
        raise ValueError("IDDPM sampling needs at least 2 steps")
    alphas = 1.0 - betas
    acp = np.cumprod(alphas, axis=0)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    arrays = dict(
        betas=betas,
        alphas_cumprod=acp,
        sqrt_alphas_cumprod=np.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
        log_betas=np.log(betas),
    )
    return SpacedSchedule(
        timestep_map=torch.tensor(kept, dtype=torch.int64),
        **{name: torch.from_numpy(value).to(torch.float32) for name, value in arrays.items()},
    )


PRECISIONS = ("float32", "float64")  # v1.1 / v1.0 arithmetic of the respaced arrays


def iddpm_schedule(
    num_steps: int | str | None = None, diffusion_steps: int = DIFFUSION_STEPS, *, precision: str = "float32"
) -> SpacedSchedule:
    """The schedule ``IDDPM(num_sampling_steps=num_steps)`` samples with (None = all 1000 steps).

    ``precision``: "float32" as v1.1/v1.2 build it, "float64" as v1.0 does (see the module docstring).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (v1.1 / v1.0), got {precision!r}")
    counts = diffusion_steps if num_steps in (None, "") else num_steps
    if isinstance(counts, int) and not 2 <= counts <= diffusion_steps:
        raise ValueError(f"num_steps must be between 2 and {diffusion_steps}, got {counts}")
    kept = space_timesteps(diffusion_steps, counts)
    if precision == "float64":
        return spaced_schedule_float64(kept, diffusion_steps)
    return spaced_schedule(kept, linear_betas(diffusion_steps))


# ---------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------


def _at(array: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return array[index].float()[:, None, None, None, None]  # (B, 1, 1, 1, 1)


@torch.no_grad()
def sample_iddpm(
    model: Denoiser,
    x: torch.Tensor,
    schedule: SpacedSchedule,
    *,
    mask: torch.Tensor | None = None,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral IDDPM sampling over a respaced schedule (IDDPM.sample, p_sample_loop).

    model: guided model ``(x, t, x_mask) -> (B, 2C, ...)``: C noise channels, then C
           variance channels in [-1, 1] interpolating log beta_t and the clipped posterior log variance
    x:     (B, C, T, H, W) start latent (noise, with reference frames already inserted)
    mask:  (B, T) frame mask from the mask strategies, or None
    noise: one draw per step (two with a mask: the re-noise draw comes first). Draws are
           taken for the CFG-doubled batch the official sampler carries and the first half is
           used, so a seeded generator reproduces the official random stream.
    """
    sched = schedule.to(x.device)
    steps = len(sched)
    channels = x.shape[1]
    frames = None
    if mask is not None:
        rule = IDDPMFrameRule(
            check_frame_mask(mask, x), steps, sched.sqrt_alphas_cumprod, sched.sqrt_one_minus_alphas_cumprod
        )
        frames = ReferenceFrames(rule, noise, CFG_DRAW_COPIES)

    def step(k: int, z: torch.Tensor) -> StepResult:
        index = torch.full((z.shape[0],), steps - 1 - k, dtype=torch.int64, device=z.device)  # (B,)
        t = sched.timestep_map[index]  # (B,) original timestep

        def ancestral(z: torch.Tensor, x_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(z, t, x_mask)
            eps, var_values = out[:, :channels], out[:, channels : 2 * channels]
            frac = (var_values + 1) / 2
            max_log, min_log = _at(sched.log_betas, index), _at(sched.posterior_log_variance_clipped, index)
            log_var = frac * max_log + (1 - frac) * min_log
            x0 = _at(sched.sqrt_recip_alphas_cumprod, index) * z - _at(sched.sqrt_recipm1_alphas_cumprod, index) * eps
            mean = _at(sched.posterior_mean_coef1, index) * x0 + _at(sched.posterior_mean_coef2, index) * z
            draw = draw_like(noise, z, CFG_DRAW_COPIES)
            nonzero = (index != 0).float()[:, None, None, None, None]  # no noise at the last step
            return mean + nonzero * torch.exp(0.5 * log_var) * draw, x0

        z, denoised = ancestral(z, None) if frames is None else frames.step(z, index, ancestral)
        return StepResult(z, t, denoised)

    return run_steps(step, x, steps, callback)
