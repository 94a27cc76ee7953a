"""What every sampler shares: noise sources, the step loop, callbacks and interruption.

A sampler is a no-grad function ``(model, x, schedule, *, mask, noise, callback) -> x``.
It builds one step function and hands it to :func:`run_steps`, which calls the
callback after every step. The callback receives a dict with the fixed keys of
:data:`CALLBACK_KEYS`; to stop sampling early it raises :class:`SamplingInterrupted`
(any other exception also aborts, e.g. ComfyUI's own interrupt). The loop records
the step and the latest latent on a ``SamplingInterrupted`` before re-raising, so a
caller can keep the partial result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

# Keys of the dict passed to a step callback.
#   i        step index, 0-based
#   total    number of steps of this run
#   x        latent after step i
#   t        timestep given to the model at step i (per sample; RFLOW: 0..1000 float, IDDPM: original int)
#   denoised the sampler's estimate of the clean latent at step i
CALLBACK_KEYS = ("i", "total", "x", "t", "denoised")

StepCallback = Callable[[dict], None]


class SamplingInterrupted(Exception):
    """Raised by a step callback to stop sampling; carries the step and latent reached.

    ``step`` is the index of the last completed step and ``x`` the latent after it
    (both filled in by the sampler loop; None if raised before the first step).
    """

    def __init__(
        self, message: str = "sampling interrupted", *, step: int | None = None, x: torch.Tensor | None = None
    ):
        super().__init__(message)
        self.step = step
        self.x = x


@dataclass(frozen=True)
class ScheduleRequest:
    """What a family's schedule function may read: the step count and the PIXEL size of the output."""

    steps: int
    height: int
    width: int
    num_frames: int
    args_dtype: torch.dtype = torch.float32  # dtype the model's size arguments have (the official code's)
    shift_scale: float = 1.0  # rectified flow: factor on the timestep transform's shift (official 1.0)


class Denoiser(Protocol):
    """A guided model as the samplers see it: ``(x, t, x_mask) -> output`` of shape (B, 2C, T, H, W)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor: ...


# ---------------------------------------------------------------------------
# Noise sources
# ---------------------------------------------------------------------------


class NoiseSource(Protocol):
    """Gives Gaussian draws of a requested shape, on the device/dtype of ``like``."""

    def draw(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor: ...


@dataclass
class GeneratorNoise:
    """Draws from a seeded ``torch.Generator`` (on the generator's own device, then moved).

    A CPU generator gives the same noise on every device. With the seed the
    official scripts set right before sampling, the draws equal the official
    ``torch.randn_like`` stream on CPU.
    """

    generator: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: str | torch.device = "cpu") -> GeneratorNoise:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
        return cls(generator)

    def draw(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        sample = torch.randn(tuple(shape), generator=self.generator, dtype=like.dtype, device=self.generator.device)
        return sample.to(like.device)


@dataclass
class RecordedNoise:
    """Replays recorded draws in order (test hook: the ``rng.*`` tensors of the reference cases)."""

    draws: list[torch.Tensor]
    used: int = field(default=0, init=False)

    def draw(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise ValueError(f"RecordedNoise: draw {self.used + 1} requested but only {len(self.draws)} were recorded")
        sample = self.draws[self.used]
        if tuple(sample.shape) != tuple(shape):
            raise ValueError(
                f"RecordedNoise: draw {self.used} has shape {tuple(sample.shape)}, the sampler asked for {tuple(shape)}"
            )
        self.used += 1
        return sample.to(device=like.device, dtype=like.dtype)


def stream_noise(shape: Sequence[int], seed: int, noise: NoiseSource, dtype: torch.dtype) -> torch.Tensor:
    """A generation's start latent in Open-Sora v1.x's order: float32 on the CPU from the generation's shared
    ``noise`` stream (after the reference encodes); ``seed`` and ``dtype`` are not used (a family
    ``Sampler.start_noise``)."""
    return noise.draw(tuple(shape), torch.empty(0))


def draw_like(noise: NoiseSource | None, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
    """A draw shaped like ``x``. ``copies`` > 1 draws for a batch ``copies`` times larger and keeps
    the first part, which consumes the random stream as a sampler that carries a CFG-doubled state."""
    if noise is None:
        raise ValueError("this sampler needs random draws: pass noise=GeneratorNoise.from_seed(seed)")
    shape = (x.shape[0] * copies, *x.shape[1:])
    return noise.draw(shape, x)[: x.shape[0]]


# ---------------------------------------------------------------------------
# The step loop
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one sampler step produced."""

    x: torch.Tensor  # latent after the step
    t: torch.Tensor  # timestep given to the model
    denoised: torch.Tensor  # clean-latent estimate


def run_steps(
    step: Callable[[int, torch.Tensor], StepResult],
    x: torch.Tensor,
    total: int,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run ``total`` steps of ``step(i, x)``, reporting each to ``callback``."""
    for i in range(total):
        result = step(i, x)
        x = result.x
        if callback is None:
            continue
        try:
            callback({"i": i, "total": total, "x": x, "t": result.t, "denoised": result.denoised})
        except SamplingInterrupted as stop:
            stop.step, stop.x = i, x
            raise
    return x
