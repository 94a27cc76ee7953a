"""Test stand-in for ``comfy.latent_formats``: an SD15 format with made-up RGB factors."""

from __future__ import annotations


class SD15:
    def __init__(self):
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


class HunyuanVideo:
    """16 channels (made-up factors), as ComfyUI's HunyuanVideo latent format the Hunyuan VAE's latents use."""

    def __init__(self):
        self.latent_rgb_factors = [[0.1 * (c % 3 == i) for i in range(3)] for c in range(16)]
