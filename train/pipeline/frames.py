"""Reading the frames stages need: one decode pass per file, however many clips and stages read it.

Each stage (a :class:`Stage`) names the frames it reads from a clip; :func:`read_clip_frames` decodes the
file once (:func:`opensora_core.media.iter_frames`), keeps only those frames (shrunk to at most
``MAX_SIDE`` pixels on the long side) and hands each clip its frames as soon as its last one has been
decoded, so a long video with many scenes streams through in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from opensora_core import media

from .clips import ClipSpec

MAX_SIDE = 1024  # frames are kept at most this large on the long side (OCR still reads subtitles)

Frames = dict[int, np.ndarray]  # frame index in the clip -> (H, W, 3) uint8 RGB


class Stage(Protocol):
    """A per-clip stage: scores, a caption or a thumbnail from a few frames of the clip."""

    name: str  # "motion", "text", ...
    columns: tuple[str, ...]  # the values it returns (metadata CSV columns)

    def cache_id(self) -> str:
        """The stage and the options that change its results (finished work is reused for the same id)."""
        ...

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        """What its result for the clip depends on besides the options (the clip's file and frames, ...)."""
        ...

    def frames(self, clip: ClipSpec) -> list[int]:
        """Indices (in the clip) of the frames it reads."""
        ...

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        """Its values for the clip; ``values`` holds what earlier stages found for it (e.g. the caption)."""
        ...


def shrink(frame: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """(H, W, 3) uint8 resized (antialiased) so its long side is at most ``max_side``."""
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def read_clip_frames(path: Path, clips: Sequence[ClipSpec], wanted: Callable[[ClipSpec], list[int]],
                     on_clip: Callable[[ClipSpec, Frames], None]) -> list[tuple[ClipSpec, str]]:
    """Decode ``path`` once; call ``on_clip(clip, frames)`` for every clip when its frames are in.

    Returns the clips whose frames could not all be decoded, with the reason.
    """
    if media.is_image_path(path):
        frames, _ = media.read_frames(path, max_frames=1)
        image = shrink(frames[0].numpy())
        for clip in clips:
            on_clip(clip, {0: image})
        return []
    needs: dict[int, list[tuple[ClipSpec, int]]] = {}
    last: dict[str, int] = {}
    for clip in clips:
        indices = wanted(clip)
        for i in indices:
            needs.setdefault(clip.start + i, []).append((clip, i))
        last[clip.name] = clip.start + max(indices)
    held: dict[str, Frames] = {clip.name: {} for clip in clips}
    done: set[str] = set()
    decoded = -1
    for index, frame in media.iter_frames(path, start=min(needs), stop=max(needs) + 1):
        decoded = index
        if index not in needs:
            continue
        small = shrink(frame)
        for clip, i in needs[index]:
            held[clip.name][i] = small
            if last[clip.name] == index:
                on_clip(clip, held.pop(clip.name))
                done.add(clip.name)
    return [(clip, f"only {decoded + 1} frame(s) could be decoded, the clip ends at frame {clip.stop}")
            for clip in clips if clip.name not in done]


__all__ = ["MAX_SIDE", "Frames", "Stage", "read_clip_frames", "shrink"]
