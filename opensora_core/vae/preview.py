"""Live previews: a linear latent -> RGB map fitted on a VAE itself, and how close it comes to decoding.

ComfyUI previews a latent during sampling with a per-pixel linear map of the first latent frame
(``latent_rgb_factors`` (C, 3) and a bias, giving RGB in [-1, 1]). Instead of hard-coded factors, the
map here is a least-squares fit on the loaded VAE: a few synthetic clips (smooth random colour fields
with moving squares, :func:`fitting_clips`) are encoded to their posterior mean and decoded again; each
latent pixel is paired with the mean colour of the 8x8 block and of the pixel frames it decodes to.
A new latent space needs nothing else: the fit reads the VAE's geometry and channel count.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..dtypes import cpu_computes
from ..geometry import V1_2_MICRO_FRAMES, LatentGeometry

FIT_CLIPS = 6  # synthetic clips encoded for a fit (3 -> 6: demo VAE v1.2 +0.6 dB on real video, +1.2 on sampled)
FIT_SIZE = 64  # their height and width in pixels
FIT_CHUNKS = 1  # their length in VAE chunks (VAE v1.2: 17 frames; a per-frame VAE gets 17 frames too)
FIT_SEED = 0


@dataclass(frozen=True)
class LatentRGB:
    """rgb = latent @ weight + bias per latent pixel; rgb in [-1, 1] (ComfyUI's preview convention)."""

    weight: tuple[tuple[float, ...], ...]  # (C, 3): ComfyUI's latent_rgb_factors
    bias: tuple[float, float, float]  # ComfyUI's latent_rgb_factors_bias

    def apply(self, latent: torch.Tensor) -> torch.Tensor:
        """(C, h, w) latent -> (h, w, 3) RGB in about [-1, 1]."""
        weight = torch.tensor(self.weight, dtype=torch.float32, device=latent.device)  # (C, 3)
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latent.device)
        return latent.float().movedim(0, -1) @ weight + bias

    def as_dict(self) -> dict:
        return {"weight": [list(row) for row in self.weight], "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, data: dict) -> LatentRGB:
        return cls(tuple(tuple(float(v) for v in row) for row in data["weight"]), tuple(float(v) for v in data["bias"]))


def fitting_clips(geometry: LatentGeometry, *, clips: int = FIT_CLIPS, size: int = FIT_SIZE,
                  seed: int = FIT_SEED) -> torch.Tensor:
    """(clips, 3, T, size, size) synthetic videos in [-1, 1]: smooth random colour fields (4x4 colours
    upsampled) with a saturated square moving across them, T = one VAE chunk (17 frames)."""
    frames = (geometry.micro_frame_size or V1_2_MICRO_FRAMES) * FIT_CHUNKS
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(clips, 3, 4, 4, generator=g) * 2 - 1  # (N, 3, 4, 4)
    background = F.interpolate(background, size=(size, size), mode="bilinear", align_corners=True)
    video = background[:, :, None].repeat(1, 1, frames, 1, 1)  # (N, 3, T, H, W)
    colours = torch.rand(clips, 3, generator=g) * 2 - 1
    side = size // 4
    for n in range(clips):
        for t in range(frames):
            x = (t * (size - side)) // max(frames - 1, 1)
            video[n, :, t, side:2 * side, x:x + side] = colours[n][:, None, None]
    return video


@torch.no_grad()
def fit_latent_rgb(vae, clips: torch.Tensor | None = None) -> LatentRGB:
    """Least-squares latent -> RGB map of ``vae`` (a ``VideoVAE``) from ``clips`` (default
    :func:`fitting_clips`): posterior-mean latents against their decoded colours at latent resolution."""
    vae = _computable(vae)
    video = fitting_clips(vae.geometry) if clips is None else clips
    latent = vae.encode(video, sample=False).float()  # (N, C, t, h, w)
    return fit_decoded(latent, vae.decode(latent, video.shape[2]), vae.geometry)


def _computable(vae):
    """``vae``, or a float32 copy where its weights sit on a CPU that only emulates their dtype: the fit decodes a
    few clips, which in bf16 on an AVX2-only CPU took minutes (convolutions 17-40x slower than in float32). The
    map then comes from the loaded weights computed in float32: the same map up to the rounding of bf16 activations."""
    weight = next(vae.parameters(), None) if isinstance(vae, torch.nn.Module) else None
    if weight is None or weight.device.type != "cpu" or cpu_computes(weight.dtype):
        return vae
    return copy.deepcopy(vae).float()


def fit_decoded(latent: torch.Tensor, decoded: torch.Tensor, geometry: LatentGeometry) -> LatentRGB:
    """Least-squares map of latents (N, C, t, h, w) onto the colours of their decodes (N, 3, T, H, W)."""
    latent = latent.float()
    targets = latent_frame_colours(decoded.float().clamp(-1, 1), geometry, latent.shape[-2:])  # (N, 3, t, h, w)
    inputs = latent.movedim(1, -1).reshape(-1, latent.shape[1])  # (N*t*h*w, C)
    colours = targets.movedim(1, -1).reshape(-1, 3)  # (N*t*h*w, 3)
    design = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1).double()  # (M, C + 1)
    solution = torch.linalg.lstsq(design, colours.double()).solution  # (C + 1, 3)
    weight = tuple(tuple(float(v) for v in row) for row in solution[:-1])
    return LatentRGB(weight, tuple(float(v) for v in solution[-1]))


def latent_frame_colours(decoded: torch.Tensor, geometry: LatentGeometry, latent_hw) -> torch.Tensor:
    """(N, 3, T, H, W) decoded video -> (N, 3, t, h, w): per latent pixel, the mean colour of its block
    and of the pixel frames its latent frame decodes to."""
    frames = decoded.shape[2]
    per_latent = [decoded[:, :, list(geometry.latent_to_pixel_frames(k, frames))].mean(2)
                  for k in range(geometry.latent_frames(frames))]  # each (N, 3, H, W)
    pooled = [F.adaptive_avg_pool2d(f, tuple(latent_hw)) for f in per_latent]  # each (N, 3, h, w)
    return torch.stack(pooled, dim=2)


def preview_psnr(rgb: LatentRGB, latent: torch.Tensor, decoded: torch.Tensor, geometry: LatentGeometry) -> float:
    """PSNR (dB, 0..255 scale) of the preview of latent frame 0 against the decoded frames it stands for,
    at preview (latent) resolution: ``latent`` (C, t, h, w), ``decoded`` (3, T, H, W) in [-1, 1]."""
    preview = rgb.apply(latent[:, 0]).clamp(-1, 1)  # (h, w, 3)
    target = latent_frame_colours(decoded[None].float().clamp(-1, 1), geometry, latent.shape[-2:])[0, :, 0]
    error = ((preview.movedim(-1, 0) - target) * 127.5).pow(2).mean()
    return float("inf") if error == 0 else 10 * math.log10(255**2 / float(error))
