"""The dataset side of training: the metadata CSV, clips planned per epoch, frame reading, size arguments.

A *clip* is one metadata row placed in a bucket for one epoch: the bucket fixes (T, H, W) and a
random window fixes which source frames are read. Frames are taken as the official
``temporal_random_crop`` does (opensora/datasets/utils.py, v1.1/v1.2): a window of
T * frame_interval frames starting at a random frame, T indices spread evenly over it; the frames
are resized to cover (H, W) and centre-cropped (:func:`opensora_core.media.resize_cover_crop`,
bilinear for videos, bicubic for images) and scaled to [-1, 1].
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opensora_core import media
from opensora_core.families import Training
from opensora_core.geometry import IMG_FPS
from opensora_core.model_args import SizeArgs

from .buckets import BucketKey, BucketTable
from .prepare import resolve_path
from .rng import mix_seed

log = logging.getLogger("opensora")

REQUIRED_COLUMNS = ("path", "text", "num_frames", "height", "width")
DEFAULT_FPS = 24.0  # official dataset default when a video does not say


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataEntry:
    row: int
    path: Path
    text: str
    num_frames: int
    height: int
    width: int
    fps: float  # 0 when unknown
    start_frame: int = 0  # a scene of a longer video (``prepare --scene-cut --scene-rows``): its first frame
    captions: Any = None  # the dataset's CaptionOptions (train/datasets.py) when its captions vary per epoch

    @property
    def is_image(self) -> bool:
        return media.is_image_path(self.path)


def read_metadata(csv_path: str | Path) -> list[MetadataEntry]:
    """Rows of a metadata CSV (``prepare``'s output or the official format); relative paths are
    relative to the CSV. Errors name the row and column."""
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; run `opensora-train prepare` to build the CSV"
            )
        return [_entry(i, row, csv_path) for i, row in enumerate(reader)]


def _entry(i: int, row: dict, csv_path: Path) -> MetadataEntry:
    try:
        fps = float(row.get("fps") or 0)
        values = {k: int(float(row[k])) for k in ("num_frames", "height", "width")}
        start = int(float(row.get("start_frame") or 0))
    except ValueError as err:
        raise ValueError(f"{csv_path}: row {i + 2}: not a number ({err})") from None
    return MetadataEntry(i, resolve_path(row["path"], csv_path.parent), row["text"], fps=fps, start_frame=start,
                         **values)


# ---------------------------------------------------------------------------
# Clips per epoch
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One metadata row at one bucket size with a fixed frame window."""

    entry: MetadataEntry
    bucket: BucketKey
    num_frames: int  # T of the bucket (pixel frames)
    height: int
    width: int
    frames: tuple[int, ...]  # frame indices in the file (start_frame included), empty for an image
    epoch: int  # the epoch (variant) this clip was planned for

    @property
    def is_image(self) -> bool:
        return self.entry.is_image


def frame_window(total: int, num_frames: int, interval: int, rng: random.Random) -> tuple[int, ...]:
    """Source frames of a clip: a random window of num_frames * interval frames, num_frames indices
    spread evenly over it (``TemporalRandomCrop`` + ``np.linspace(..., dtype=int)``)."""
    size = num_frames * interval
    begin = rng.randint(0, max(0, total - size - 1))
    end = min(begin + size, total)
    return tuple(int(i) for i in np.linspace(begin, end - 1, num_frames, dtype=int))


def plan_epoch(entries: list[MetadataEntry], table: BucketTable, frame_interval: int, seed: int,
               epoch: int) -> list[Clip | None]:
    """Each entry's clip for ``epoch`` (None when it fits no bucket), reproducible from ``seed``."""
    return [plan_clip(entry, table, frame_interval, seed, epoch) for entry in entries]


def plan_clip(entry: MetadataEntry, table: BucketTable, frame_interval: int, seed: int, epoch: int) -> Clip | None:
    """One entry's clip for ``epoch``: its bucket (official draws) and its frame window."""
    T = 1 if entry.is_image else entry.num_frames
    key = table.assign(T, entry.height, entry.width, frame_interval, table.sample_seed(seed, epoch, entry.row))
    if key is None:
        return None
    t, h, w = table.size(key)
    frames = () if entry.is_image else frame_window(
        entry.num_frames, t, frame_interval, random.Random(mix_seed(seed, "window", epoch, entry.row))
    )
    frames = tuple(entry.start_frame + i for i in frames)  # frames of the file (a scene row starts later)
    if entry.captions is not None:  # a datasets.CaptionOptions
        entry = dataclasses.replace(entry, text=entry.captions.variant(entry.text, entry.row, seed, epoch))
    return Clip(entry, key, t, h, w, frames, epoch)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_clip(clip: Clip) -> torch.Tensor:
    """The clip's frames as (3, T, H, W) float32 in [-1, 1]."""
    path = clip.entry.path
    if clip.is_image:
        frames, _ = media.read_frames(path, max_frames=1)
        mode = "bicubic"
    else:
        start, stop = clip.frames[0], clip.frames[-1] + 1
        decoded, _ = media.read_frames(path, start=start, max_frames=stop - start)
        if decoded.shape[0] < stop - start:
            raise media.MediaError(
                f"{path}: only {start + decoded.shape[0]} frames could be decoded but the CSV says "
                f"{clip.entry.start_frame + clip.entry.num_frames}; run `opensora-train prepare` again"
            )
        frames = decoded[[i - start for i in clip.frames]]  # (T, H, W, 3)
        mode = "bilinear"
    fitted = media.resize_cover_crop(frames, clip.height, clip.width, mode=mode)
    return media.to_model_range(fitted)  # (3, T, H, W)


def size_args(clip: Clip, training: Training, frame_interval: int, ar: str = "official") -> dict[str, float]:
    """The model's per-sample height/width/num_frames/ar/fps for a clip, as the official datasets give them.

    ``training`` is the family's declaration: ``aspect_ratio`` is the ``ar`` convention of its official
    dataset (v1.2: H/W; v1.1: W/H, a training quirk that ``ar="height/width"`` replaces by the inference
    convention), ``fps_per_frame_interval`` whether fps is the source fps // frame_interval (v1.2) or the
    source fps (v1.1). Images: fps = 120 (IMG_FPS); unknown video fps: 24.
    """
    height, width = float(clip.height), float(clip.width)
    source_fps = clip.entry.fps or DEFAULT_FPS
    if clip.is_image:
        fps = float(IMG_FPS)
    elif training.fps_per_frame_interval:
        fps = float(source_fps // frame_interval)
    else:
        fps = source_fps
    width_over_height = training.aspect_ratio == "width/height" and ar == "official"
    ratio = width / height if width_over_height else height / width
    return SizeArgs(height=height, width=width, num_frames=float(clip.num_frames), ar=ratio, fps=fps).as_dict()


__all__ = [
    "Clip", "MetadataEntry", "frame_window", "plan_clip", "plan_epoch", "read_clip", "read_metadata", "size_args",
]
