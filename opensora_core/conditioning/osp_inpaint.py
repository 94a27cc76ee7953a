"""Condition of the Open-Sora-Plan v1.3 image-to-video / inpainting model, as pure functions.

``OpenSoraInpaint_v1_3`` reads 12 extra input channels: the masked latent (the WF-VAE latent of the
video with the frames to generate blacked out to -1) and a 4-channel latent mask. Follows
opensora/utils/mask_utils.py (``MaskType``, the mask generators, ``MaskCompressor``) and
opensora/sample/pipeline_inpaint.py (``get_mask_type_cond_indices``, ``get_masked_pixel_values_mask``,
the resize transforms of opensora/dataset/transform.py) @v1.3.1; table: tables/inpaint_masks.json.

Pixel-mask convention: 1 = frame to generate, 0 = given frame. Steps::

    kind, indices = resolve_mask_type("images", 1, num_frames=93)          # (MaskType.i2v, [0])
    frames = center_crop_resize(image_uint8, 352, 640)                    # (1, 3, 352, 640) uint8
    pixels = inpaint_pixels(frames, 93, kind, indices)                     # pixel mask + masked pixels
    cond = build_inpaint_condition(pixels, encode)                         # encode: the WF-VAE wrapper
    model_input = torch.cat([scaled_latent, cond.channels()], dim=1)       # see sampling.ConcatCondition

The random mask types (continuation, random_temporal) draw from a ``random.Random`` you pass: seeded
with s it reproduces the official code after ``random.seed(s)`` (the official code uses Python's
global ``random``).
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry.open_sora_plan import OSP_V1_3_VAE

# ==================================================================================================
# Mask types
# ==================================================================================================


class MaskType(enum.Enum):
    """mask_utils.py ``MaskType`` (values as the official ``auto()``)."""

    t2iv = 1  # nothing given (text to video / image)
    i2v = 2  # frame 0 given
    transition = 3  # first and last frame given
    continuation = 4  # frames [0, end) given, end drawn between floor(T*min) and ceil(T*max)
    clear = 5  # every frame given
    random_temporal = 6  # n frames (n drawn like end) chosen at random are given


INFERENCE_CLEAR_RATIOS = (0.5, 0.5)  # OpenSoraInpaintPipeline: MaskProcessor(min_clear_ratio=0.5, max_clear_ratio=0.5)
TRAINING_CLEAR_RATIOS = (0.0, 1.0)  # scripts/train_configs/mask_config.yaml
# scripts/train_configs/mask_config.yaml, videos (normalised to probabilities by random.choices)
TRAINING_VIDEO_MASK_WEIGHTS = {
    MaskType.t2iv: 1, MaskType.i2v: 8, MaskType.transition: 8,
    MaskType.continuation: 2, MaskType.clear: 0, MaskType.random_temporal: 1,
}
MASK_CHANNELS = 4  # latent mask channels = the VAE's temporal stride (vae_scale_factor_t)
# WF-VAE (t, h, w) compression
DEFAULT_STRIDES = (OSP_V1_3_VAE.time_factor, OSP_V1_3_VAE.spatial_factor, OSP_V1_3_VAE.spatial_factor)
DEFAULT_MAX_HXW = 236544  # pipeline default: 480 x 480 pixels
DEFAULT_HW_STRIDE = 32  # pipeline default (the training grid)
_RANDOM_TYPES = (MaskType.continuation, MaskType.random_temporal)


def parse_mask_type(value: str | MaskType) -> MaskType:
    """A :class:`MaskType` from itself or its name ("i2v", "continuation", ...)."""
    if isinstance(value, MaskType):
        return value
    if value not in MaskType.__members__:
        raise ValueError(f"unknown mask type {value!r}; use one of {', '.join(MaskType.__members__)}")
    return MaskType[value]


def _clear_count(num_frames: int, min_ratio: float, max_ratio: float, rng: random.Random) -> int:
    if not 0 <= min_ratio <= max_ratio <= 1:
        raise ValueError(f"clear ratios must satisfy 0 <= min <= max <= 1, got {min_ratio}, {max_ratio}")
    return rng.randint(math.floor(num_frames * min_ratio), math.ceil(num_frames * max_ratio))


def frame_mask(
    mask_type: str | MaskType,
    num_frames: int,
    *,
    rng: random.Random | None = None,
    clear_ratios: tuple[float, float] = INFERENCE_CLEAR_RATIOS,
) -> torch.Tensor:
    """(T,) float32 per-frame pixel mask of a mask type (1 = generate, 0 = given).

    ``rng`` is required for continuation / random_temporal (one ``randint``, then for random_temporal
    one ``sample(range(T), n)``, as the official generators draw).
    """
    kind = parse_mask_type(mask_type)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if kind in _RANDOM_TYPES and rng is None:
        raise ValueError(f"mask type {kind.name} draws at random: pass rng=random.Random(seed)")
    mask = torch.ones(num_frames)
    if kind == MaskType.i2v:
        mask[0] = 0
    elif kind == MaskType.transition:
        mask[0] = mask[-1] = 0
    elif kind == MaskType.continuation:
        mask[: _clear_count(num_frames, *clear_ratios, rng)] = 0
    elif kind == MaskType.clear:
        mask.zero_()
    elif kind == MaskType.random_temporal:
        mask[rng.sample(range(num_frames), _clear_count(num_frames, *clear_ratios, rng))] = 0
    return mask


def choose_mask_type(weights: Mapping[MaskType, float], rng: random.Random) -> MaskType:
    """Training: one type drawn with ``rng.choices`` (``MaskProcessor`` with ``mask_type_ratio_dict``)."""
    if not weights:
        raise ValueError("mask type weights are empty")
    return rng.choices(list(weights), list(weights.values()))[0]


def resolve_mask_type(
    kind: str,
    count: int,
    num_frames: int,
    mask_type: str | MaskType | None = None,
    indices: Sequence[int] | None = None,
) -> tuple[MaskType, list[int] | None]:
    """The pipeline's defaults (``get_mask_type_cond_indices``): ``kind`` "images" or "video", ``count``
    condition files. One image: i2v at [0]; two: transition at [0, -1]; three or more: random_temporal,
    indices required; a video: continuation. An explicit ``mask_type`` overrides the type only."""
    chosen = None if mask_type is None else parse_mask_type(mask_type)
    indices = None if indices is None else [int(i) for i in indices]
    if indices is not None and len(indices) != count:
        raise ValueError(f"give one frame index per condition: {count} conditions, indices {indices}")
    if kind == "video":
        return chosen or MaskType.continuation, indices
    if kind != "images":
        raise ValueError(f"condition kind must be 'images' or 'video', got {kind!r}")
    defaults = {1: (MaskType.i2v, [0]), 2: (MaskType.transition, [0, -1])}
    if count in defaults:
        default_type, default_indices = defaults[count]
        return chosen or default_type, (indices or default_indices) if num_frames > 1 else indices
    if num_frames > 1 and indices is None:
        raise ValueError(f"{count} condition images need their frame indices (conditional_pixel_values_indices)")
    if chosen is None and num_frames == 1:
        raise ValueError(f"{count} condition images for a single frame: pass the mask type")
    return chosen or MaskType.random_temporal, indices


# ==================================================================================================
# Pixel condition
# ==================================================================================================


@dataclass(frozen=True)
class InpaintPixels:
    """What the VAE and the mask compressor receive, for one sample.

    pixel_mask:    (1, 1, T, H, W) float, 1 = frame to generate
    masked_pixels: (1, 3, T, H, W) in [-1, 1]; frames to generate are -1 (black), not 0
    """

    pixel_mask: torch.Tensor
    masked_pixels: torch.Tensor


def _to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 values -> [-1, 1] as the pipeline's video transform: x / 255, then 2x - 1."""
    return 2.0 * (pixels / 255.0) - 1.0


