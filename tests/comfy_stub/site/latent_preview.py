"""Test stand-in for ComfyUI's ``latent_preview``: a Latent2RGBPreviewer that records what it was shown."""

from __future__ import annotations

SHOWN: list[tuple[int, ...]] = []  # shapes of the latents previewed


class Latent2RGBPreviewer:
    def __init__(self, latent_rgb_factors, latent_rgb_factors_bias=None):
        self.factors = latent_rgb_factors

    def decode_latent_to_preview_image(self, preview_format, x0):
        SHOWN.append(tuple(x0.shape))
        return (preview_format, "preview image", 512)
