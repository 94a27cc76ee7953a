"""What every native adapter reads besides its model: the video a native MODEL samples (what Open-Sora Sampling
Settings puts into the MODEL) and the learned-null-caption marker of Open-Sora Null Conditioning.

The settings node stores pixel size, frame count and fps in ``transformer_options[SETTINGS_KEY]``; an
adapter reads them back with :func:`video_settings`, which also refuses a latent of another size and, when
the node is missing, guesses the video from the latent with one warning per sampling run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..opensora_core.geometry import LatentGeometry

log = logging.getLogger("opensora")

SETTINGS_KEY = "opensora"  # transformer_options[SETTINGS_KEY]: pixel size, frames and fps (settings node)
NULL_KEY = "opensora_null"  # a conditioning entry that stands for the model's learned null caption (v1.x)
_WARNED: set[int] = set()  # sampling runs warned about a missing settings node (once per run, not per step)


@dataclass(frozen=True)
class VideoSettings:
    """What the model is conditioned on besides the caption: the PIXEL size and frame count, and fps."""

    height: int
    width: int
    num_frames: int
    fps: float

    def as_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "num_frames": self.num_frames, "fps": self.fps}


def stored_settings(options: dict | None) -> VideoSettings | None:
    """The settings node's values in these transformer options, or None."""
    found = (options or {}).get(SETTINGS_KEY)
    return None if found is None else VideoSettings(**found)


def video_settings(options: dict | None, x: torch.Tensor, geometry: LatentGeometry, fps: float) -> VideoSettings:
    """The settings node's values (checked against the latent x (B, C, t, h, w)), else sizes read off the
    latent (8 pixels per latent pixel, the longest clip its frames decode to) and ``fps``, with a warning:
    the shift is then 1."""
    found = stored_settings(options)
    if found is not None:
        return check_latent(found, x, geometry)
    t, h, w = x.shape[-3:]
    factor = geometry.spatial_factor
    guess = VideoSettings(h * factor, w * factor, geometry.pixel_frame_range(t)[1], fps)
    run = id((options or {}).get("sample_sigmas"))  # ComfyUI sets it once per sampling run
    if run in _WARNED:
        return guess
    _WARNED.add(run)
    log.warning("no Open-Sora Sampling Settings on this model: sampling as %s with shift 1; add the settings "
                "node (between the loader and the sampler) for the official schedule", guess)
    return guess


def check_latent(settings: VideoSettings, x: torch.Tensor, geometry: LatentGeometry) -> VideoSettings:
    """Refuse a latent whose (t, h, w) is not the settings' video: the model would be conditioned on one
    size and sample another (e.g. another pack's empty latent: 13 latent frames for 51, v1.2 needs 15)."""
    expected = geometry.latent_size(settings.num_frames, settings.height, settings.width)
    if tuple(x.shape[-3:]) != tuple(expected):
        raise ValueError(
            f"latent: its (frames, height, width) is {tuple(x.shape[-3:])} but Open-Sora Sampling Settings "
            f"({settings.width}x{settings.height}, {settings.num_frames} frames) needs {tuple(expected)}; give "
            "Open-Sora Empty Latent Video the same width, height and num_frames as the settings node"
        )
    return settings