def pack_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> InpaintPixels:
    """(T, 3, H, W) 0..255 pixels and (T, 1, H, W) mask (1 = generate) -> masked (hidden frames -1),
    normalised, in the (1, C, T, H, W) layout."""
    masked = _to_unit_range(pixels * (mask < 0.5))  # (T, 3, H, W)
    return InpaintPixels(pixel_mask=mask.transpose(0, 1)[None], masked_pixels=masked.transpose(0, 1)[None])


def inpaint_pixels(
    condition: torch.Tensor,
    num_frames: int,
    mask_type: str | MaskType,
    indices: Sequence[int] | None = None,
    *,
    rng: random.Random | None = None,
    clear_ratios: tuple[float, float] = INFERENCE_CLEAR_RATIOS,
    dtype: torch.dtype = torch.float32,
) -> InpaintPixels:
    """Pixel mask and masked pixels from condition frames (N, 3, H, W) with values 0..255 (uint8).

    N == num_frames (a video, or one image for one frame): the mask of ``mask_type``. Otherwise (images):
    the frames go to ``indices`` (Python indices, -1 = last) of an all-zero video and the mask is 1
    except 0 there; ``mask_type`` does not shape the mask on this path (official behaviour).
    """
    if condition.dim() != 4 or condition.shape[1] != 3:
        raise ValueError(f"condition frames must be (N, 3, H, W) with values 0..255, got {tuple(condition.shape)}")
    pixels = condition.to(dtype)
    N, _, H, W = pixels.shape
    if N == num_frames:
        mask = frame_mask(mask_type, num_frames, rng=rng, clear_ratios=clear_ratios).to(pixels)
        return pack_pixels(pixels, mask[:, None, None, None].expand(N, 1, H, W).contiguous())
    if indices is None or len(indices) != N:
        raise ValueError(f"{N} condition frames for a {num_frames}-frame video need {N} frame indices, got {indices}")
    if any(not -num_frames <= i < num_frames for i in indices):
        raise ValueError(f"condition indices {list(indices)} are outside a {num_frames}-frame video")
    video = torch.zeros(num_frames, 3, H, W, dtype=dtype, device=pixels.device)
    mask = torch.ones(num_frames, 1, H, W, dtype=dtype, device=pixels.device)
    video[list(indices)] = pixels
    mask[list(indices)] = 0
    return pack_pixels(video, mask)


