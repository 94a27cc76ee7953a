"""Latent geometry and size tables: the one place for sizes, frame counts and resolution tables.

Everything that converts between pixel space and latent space lives here, so the VAEs, the samplers, the
reference-frame conditioning, the nodes and the trainer agree:

* :mod:`.latent`: :class:`LatentGeometry` (per-frame, chunked and causal VAEs) and one constant per
  released VAE (:data:`PER_FRAME`, :data:`VAE_V1_2`, :data:`OSP_CAUSAL_VAE`, :data:`OSP_WF_VAE`,
  :data:`HUNYUAN_VAE`);
* :mod:`.opensora_v1`: the Open-Sora v1.x resolution / aspect-ratio tables and named durations;
* :mod:`.open_sora_plan`: the Open-Sora-Plan v1.3 size rules (4n+1 frames, sides multiple of 16);
* :mod:`.opensora_v2`: the Open-Sora 2.0 size tables and the latent shape of a generation.

The package namespace holds :mod:`.latent` and the v1.x tables (their long-standing names); the per-system
size rules of Open-Sora-Plan and Open-Sora 2.0 are imported from their modules.
"""

from .latent import (
    HUNYUAN_VAE,
    OSP_CAUSAL_VAE,
    OSP_WF_VAE,
    PER_FRAME,
    SPATIAL_FACTOR,
    V1_2_MICRO_FRAMES,
    VAE_V1_2,
    DecodeChunk,
    EncodeChunk,
    LatentGeometry,
    check_frame_count,
)
from .opensora_v1 import (
    IMG_FPS,
    aspect_ratio_table,
    closest_ratio,
    closest_ratio_key,
    image_size,
    named_aspect_ratios,
    named_durations,
    official_sizes,
    num_frames_from_duration,
    resolution_pixels,
    resolutions,
)

__all__ = [
    "DecodeChunk",
    "EncodeChunk",
    "HUNYUAN_VAE",
    "IMG_FPS",
    "LatentGeometry",
    "OSP_CAUSAL_VAE",
    "OSP_WF_VAE",
    "official_sizes",
    "PER_FRAME",
    "SPATIAL_FACTOR",
    "V1_2_MICRO_FRAMES",
    "VAE_V1_2",
    "aspect_ratio_table",
    "check_frame_count",
    "closest_ratio",
    "closest_ratio_key",
    "image_size",
    "named_aspect_ratios",
    "named_durations",
    "num_frames_from_duration",
    "resolution_pixels",
    "resolutions",
]
