"""What the pipeline works on: a clip (a frame range of a file), and the frames a stage reads from it.

A clip is a whole file (a folder of clips, or the files the scene cut wrote) or a ``start..stop`` range of
a long video (scene cut in rows mode). Stages name the frames they read as positions in the clip;
:func:`point_index` turns the official "points" (fractions of the clip, ``tools/datasets/utils.py``
``extract_frames``: ``int(point * num_frames)``) into frame indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opensora_core import media


@dataclass(frozen=True)
class ClipSpec:
    name: str  # unique in a run: the file stem, or "<stem>_scene-<i>" for a scene of a long video
    path: Path  # the file holding the frames (a clip file, or the long video in rows mode)
    start: int  # first frame of the clip in ``path``
    stop: int  # one past its last frame
    fps: float
    height: int
    width: int
    caption: str  # "" = none yet
    source: Path  # the file the clip came from (``path`` unless the scene cut wrote it)

    @property
    def num_frames(self) -> int:
        return self.stop - self.start

    @property
    def is_image(self) -> bool:
        return media.is_image_path(self.path)

    def key(self) -> str:
        """Identity for reusing finished work: the file (name, size, mtime) and the frame range."""
        return f"{fingerprint(self.path)}|{self.start}|{self.stop}"


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def point_index(point: float, num_frames: int) -> int:
    """Frame of a clip at ``point`` in [0, 1): ``int(point * num_frames)``, clamped to the last frame."""
    return min(int(point * num_frames), num_frames - 1)


def points_to_indices(points: tuple[float, ...], num_frames: int) -> list[int]:
    return sorted({point_index(p, num_frames) for p in points})


def evenly_spaced(count: int, num_frames: int) -> list[int]:
    """``count`` frames from the first to the last (fewer when the clip is shorter)."""
    if num_frames <= 1 or count <= 1:
        return [0]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


__all__ = ["ClipSpec", "evenly_spaced", "fingerprint", "point_index", "points_to_indices"]
