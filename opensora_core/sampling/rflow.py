"""Rectified-flow sampling of Open-Sora v1.2 (RFLOW).

Time runs on 0..1000: t = 1000 is pure noise, t = 0 is data, x_t = (1 - t/1000) x0 + (t/1000) eps,
and the model predicts the velocity x0 - eps. The sampler takes Euler steps from
the first timestep down to 0. Follows opensora/schedulers/rf/__init__.py and
opensora/schedulers/rf/rectified_flow.py (v1.2.0).
"""

from __future__ import annotations

import math

import torch

from ..geometry import VAE_V1_2
from .core import Denoiser, NoiseSource, StepCallback, StepResult, run_steps
from .frames import ReferenceFrames, RFlowFrameRule, check_frame_mask

NUM_TIMESTEPS = 1000
BASE_RESOLUTION = 512 * 512
# The transform counts whole VAE v1.2 chunks (17 pixel frames -> 5 latent frames), whatever the VAE.
TRANSFORM_CHUNK_FRAMES = VAE_V1_2.micro_frame_size
TRANSFORM_CHUNK_LATENTS = VAE_V1_2.latent_chunk


# ---------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------


def rflow_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS, *, discrete: bool = False) -> torch.Tensor:
    """(num_steps + 1,) float32 timesteps (1 - i/N) * num_timesteps for i < N, then 0.

    The official list stops at the last positive time and integrates its final step
    to 0; the appended 0 expresses that, so schedules and samplers combine freely.
    ``discrete`` rounds to integers (``use_discrete_timesteps``; off in v1.2).
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    times = [(1.0 - i / num_steps) * num_timesteps for i in range(num_steps)]
    if discrete:
        times = [float(round(t)) for t in times]
    return torch.tensor(times + [0.0], dtype=torch.float32)


def timestep_transform(
    t: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    num_frames: torch.Tensor,
    *,
    num_timesteps: int = NUM_TIMESTEPS,
    base_resolution: int = BASE_RESOLUTION,
    base_num_frames: int = 1,
    scale: float = 1.0,
) -> torch.Tensor:
    """The official resolution/length shift of the timesteps, op for op (``timestep_transform``).

    s = t / num_timesteps; ratio = sqrt(H*W / base_resolution) * sqrt(n / base_num_frames) * scale
    with n = 1 for one frame, else floor(num_frames / 17) * 5; returns
    num_timesteps * ratio*s / (1 + (ratio - 1)*s). ``height``/``width``/``num_frames`` are
    (B,) PIXEL sizes in the dtype the model arguments have: bfloat16 reproduces official
    bf16 inference, where H*W and the ratio are rounded to bf16. Only num_frames[0]
    chooses the image branch. For 2..16 frames n = 0 and the first step is NaN,
    as in the official code; :func:`rflow_schedule` rejects those counts.
    """
    s = t / num_timesteps
    ratio = _shift_ratio(height, width, num_frames, base_resolution, base_num_frames, scale)
    return ratio * s / (1 + (ratio - 1) * s) * num_timesteps


def _shift_ratio(height, width, num_frames, base_resolution, base_num_frames, scale) -> torch.Tensor:
    """The official ratio sqrt(H*W / base) * sqrt(n / base_frames) * scale, op for op, in the args' dtype."""
    ratio_space = (height * width / base_resolution).sqrt()
    if num_frames[0] == 1:
        frames = torch.ones_like(num_frames)
    else:
        frames = num_frames // TRANSFORM_CHUNK_FRAMES * TRANSFORM_CHUNK_LATENTS
    return ratio_space * (frames / base_num_frames).sqrt() * scale


