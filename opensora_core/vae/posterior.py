"""Diagonal Gaussian posterior of the VAEs and where its noise comes from.

Both Open-Sora VAE stages end their encoder in ``2 * C`` channels: the first ``C``
are the posterior mean, the last ``C`` its log-variance. The log-variance is clamped
to [-30, 20] and a latent is ``mean + exp(logvar / 2) * eps`` (a *sample*, the
official encode behaviour) or ``mean`` (``sample=False``).

``eps`` never comes from the global torch RNG. A :data:`NoiseFn` supplies it:
``noise(stage, shape) -> Tensor`` is called once per posterior draw, in the order
the official code draws, with the stage name (``"spatial"`` for the SD-VAE stage,
``"temporal"`` for the VAE v1.2 temporal stage, ``"video"`` for the single draw of the
Hunyuan VAE over the whole latent) and the shape of the draw.

* :func:`gaussian_noise` draws from a ``torch.Generator`` (seeded for reproducible
  encodes; a fresh, OS-seeded one when none is given);
* :class:`RecordedNoise` replays recorded draws (the reference cases' ``rng.*``
  tensors): each stage's draws are one tensor, consumed in order along
  :data:`STAGE_AXIS` (spatial draws are rows in (b t) frame order, temporal draws are
  concatenated along time), so the result does not depend on how the frames were
  batched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

NoiseFn = Callable[[str, tuple[int, ...]], Tensor]

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

# stage -> axis along which consecutive draws of that stage are laid out
STAGE_AXIS: dict[str, int] = {"spatial": 0, "temporal": 2, "video": 0}


@dataclass(frozen=True)
class DiagonalGaussian:
    """The posterior N(mean, exp(logvar)) of a VAE encoder, log-variance already clamped to [-30, 20].

    follows DiagonalGaussianDistribution (opensora/models/vae/utils.py; Open-Sora-Plan
    utils/distrib_utils.py): chunk the moments in two along channels, clamp, std = exp(logvar / 2).
    """

    mean: Tensor
    logvar: Tensor

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        """Encoder moments ``[N, 2C, ...]``: the first C channels are the mean, the last C the log-variance."""
        mean, logvar = moments.chunk(2, dim=1)  # (N, C, ...) each
        return cls(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, noise: Tensor | NoiseFn | None = None, *, generator: torch.Generator | None = None,
               stage: str = "posterior") -> Tensor:
        """mean + std * eps. ``eps``: the ``noise`` tensor itself (the mean's shape; recorded draws are
        injected this way), a :data:`NoiseFn` called as ``noise(stage, shape)``, or a standard normal draw
        from ``generator`` (a fresh OS-seeded one when None; never the global RNG)."""
        shape = tuple(self.mean.shape)
        if noise is None:
            noise = gaussian_noise(generator, self.mean.device)
        eps = noise if isinstance(noise, Tensor) else noise(stage, shape)
        if tuple(eps.shape) != shape:
            raise ValueError(f"posterior noise has shape {tuple(eps.shape)}, the posterior {shape}")
        return self.mean + self.std * eps.to(device=self.mean.device, dtype=self.mean.dtype)


def sample_posterior(moments: Tensor, *, sample: bool, noise: NoiseFn | None, stage: str) -> Tensor:
    """Latent from encoder moments ``[N, 2C, ...]``: mean, or mean + std * eps with eps from ``noise``."""
    posterior = DiagonalGaussian.from_moments(moments)
    if not sample:
        return posterior.mean
    if noise is None:
        raise ValueError("sample_posterior(sample=True) needs a noise source; pass gaussian_noise(generator)")
    return posterior.sample(noise, stage=stage)


def gaussian_noise(generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> NoiseFn:
    """A :data:`NoiseFn` drawing standard normal float32 noise from ``generator``.

    Without a generator, a new one seeded from OS entropy is made on ``device``, so
    encodes are random but the global RNG state is never read or changed.
    """
    if generator is None:
        generator = torch.Generator(device=device)
        generator.seed()

    def draw(stage: str, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    return draw


class RecordedNoise:
    """Replays recorded posterior draws: ``{stage: tensor}`` consumed in order along ``STAGE_AXIS``."""

    def __init__(self, draws: Mapping[str, Tensor], axes: Mapping[str, int] = STAGE_AXIS):
        unknown = set(draws) - set(axes)
        if unknown:
            raise ValueError(f"RecordedNoise: unknown stage(s) {sorted(unknown)}; known: {sorted(axes)}")
        self._draws = dict(draws)
        self._axes = dict(axes)
        self._used = {stage: 0 for stage in draws}

    def __call__(self, stage: str, shape: tuple[int, ...]) -> Tensor:
        if stage not in self._draws:
            raise ValueError(f"RecordedNoise: no recorded draws for stage {stage!r} (have {sorted(self._draws)})")
        record, axis, start = self._draws[stage], self._axes[stage], self._used[stage]
        stop = start + shape[axis]
        if stop > record.shape[axis]:
            raise ValueError(f"RecordedNoise: stage {stage!r} needs more draws than recorded ({record.shape[axis]})")
        eps = record.narrow(axis, start, shape[axis])
        if tuple(eps.shape) != tuple(shape):
            raise ValueError(f"RecordedNoise: stage {stage!r} asked for {tuple(shape)}, recorded {tuple(eps.shape)}")
        self._used[stage] = stop
        return eps

    def check_consumed(self) -> None:
        """Raise unless every recorded draw was used (a sign that the draw structure matched)."""
        left = {s: self._draws[s].shape[self._axes[s]] - n for s, n in self._used.items()}
        left = {s: n for s, n in left.items() if n}
        if left:
            raise ValueError(f"RecordedNoise: draws left unused per stage: {left}")