# ==================================================================================================
# Latent condition
# ==================================================================================================


def compress_mask(pixel_mask: torch.Tensor, strides: tuple[int, int, int] = DEFAULT_STRIDES) -> torch.Tensor:
    """``MaskCompressor``: (B, 1, T, H, W) pixel mask -> (B, st, t, H/sh, W/sw) latent mask.

    Each frame is resized bilinearly (align_corners False, no antialias) to the latent size; for odd T the
    first frame is repeated st times in front; frames are grouped by st and the group axis becomes the
    channel axis: channel c of latent frame j is pixel frame st*j + c - (st - 1) (frame 0 for j = 0).
    """
    st, sh, sw = strides
    B, C, T, H, W = pixel_mask.shape
    if C != 1:
        raise ValueError(f"pixel mask must have one channel (B, 1, T, H, W), got {tuple(pixel_mask.shape)}")
    if (T % 2 == 1 and (T - 1) % st) or (T % 2 == 0 and T % st):
        raise ValueError(f"{T} frames cannot be grouped by {st}: use {st}n+1 frames")
    h, w = H // sh, W // sw
    frames = pixel_mask.transpose(1, 2).reshape(B * T, 1, H, W)
    small = F.interpolate(frames, size=(h, w), mode="bilinear").view(B, T, h, w)  # (B, T, h, w)
    if T % 2 == 1:
        small = torch.cat([small[:, :1].expand(B, st, h, w), small[:, 1:]], dim=1)  # (B, T+st-1, h, w)
    return small.reshape(B, -1, st, h, w).transpose(1, 2).contiguous()  # (B, st, t, h, w)


EncodeFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, 3, T, H, W) pixels in [-1, 1] -> (B, C, t, h, w) diffusion latent: the WF-VAE wrapper's ``encode``
(a posterior sample, then (z - shift) * scale; it casts to its own dtype)."""


@dataclass(frozen=True)
class InpaintCondition:
    """The extra channels of ``OpenSoraInpaint_v1_3``: masked_latent (B, C, t, h, w), latent_mask (B, 4, t, h, w)."""

    masked_latent: torch.Tensor
    latent_mask: torch.Tensor

    def channels(self) -> torch.Tensor:
        """(B, C + 4, t, h, w): what follows the noisy latent in the model input."""
        return torch.cat([self.masked_latent, self.latent_mask], dim=1)


def build_inpaint_condition(
    pixels: InpaintPixels,
    encode: EncodeFn,
    *,
    batch: int = 1,
    strides: tuple[int, int, int] = DEFAULT_STRIDES,
    dtype: torch.dtype = torch.float32,
) -> InpaintCondition:
    """Masked latent and latent mask for ``batch`` samples (the pipeline repeats the pixels, so each sample
    gets its own posterior draw). Not duplicated for guidance (:class:`~opensora_core.sampling.guidance.ConcatCondition`
    tiles it)."""
    masked = pixels.masked_pixels.repeat(batch, 1, 1, 1, 1)  # (B, 3, T, H, W)
    latent = encode(masked)  # (B, C, t, h, w)
    mask = compress_mask(pixels.pixel_mask.repeat(batch, 1, 1, 1, 1), strides)  # (B, st, t, h, w)
    if latent.shape[2:] != mask.shape[2:]:
        raise ValueError(f"the encoder gave a latent of {tuple(latent.shape)}, the mask compresses to "
                         f"{tuple(mask.shape)}: VAE strides and {strides} differ")
    return InpaintCondition(masked_latent=latent.to(dtype), latent_mask=mask.to(dtype))


# ==================================================================================================
# Resizing condition frames (pipeline __call__)
# ==================================================================================================


def center_crop_box(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centre crop to the target aspect ratio (``center_crop_th_tw``, no top crop):
    the kept side is int()-truncated, offsets round((size - kept) / 2)."""
    ratio = target_h / target_w
    if height / width > ratio:
        new_h, new_w = int(width * ratio), width
    else:
        new_h, new_w = height, int(height / ratio)
    return round((height - new_h) / 2.0), round((width - new_w) / 2.0), new_h, new_w


