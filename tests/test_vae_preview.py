"""The live-preview map: a least-squares fit of decoded colours on encoded clips, and its PSNR measure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opensora_core.geometry import PER_FRAME, VAE_V1_2
from opensora_core.vae import preview
from opensora_core.vae.preview import fit_latent_rgb, fitting_clips, latent_frame_colours, preview_psnr

DECODER = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.3], [-0.1, 0.2, 0.6], [0.0, 0.0, 0.0]])  # (C, 3)
BIAS = torch.tensor([0.1, -0.05, 0.02])


class LinearVAE:
    """A per-frame 'VAE' whose decoder is exactly linear per latent pixel: channels 0..2 hold the 8x8 block's
    mean colour through the inverse of ``DECODER``'s first rows, channel 3 the block's spread (which the
    decoder ignores); decoding gives the block's mean colour back."""

    geometry = PER_FRAME
    latent_channels = 4

    def encode(self, x, sample=False):
        pooled = F.avg_pool3d(x, (1, 8, 8))  # (N, 3, T, h, w)
        colour = torch.einsum("nrthw,rc->ncthw", pooled - BIAS[None, :, None, None, None], torch.linalg.inv(DECODER[:3]))
        spread = F.avg_pool3d(x.pow(2), (1, 8, 8)).mean(1, keepdim=True) - pooled.pow(2).mean(1, keepdim=True)
        return torch.cat([colour, spread], dim=1)  # (N, 4, T, h, w)

    def decode(self, z, num_frames):
        rgb = torch.einsum("ncthw,cr->nrthw", z, DECODER) + BIAS[None, :, None, None, None]
        return rgb.repeat_interleave(8, -1).repeat_interleave(8, -2)


def test_the_fit_recovers_a_linear_decoder():
    """When the decoder is linear per latent pixel, the least-squares map is that decoder, and its preview
    reproduces the decoded frame (infinite PSNR up to float32 rounding)."""
    vae = LinearVAE()
    fitted = fit_latent_rgb(vae)
    torch.testing.assert_close(torch.tensor(fitted.weight, dtype=torch.float32), DECODER, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(fitted.bias, dtype=torch.float32), BIAS, atol=1e-4, rtol=0)
    clip = fitting_clips(PER_FRAME, clips=1, seed=4)
    z = vae.encode(clip)
    assert preview_psnr(fitted, z[0], vae.decode(z, clip.shape[2])[0], PER_FRAME) > 60


class ModuleVAE(torch.nn.Module):
    """``LinearVAE`` as a module with a weight of some dtype; records the dtype of each call's weight."""

    geometry = PER_FRAME
    latent_channels = 4

    def __init__(self, dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones((), dtype=dtype), requires_grad=False)
        self.seen = []

    def encode(self, x, sample=False):
        self.seen.append(self.weight.dtype)
        return LinearVAE().encode(x)

    def decode(self, z, num_frames):
        self.seen.append(self.weight.dtype)
        return LinearVAE().decode(z, num_frames)


def test_a_bf16_vae_is_fitted_in_float32_where_the_cpu_only_emulates_bf16(monkeypatch):
    """On an AVX2-only CPU bf16 convolutions ran 17-40x slower than float32: the fit runs on a float32 copy."""
    monkeypatch.setattr(preview, "cpu_computes", lambda dtype: dtype == torch.float32)
    vae = ModuleVAE(torch.bfloat16)
    fitted = fit_latent_rgb(vae)
    assert vae.seen == [] and vae.weight.dtype == torch.bfloat16  # the loaded VAE is left as it is
    torch.testing.assert_close(torch.tensor(fitted.weight, dtype=torch.float32), DECODER, atol=1e-4, rtol=0)
    monkeypatch.setattr(preview, "cpu_computes", lambda dtype: True)  # a CPU with bf16 kernels: the VAE itself
    fit_latent_rgb(vae)
    assert vae.seen == [torch.bfloat16, torch.bfloat16]


def test_colours_of_a_latent_frame_are_its_pixel_frames_and_blocks():
    """VAE v1.2: latent frame 0 stands for pixel frame 0, frame 1 for frames 1..4 of a 17-frame chunk."""
    video = torch.arange(17.0)[None, None, :, None, None].expand(1, 3, 17, 16, 16)
    colours = latent_frame_colours(video, VAE_V1_2, (2, 2))  # (1, 3, 5, 2, 2)
    assert colours[0, 0, :, 0, 0].tolist() == [0.0, 2.5, 6.5, 10.5, 14.5]
