"""Test stand-in for ComfyUI's ``latent_preview``: a Latent2RGBPreviewer that records what it was shown,
and ``prepare_callback`` (KSampler's progress bar + preview from the model's latent format)."""

from __future__ import annotations

SHOWN: list[tuple[int, ...]] = []  # shapes of the latents previewed
FACTORS: list[list] = []  # the latent -> RGB factors of each previewer made


class Latent2RGBPreviewer:
    def __init__(self, latent_rgb_factors, latent_rgb_factors_bias=None):
        self.factors = latent_rgb_factors
        FACTORS.append(latent_rgb_factors)

    def decode_latent_to_preview_image(self, preview_format, x0):
        SHOWN.append(tuple(x0.shape))
        return (preview_format, "preview image", 512)


def get_previewer(device, latent_format):
    factors = latent_format.latent_rgb_factors
    return None if factors is None else Latent2RGBPreviewer(factors, latent_format.latent_rgb_factors_bias)


def prepare_callback(model, steps, x0_output_dict=None):
    from comfy.utils import ProgressBar

    previewer = get_previewer(model.load_device, model.model.latent_format)
    bar = ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        image = None if previewer is None else previewer.decode_latent_to_preview_image("JPEG", x0)
        bar.update_absolute(step + 1, total_steps, image)

    return callback
