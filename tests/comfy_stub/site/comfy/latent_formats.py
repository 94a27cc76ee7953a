"""Test stand-in for ``comfy.latent_formats``: an SD15 format with made-up RGB factors."""

from __future__ import annotations


class SD15:
    def __init__(self):
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