def transform_shift(height: int, width: int, num_frames: int, *, args_dtype: torch.dtype = torch.float32,
                    scale: float = 1.0) -> float:
    """The shift of the v1.2 timestep transform as one number: ``timestep_transform`` is
    ``1000 * shift*s / (1 + (shift - 1)*s)`` with s = t / 1000 (ComfyUI's ``time_snr_shift``).

    ``args_dtype=torch.bfloat16`` gives the shift of official bf16 inference (H*W and the ratio rounded to
    bf16); ``scale`` multiplies it (the transform's own ``scale``; official inference: 1.0). Raises for frame
    counts the transform cannot take (2..16).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"shift_scale must be a finite number > 0 (official 1.0), got {scale}")
    check_transform_frames(num_frames)
    args = [torch.tensor([float(v)], dtype=args_dtype) for v in (height, width, num_frames)]
    return float(_shift_ratio(*args, BASE_RESOLUTION, 1, scale)[0])


def check_transform_frames(num_frames: int) -> None:
    """Raise for frame counts the official timestep transform cannot handle (2..16 give NaN)."""
    if 1 < num_frames < TRANSFORM_CHUNK_FRAMES:
        raise ValueError(
            f"num_frames={num_frames} does not work with the v1.2 timestep transform: it counts whole "
            f"{TRANSFORM_CHUNK_FRAMES}-frame chunks, so 2..{TRANSFORM_CHUNK_FRAMES - 1} frames give NaN timesteps. "
            f"Use num_frames 1 (an image) or {TRANSFORM_CHUNK_FRAMES} or more (51 = 2 s at 24 fps)"
        )


def rflow_schedule(
    num_steps: int,
    *,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    transform: bool = True,
    args_dtype: torch.dtype = torch.float32,
    num_timesteps: int = NUM_TIMESTEPS,
    scale: float = 1.0,
) -> torch.Tensor:
    """(num_steps + 1,) timesteps ending in 0, shifted for the output size when ``transform`` is on.

    height/width are the PIXEL size and num_frames the PIXEL frame count of the video.
    ``args_dtype=torch.bfloat16`` reproduces the official bf16 inference, where the sampler
    receives its size arguments in the model dtype (timesteps differ by up to ~1 in 1000).
    ``scale`` multiplies the shift (the transform's ``scale``, which official inference leaves at 1.0).
    """
    times = rflow_timesteps(num_steps, num_timesteps)
    if not transform:
        return times
    if height is None or width is None or num_frames is None:
        raise ValueError("the timestep transform needs height, width and num_frames (or pass transform=False)")
    check_transform_frames(num_frames)
    args = [torch.tensor([float(v)], dtype=args_dtype) for v in (height, width, num_frames)]
    shifted = timestep_transform(times[:-1], *args, num_timesteps=num_timesteps, scale=scale)
    return torch.cat([shifted.float(), times[-1:]])


# ---------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------


def _per_sample(timesteps: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """(N + 1, B) timesteps from a (N + 1,) or (N + 1, B) schedule."""
    if timesteps.dim() == 1:
        timesteps = timesteps[:, None].expand(-1, batch)
    if timesteps.dim() != 2 or timesteps.shape[1] != batch or timesteps.shape[0] < 2:
        raise ValueError(f"timesteps must be (N + 1,) or (N + 1, {batch}) ending in 0, got {tuple(timesteps.shape)}")
    return timesteps.to(device)


@torch.no_grad()
def sample_rflow(
    model: Denoiser,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    num_timesteps: int = NUM_TIMESTEPS,
) -> torch.Tensor:
    """Euler steps of the rectified flow along ``timesteps`` (RFLOW.sample).

    model:     guided model ``(x, t, x_mask) -> (B, 2C, ...)``; channels :C are the velocity
    x:         (B, C, T, H, W) start latent (noise, with reference frames already inserted)
    timesteps: (N + 1,) or (N + 1, B) on the 0..num_timesteps scale, ending in 0
    mask:      (B, T) frame mask from the mask strategies, or None. With a mask every step
               takes one Gaussian draw from ``noise`` (like the official sampler, which always
               receives one; an all-ones mask changes nothing else).
    """
    times = _per_sample(timesteps, x.shape[0], x.device)
    channels = x.shape[1]
    frames = None
    if mask is not None:
        frames = ReferenceFrames(RFlowFrameRule(check_frame_mask(mask, x), num_timesteps), noise)

    def step(i: int, z: torch.Tensor) -> StepResult:
        t = times[i]  # (B,)
        dt = ((times[i] - times[i + 1]) / num_timesteps)[:, None, None, None, None]
        s = (t / num_timesteps)[:, None, None, None, None]

        def euler(z: torch.Tensor, x_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            v = model(z, t, x_mask)[:, :channels]  # (B, C, T, H, W) velocity x0 - eps
            return z + v * dt, z + s * v

        z, denoised = euler(z, None) if frames is None else frames.step(z, t, euler)
        return StepResult(z, t, denoised)

    return run_steps(step, x, times.shape[0] - 1, callback)