def center_crop_resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``CenterCropResizeVideo((height, width))``: centre crop to the aspect ratio, then bilinear resize with
    align_corners=True and antialias, applied to the tensor as given (uint8 in the pipeline, so torch's
    uint8 kernel rounds). frames (N, 3, H, W) -> (N, 3, height, width)."""
    top, left, h, w = center_crop_box(frames.shape[-2], frames.shape[-1], height, width)
    crop = frames[..., top : top + h, left : left + w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True, antialias=True)


def max_area_size(height: int, width: int, max_hxw: int = DEFAULT_MAX_HXW) -> tuple[int, int]:
    """``maxhwresize``: scale (int-truncated) so that height * width <= max_hxw; smaller sizes are kept."""
    if height * width <= max_hxw:
        return height, width
    scale = np.sqrt(max_hxw / (height * width))
    return int(height * scale), int(width * scale)


def stride_crop(frames: torch.Tensor, stride: int = DEFAULT_HW_STRIDE) -> torch.Tensor:
    """``SpatialStrideCropVideo``: centre crop H and W down to multiples of ``stride`` (offsets floor)."""
    H, W = frames.shape[-2:]
    h, w = H // stride * stride, W // stride * stride
    top, left = (H - h) // 2, (W - w) // 2
    return frames[..., top : top + h, left : left + w]


def resize_condition_frames(
    conditions: Sequence[torch.Tensor],
    height: int | None = None,
    width: int | None = None,
    *,
    crop_for_hw: bool = False,
    max_hxw: int = DEFAULT_MAX_HXW,
    hw_stride: int = DEFAULT_HW_STRIDE,
) -> torch.Tensor:
    """Condition frames (each (N_i, 3, H_i, W_i) uint8) -> one (sum N_i, 3, h, w) tensor (pipeline ``__call__``).

    ``crop_for_hw`` (the release script): every condition to (height, width). Otherwise the size comes from
    the smallest condition: limited to ``max_hxw`` pixels, then centre-cropped to multiples of
    ``hw_stride``; the generated video then has that size.
    """
    if not conditions:
        raise ValueError("no condition frames given")
    if crop_for_hw:
        if height is None or width is None:
            raise ValueError("crop_for_hw needs height and width")
        return torch.cat([center_crop_resize(c, height, width) for c in conditions])
    size = max_area_size(min(c.shape[-2] for c in conditions), min(c.shape[-1] for c in conditions), max_hxw)
    return torch.cat([stride_crop(center_crop_resize(c, *size), hw_stride) for c in conditions])


__all__ = [
    "DEFAULT_HW_STRIDE",
    "DEFAULT_MAX_HXW",
    "DEFAULT_STRIDES",
    "INFERENCE_CLEAR_RATIOS",
    "MASK_CHANNELS",
    "TRAINING_CLEAR_RATIOS",
    "TRAINING_VIDEO_MASK_WEIGHTS",
    "EncodeFn",
    "InpaintCondition",
    "InpaintPixels",
    "MaskType",
    "build_inpaint_condition",
    "center_crop_box",
    "center_crop_resize",
    "choose_mask_type",
    "compress_mask",
    "frame_mask",
    "inpaint_pixels",
    "max_area_size",
    "pack_pixels",
    "parse_mask_type",
    "resize_condition_frames",
    "resolve_mask_type",
    "stride_crop",
]
