"""Per-batch size/fps arguments of STDiT2 (v1.1) and STDiT3 (v1.2).

Both models take the generated clip's height, width, frame count, aspect ratio
and fps as extra [B] tensors (``prepare_multi_resolution_info`` in
opensora/utils/inference_utils.py, mode "STDiT2"/"OpenSora"). STDiT3 embeds
``fps`` and scales its positional embedding by sqrt(height * width); the v1.2
rectified-flow scheduler reads ``height``, ``width`` and ``num_frames`` for its
resolution-dependent timestep shift; STDiT2 embeds all five.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .geometry import IMG_FPS


@dataclass(frozen=True)
class SizeArgs:
    """One sample's size/fps model arguments; the field names are the models' keyword names."""

    height: float  # pixel height of the generated (or training) clip
    width: float  # pixel width
    num_frames: float  # pixel frames
    ar: float  # aspect ratio (H / W at inference)
    fps: float  # frames per second the model is conditioned on

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


MODEL_ARG_NAMES = tuple(field.name for field in dataclasses.fields(SizeArgs))  # height, width, num_frames, ar, fps


def multi_resolution_args(
    batch_size: int,
    image_size: tuple[int, int],
    num_frames: int,
    fps: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """``height``, ``width``, ``num_frames``, ``ar`` (= H / W) and ``fps`` as [B] tensors.

    ``image_size`` is (height, width) in pixels. A single image (``num_frames == 1``)
    is given ``fps = IMG_FPS`` (120), as in training. Pass the model's dtype.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = image_size
    fps = fps if num_frames > 1 else IMG_FPS
    values = SizeArgs(height=height, width=width, num_frames=num_frames, ar=height / width, fps=fps).as_dict()
    return {name: torch.full((batch_size,), value, dtype=dtype, device=device) for name, value in values.items()}


__all__ = ["MODEL_ARG_NAMES", "SizeArgs", "multi_resolution_args"]
