"""Open-Sora 2.0 sizes and frame counts: the one place for its resolution tables and latent geometry.

Follows opensora/datasets/aspect.py (size tables), opensora/utils/sampling.py (``sanitize_sampling_option``,
``get_noise``, the latent frame count of ``api_fn``) and the Hunyuan VAE's ``get_latent_size`` of
hpcaitech/Open-Sora (main, the 2.0 code). v1.x keeps its own tables in :mod:`.opensora_v1`.

* resolutions "256px" / "768px" (N x N pixels; "<N>p" names use the 16:9 area), aspect ratios "W:H";
* the Hunyuan VAE compresses time by 4 (causal: 4k+1 frames -> k+1 latent frames) and space by 8: its
  arithmetic is :data:`~.latent.HUNYUAN_VAE`; the MMDiT packs 2x2 latent patches, so sizes are multiples
  of 16 px and one token covers 16x16 px;
* released use: 256px or 768px, 16:9 / 9:16 / 1:1 / 2.39:1, num_frames = 4k+1 <= 129.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from .latent import HUNYUAN_VAE, LatentGeometry, check_frame_count

logger = logging.getLogger("opensora")

# Aspect ratios "width:height" in the official order (ASPECT_RATIO_LD_LIST); the vertical ones are added.
ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1")
RESOLUTIONS = ("256px", "768px")  # the released model's two resolutions
SIZE_MULTIPLE = 16  # sanitize_sampling_option rounds height/width up to this
SPATIAL_COMPRESSION = 16  # pixels per token side: VAE 8 x patch 2 (AE_SPATIAL_COMPRESSION; 32 for the DC-AE)
VAE_TEMPORAL = HUNYUAN_VAE.time_factor  # the official temporal_reduction option (4)
MAX_FRAMES = 129  # longest video the release was trained for (README)


# ---------------------------------------------------------------------------
# Size tables (opensora/datasets/aspect.py)
# ---------------------------------------------------------------------------


def resolution_pixels(resolution: str) -> int:
    """Pixel count of a resolution name: "256px" -> 256*256, "720p" -> int(720*720/9*16).

    A "_<setting>" suffix (``256px_ar1:1``) is ignored, as the official ``get_num_pexels_from_name`` does.
    """
    name = resolution.split("_")[0]
    if name.endswith("px") and name[:-2].isdigit():
        return int(name[:-2]) ** 2
    if name.endswith("p") and name[:-1].isdigit():
        size = int(name[:-1])
        return int(size * size / 9 * 16)
    raise ValueError(f"unknown resolution {resolution!r}: use e.g. '256px' or '768px' (or '<N>p' for a 16:9 area)")


def aspect_ratio_sizes(resolution: str, *, training: bool = False,
                       spatial_compression: int = SPATIAL_COMPRESSION) -> dict[str, tuple[int, int]]:
    """{"W:H": (height, width)} for a resolution (``get_aspect_ratios_dict``).

    width = floor(sqrt(N * W/H) / D) * D, height = floor(N / width / D) * D with D = ``spatial_compression``.
    ``training=True`` nudges each size by one step of D towards N pixels and drops ratios whose size an
    earlier ratio already has (so 1.85:1 and 5:8 are absent at 256px).
    """
    total, D = resolution_pixels(resolution), spatial_compression
    table: dict[str, tuple[int, int]] = {}
    vertical: dict[str, tuple[int, int]] = {}
    for ratio in ASPECT_RATIOS:
        w_ratio, h_ratio = (float(v) for v in ratio.split(":"))
        width = int(math.sqrt(total * (w_ratio / h_ratio)) // D) * D
        height = int((total / width) // D) * D
        if training:
            height, width = _closest_to_area(height, width, total, D)
        if not training or (height, width) not in table.values():
            table[ratio] = (height, width)
            vertical[":".join(ratio.split(":")[::-1])] = (width, height)
    table.update(vertical)
    return table


def _closest_to_area(height: int, width: int, total: int, step: int) -> tuple[int, int]:
    """The first of (h -/+ step, w), (h, w -/+ step) that is closer to ``total`` pixels, in that order."""
    best = abs(height * width - total)
    for h, w in ((height - step, width), (height + step, width), (height, width - step), (height, width + step)):
        if abs(h * w - total) < best:
            height, width, best = h, w, abs(h * w - total)
    return height, width


def image_size(resolution: str, aspect_ratio: str, *, training: bool = False,
               spatial_compression: int = SPATIAL_COMPRESSION) -> tuple[int, int]:
    """(height, width) in pixels for a resolution and "W:H" aspect ratio (``get_image_size``)."""
    table = aspect_ratio_sizes(resolution, training=training, spatial_compression=spatial_compression)
    if aspect_ratio not in table:
        raise ValueError(
            f"aspect ratio {aspect_ratio!r} not available for {resolution}; choose one of {', '.join(table)}"
        )
    return table[aspect_ratio]


def training_buckets(resolution: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(pixel count, {"W:H": (height, width)}) of a training bucket resolution (the official bucket's
    ``get_resolution_with_aspect_ratio``): the ``training=True`` sizes of :func:`aspect_ratio_sizes`."""
    return resolution_pixels(resolution), aspect_ratio_sizes(resolution, training=True)


def closest_aspect_ratio(height: float, width: float, ratios) -> str:
    """The "W:H" key of ``ratios`` whose height/width is closest to the clip's (``get_closest_ratio``; ties
    keep the first)."""
    def height_over_width(name: str) -> float:
        w, h = (float(v) for v in name.split(":"))
        return h / w

    return min(ratios, key=lambda name: abs(height / width - height_over_width(name)))


