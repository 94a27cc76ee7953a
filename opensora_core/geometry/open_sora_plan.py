"""Open-Sora-Plan v1.3 sizes (WF-VAE 4x8x8 + OpenSoraT2V_v1_3 / OpenSoraInpaint_v1_3, patch 1x2x2).

The frame arithmetic is the causal VAE's (:data:`~.latent.OSP_WF_VAE`): the pipeline's ``check_inputs``
takes num_frames = 4n+1 (1, 29, 45, 61, 77, 93, ...) and ``prepare_latents`` makes (num_frames - 1) // 4 + 1
latent frames. Pixel sides must be multiples of 16 (VAE 8 x patch 2; the official patch embedding floors
otherwise and the pipelines then fail); the release was trained on a 32-pixel grid (--hw_stride 32, README
note [3]), so 32 is the multiple to prefer.
"""

from __future__ import annotations

import logging

from .latent import OSP_WF_VAE, SPATIAL_FACTOR, check_frame_count

log = logging.getLogger("opensora")

OSP_V1_3_VAE = OSP_WF_VAE  # the VAE of the v1.3 release
OSP_V1_3_PATCH = 2  # transformer patch over the latent height and width
OSP_V1_3_SIDE_MULTIPLE = SPATIAL_FACTOR * OSP_V1_3_PATCH
OSP_V1_3_TRAINED_SIDE_MULTIPLE = 32


def _nearest_multiples(value: int, multiple: int) -> str:
    below = value // multiple * multiple
    return " or ".join(str(v) for v in (below, below + multiple) if v >= multiple)


def check_osp_v1_3_size(num_frames: int, height: int, width: int,
                        side_multiple: int = OSP_V1_3_SIDE_MULTIPLE) -> None:
    """Raise ``ValueError`` (with the nearest valid values) unless the video size works with Open-Sora-Plan v1.3:
    num_frames = 4n+1 and height/width multiples of ``side_multiple`` (16 required; pass
    :data:`OSP_V1_3_TRAINED_SIDE_MULTIPLE` to hold to the training grid)."""
    check_frame_count(num_frames)
    if side_multiple % OSP_V1_3_SIDE_MULTIPLE:
        raise ValueError(f"side_multiple must be a multiple of {OSP_V1_3_SIDE_MULTIPLE}, got {side_multiple}")
    problems = []
    if not OSP_V1_3_VAE.accepts_frames(num_frames):
        below, above = OSP_V1_3_VAE.nearest_frame_counts(num_frames)
        problems.append(f"num_frames {num_frames} is not 4n+1 (nearest: {below} or {above})")
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or value < side_multiple or value % side_multiple:
            problems.append(f"{name} {value} is not a multiple of {side_multiple} "
                            f"(nearest: {_nearest_multiples(int(value), side_multiple)})")
    if problems:
        raise ValueError("Open-Sora-Plan v1.3 size: " + "; ".join(problems))


def check_osp_v1_3_request(num_frames: int, height: int, width: int) -> None:
    """The family's size check: :func:`check_osp_v1_3_size` (4n+1 frames, sides multiples of 16), and a warning
    when a side is off the 32-pixel training grid (the release README asks for multiples of 32)."""
    check_osp_v1_3_size(num_frames, height, width)
    off = [f"{name} {value}" for name, value in (("height", height), ("width", width))
           if value % OSP_V1_3_TRAINED_SIDE_MULTIPLE]
    if off:
        log.warning("Open-Sora-Plan v1.3 was trained on sides that are multiples of %d; %s is not (nearest: %s)",
                    OSP_V1_3_TRAINED_SIDE_MULTIPLE, " and ".join(off),
                    ", ".join(_nearest_multiples(v, OSP_V1_3_TRAINED_SIDE_MULTIPLE) for v in (height, width)
                              if v % OSP_V1_3_TRAINED_SIDE_MULTIPLE))


def osp_v1_3_latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, H, W) of the v1.3 latent after :func:`check_osp_v1_3_size` (``prepare_latents``)."""
    check_osp_v1_3_size(num_frames, height, width)
    return OSP_V1_3_VAE.latent_size(num_frames, height, width)


__all__ = [
    "OSP_V1_3_PATCH",
    "OSP_V1_3_SIDE_MULTIPLE",
    "OSP_V1_3_TRAINED_SIDE_MULTIPLE",
    "OSP_V1_3_VAE",
    "check_osp_v1_3_request",
    "check_osp_v1_3_size",
    "osp_v1_3_latent_size",
]
