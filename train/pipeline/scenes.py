"""Scene cut: long videos split into clips at scene changes (PySceneDetect), with min/max clip length.

Follows the official v1.2 tools: ``tools/scene_cut/scene_detect.py`` detects scenes with
``AdaptiveDetector(adaptive_threshold=3.0)`` and ``start_in_scene=True`` (a video without a cut is one
scene); ``tools/scene_cut/cut.py`` (``split_video``, whose defaults we take: its command line passes no
limit) drops scenes shorter than ``min_seconds`` (2 s) and keeps the first ``max_seconds`` (15 s,
``round(fps * max_seconds)`` frames) of longer ones, and names the files ``<video>_scene-<i>.mp4``.
Clips keep the source's size and frame rate (the official cut re-encodes with ``--shorter_size 1080``). ``split_long`` (ours) cuts a long scene into consecutive
``max_seconds`` pieces instead (``<video>_scene-<i>-<k>.mp4``), so a long continuous shot is not lost.

Detection decodes with PySceneDetect's PyAV backend (the same decoder as the rest of the project);
clip files are written in one decode pass over the video (:class:`opensora_core.media.VideoWriter`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from opensora_core import media

from .deps import require


@dataclass(frozen=True)
class SceneOptions:
    threshold: float = 3.0  # AdaptiveDetector adaptive_threshold (official scene_detect.py)
    min_scene_frames: int = 15  # PySceneDetect's min_scene_len: no two cuts closer than this
    min_seconds: float = 2.0  # official cut.py: shorter scenes are dropped
    max_seconds: float = 15.0  # official cut.py: longer scenes keep their first max_seconds (0 = no limit)
    split_long: bool = False  # ours: long scenes become consecutive max_seconds pieces instead

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"--scene-threshold must be positive, got {self.threshold}")
        if self.min_seconds < 0 or self.max_seconds < 0:
            raise ValueError("--min-seconds and --max-seconds must be >= 0")
        if self.max_seconds and self.max_seconds < self.min_seconds:
            raise ValueError(f"--max-seconds ({self.max_seconds}) is below --min-seconds ({self.min_seconds})")

    def detection_id(self) -> str:
        return json.dumps({"threshold": self.threshold, "min_scene_frames": self.min_scene_frames})


@dataclass(frozen=True)
class ClipRange:
    scene: int  # index of the scene in the video
    part: int | None  # piece of a long scene (split_long), else None
    start: int
    stop: int

    def suffix(self) -> str:
        return f"_scene-{self.scene}" + ("" if self.part is None else f"-{self.part}")


def detect_scenes(path: Path, options: SceneOptions) -> list[tuple[int, int]]:
    """(first frame, one past the last frame) of every scene of a video, in order."""
    scenedetect = require("scenedetect", "scene cut")
    from scenedetect.backends.pyav import VideoStreamAv

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # its per-video INFO lines drown the progress bar
    video = VideoStreamAv(str(path), suppress_output=True)  # keep FFmpeg's own log quiet (PyAV's default)
    manager = scenedetect.SceneManager()
    manager.add_detector(scenedetect.AdaptiveDetector(adaptive_threshold=options.threshold,
                                                      min_scene_len=options.min_scene_frames))
    manager.detect_scenes(video, show_progress=False)
    return [(start.frame_num, end.frame_num) for start, end in manager.get_scene_list(start_in_scene=True)]


def clip_ranges(scenes: list[tuple[int, int]], fps: float, options: SceneOptions) -> tuple[list[ClipRange], int]:
    """The clips cut from the scenes (min/max length applied) and the number of scenes too short to keep."""
    min_frames = round(fps * options.min_seconds)
    max_frames = round(fps * options.max_seconds) if options.max_seconds else 0
    ranges, too_short = [], 0
    for i, (start, stop) in enumerate(scenes):
        if stop - start < max(min_frames, 1):
            too_short += 1
        elif not max_frames or stop - start <= max_frames:
            ranges.append(ClipRange(i, None, start, stop))
        elif not options.split_long:
            ranges.append(ClipRange(i, None, start, start + max_frames))
        else:
            pieces = range(start, stop, max_frames)
            ranges += [ClipRange(i, k, s, min(s + max_frames, stop)) for k, s in enumerate(pieces)
                       if min(s + max_frames, stop) - s >= max(min_frames, 1)]
    return ranges, too_short


def cut_clips(source: Path, ranges: list[ClipRange], folder: Path, fps: float) -> dict[ClipRange, Path]:
    """Write each range as ``<folder>/<video stem><suffix>.mp4`` in one decode pass; existing files are kept.

    Odd frame sizes lose their last row/column (H.264 needs even sizes). A video that decodes fewer
    frames than its header promised gives a shorter last clip (probe the files for their lengths).
    """
    paths = {r: folder / f"{source.stem}{r.suffix()}.mp4" for r in ranges}
    todo = sorted((r for r in ranges if not paths[r].is_file()), key=lambda r: r.start)
    if not todo:
        return paths
    writer, current = None, 0
    try:
        for index, frame in media.iter_frames(source, start=todo[0].start, stop=todo[-1].stop):
            while current < len(todo) and index >= todo[current].stop:
                if writer is not None:
                    writer.__exit__(None, None, None)
                writer, current = None, current + 1
            if current >= len(todo) or index < todo[current].start:
                continue
            if writer is None:
                h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
                writer = media.VideoWriter(paths[todo[current]], fps, h, w).__enter__()
            writer.write(frame[: writer.size[0], : writer.size[1]])
        if writer is not None:
            writer.__exit__(None, None, None)
            writer = None
    except BaseException as err:
        if writer is not None:
            writer.__exit__(type(err), err, err.__traceback__)  # removes the partial file
        raise
    return paths


__all__ = ["ClipRange", "SceneOptions", "clip_ranges", "cut_clips", "detect_scenes"]