def round_up_size(height: int, width: int) -> tuple[int, int]:
    """Height and width rounded up to multiples of 16 px (``sanitize_sampling_option``)."""
    return -(-int(height) // SIZE_MULTIPLE) * SIZE_MULTIPLE, -(-int(width) // SIZE_MULTIPLE) * SIZE_MULTIPLE


def check_size(num_frames: int, height: int, width: int) -> None:
    """The family's size check (``Family.check_size``): sides multiples of 16 px, which the official code would
    round up to (:func:`round_up_size`); frame counts are the sampler's check (:func:`check_num_frames`)."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        up_h, up_w = round_up_size(height, width)
        raise ValueError(f"Open-Sora 2.0 generates sizes in multiples of {SIZE_MULTIPLE} pixels, got {height}x{width} "
                         f"(HxW); use {up_h}x{up_w} (the official code rounds up to it)")


def sampling_size(resolution: str | None = None, aspect_ratio: str | None = None, height: int | None = None,
                  width: int | None = None) -> tuple[int, int]:
    """The pixel size the sampler generates: from resolution + aspect ratio, or from height + width; rounded
    up to multiples of 16 (``sanitize_sampling_option``)."""
    if resolution is not None or aspect_ratio is not None:
        if resolution is None or aspect_ratio is None:
            raise ValueError("give both resolution and aspect_ratio (e.g. '256px', '16:9'), or height and width")
        height, width = image_size(resolution, aspect_ratio)
    elif height is None or width is None:
        raise ValueError("give height and width in pixels, or resolution and aspect_ratio")
    return round_up_size(height, width)


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


def _causal_vae(temporal_reduction: int) -> LatentGeometry:
    """The Hunyuan VAE's geometry, or the same causal rule with another ``temporal_reduction``."""
    if temporal_reduction == HUNYUAN_VAE.time_factor:
        return HUNYUAN_VAE
    return dataclasses.replace(HUNYUAN_VAE, time_factor=temporal_reduction)


def latent_frames(num_frames: int, *, temporal_reduction: int = VAE_TEMPORAL, causal: bool = True) -> int:
    """Latent frames the sampler generates for ``num_frames`` video frames (``api_fn``): 1 for an image,
    else the causal VAE's count, (n - 1) // 4 + 1 (n // 4 for a non-causal AE such as the DC-AE)."""
    check_frame_count(num_frames)
    if num_frames == 1:
        return 1
    if not causal:
        return num_frames // temporal_reduction
    return _causal_vae(temporal_reduction).latent_frames(num_frames)


def decoded_frames(latent_t: int, *, temporal_reduction: int = VAE_TEMPORAL) -> int:
    """Frames the causal VAE decodes from ``latent_t`` latent frames: 4 (T - 1) + 1."""
    return _causal_vae(temporal_reduction).decoded_frames(latent_t)


def check_num_frames(num_frames: int, *, temporal_reduction: int = VAE_TEMPORAL) -> None:
    """Raise unless num_frames = 4k+1 (others decode to fewer frames than asked); warn above 129."""
    _causal_vae(temporal_reduction).check_num_frames(num_frames)
    if num_frames > MAX_FRAMES:
        logger.warning("num_frames=%d exceeds %d, the longest video Open-Sora 2.0 was trained on", num_frames,
                       MAX_FRAMES)


def vae_latent_size(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent (T, H, W) of the Hunyuan VAE for a pixel video: ((T-1)//4+1, (H-1)//8+1, (W-1)//8+1)."""
    return HUNYUAN_VAE.latent_size(frames, height, width)


# ---------------------------------------------------------------------------
# Latent / token geometry of one generation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentShape:
    """The noise latent of one generation: [batch, channels, frames, height, width] (latent units)."""

    batch: int
    channels: int
    frames: int
    height: int
    width: int
    patch_size: int = 2

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.channels, self.frames, self.height, self.width)

    @property
    def tokens_per_frame(self) -> int:
        """Image tokens per latent frame: the ``image_seq_len`` of the shifted schedule."""
        return (self.height * self.width) // self.patch_size**2

    @property
    def tokens(self) -> int:
        return self.frames * self.tokens_per_frame


def latent_shape(batch: int, height: int, width: int, num_frames: int, *,
                 channels: int = HUNYUAN_VAE.latent_channels, patch_size: int = 2,
                 spatial_compression: int = SPATIAL_COMPRESSION, temporal_reduction: int = VAE_TEMPORAL,
                 causal: bool = True) -> LatentShape:
    """Noise latent for a pixel size (``get_noise``): [B, 16, T, p*ceil(H/16), p*ceil(W/16)]."""
    return LatentShape(
        batch=batch,
        channels=channels,
        frames=latent_frames(num_frames, temporal_reduction=temporal_reduction, causal=causal),
        height=patch_size * math.ceil(height / spatial_compression),
        width=patch_size * math.ceil(width / spatial_compression),
        patch_size=patch_size,
    )


__all__ = [
    "ASPECT_RATIOS",
    "LatentShape",
    "MAX_FRAMES",
    "RESOLUTIONS",
    "aspect_ratio_sizes",
    "check_num_frames",
    "closest_aspect_ratio",
    "check_size",
    "decoded_frames",
    "image_size",
    "latent_frames",
    "latent_shape",
    "resolution_pixels",
    "round_up_size",
    "sampling_size",
    "training_buckets",
    "vae_latent_size",
]
