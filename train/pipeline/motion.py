"""Motion score and camera motion from optical flow (OpenCV Farneback), one flow computation for both.

**Motion score** (CSV column ``flow``), after ``tools/scoring/optical_flow/inference.py`` (v1.2): the official
score is the mean absolute flow component ``mean(|u|, |v|)`` between frames 0-10, 10-20 and 20-30 of the clip,
in pixels of the frame turned so its long side is horizontal (portrait frames transposed) and resized to
320 x 576. The official code runs UniMatch, which follows displacements of tens of pixels; OpenCV's Farneback
(used here) does not, so we measure the flow from frames 0, 10 and 20 to the frame after each and scale it
by 10: the same quantity (pixels per 10 frames at 576 wide) for motion that is steady over a few frames.
Clips of 21 frames or fewer take their three pairs spread from the first frame to the last.

**Camera motion** (column ``cmotion``), after ``tools/caption/camera_motion_detect.py`` (v1.2, Farneback too), from
the same flows taken back to the source orientation and size (pixels per 15 frames, the official step): per
frame pair, "static" when the median flow magnitude is below 1 pixel; otherwise "zoom out" / "zoom in"
when fewer than 40 % / more than 60 % of the pixels move away from the centre; otherwise the median flow
angle: content moving right = "pan left", down = "tilt up", left = "pan right", up = "tilt down". The
clip takes the label of more than half of its pairs, else "unknown" (if any pair was static), "pan/tilt"
(no zoom among them) or "dynamic". Only the seven official labels
(:data:`opensora_core.text.prompts.CAMERA_MOTIONS`) are ever written into captions.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from .clips import ClipSpec, evenly_spaced
from .deps import require
from .frames import Frames

FLOW_HEIGHT, FLOW_WIDTH = 320, 576  # official optical-flow input size
FLOW_STARTS = (0, 10, 20)  # the official pairs are frames 0-10, 10-20, 20-30 (frame_inds 0, 10, 20, 30)
FLOW_GAP = 10  # frames between the official pairs: scores are pixels per this many frames
PAIR_GAP = 1  # frames between the two frames we measure (Farneback follows small displacements only)
# Farneback parameters of the official camera-motion detector: pyr_scale, levels, winsize, iterations, poly_n,
# poly_sigma, flags
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)
CAMERA_STEP = 15  # frames between the official camera detector's pairs
TAU_STATIC = 1.0  # pixels (source size) per CAMERA_STEP frames: below this median magnitude a pair is static
TAU_ZOOM = (0.4, 0.6)  # share of pixels moving away from the centre: below = zoom out, above = zoom in


def pair_starts(clip: ClipSpec) -> list[int]:
    """First frames of the measured pairs: 0, 10, 20, or three spread over a short clip (none for images)."""
    if clip.is_image or clip.num_frames <= PAIR_GAP:
        return []
    if clip.num_frames > FLOW_STARTS[-1] + PAIR_GAP:
        return list(FLOW_STARTS)
    return evenly_spaced(len(FLOW_STARTS), clip.num_frames - PAIR_GAP)


class MotionStage:
    name = "motion"
    columns = ("flow", "cmotion")

    def __init__(self) -> None:
        self.cv2 = require("cv2", "motion")

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "farneback": FARNEBACK, "size": [FLOW_HEIGHT, FLOW_WIDTH],
                           "starts": FLOW_STARTS, "gap": PAIR_GAP})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return sorted({i for start in pair_starts(clip) for i in (start, start + PAIR_GAP)}) or [0]

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        starts = pair_starts(clip)
        if not starts:
            return {"flow": 0.0, "cmotion": None}  # an image or a single frame
        scores, labels = [], []
        for start in starts:
            (a, transposed), (b, _) = self.flow_input(frames[start]), self.flow_input(frames[start + PAIR_GAP])
            flow = self.cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK)  # (320, 576, 2) pixels
            scores.append(float(np.abs(flow).mean()) * FLOW_GAP / PAIR_GAP)
            labels.append(self.pair_label(source_flow(flow, transposed, clip.height, clip.width, PAIR_GAP)))
        return {"flow": round(float(np.mean(scores)), 4), "cmotion": clip_label(labels)}

    def flow_input(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        """Grayscale 320 x 576 with the long side horizontal; whether the frame was transposed."""
        gray = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        transposed = gray.shape[0] > gray.shape[1]
        if transposed:
            gray = np.ascontiguousarray(gray.T)
        return self.cv2.resize(gray, (FLOW_WIDTH, FLOW_HEIGHT), interpolation=self.cv2.INTER_LINEAR), transposed

    def pair_label(self, flow: np.ndarray) -> str:
        """The official per-pair label (``get_type``) of a flow in source pixels per CAMERA_STEP frames."""
        magnitude, angle = self.cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
        return pair_type(float(np.median(magnitude)), float(np.median(angle)), zoom_in_share(flow))


def source_flow(flow: np.ndarray, transposed: bool, height: int, width: int, gap: int) -> np.ndarray:
    """A working-size flow as (u, v) in pixels of the source frame per CAMERA_STEP frames, source orientation."""
    if transposed:
        flow = flow.transpose(1, 0, 2)[..., ::-1]  # back to (H, W) with (u, v) = the transposed (v, u)
    h, w = flow.shape[:2]
    scale = np.array([width / w, height / h], dtype=np.float32) * (CAMERA_STEP / gap)
    return np.ascontiguousarray(flow * scale, dtype=np.float32)


def zoom_in_share(flow: np.ndarray) -> float:
    """Share of pixels whose flow does not bring them closer to the centre (the official ``zoom_in_factor``)."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    before = np.hypot(xs - w / 2, ys - h / 2)
    after = np.hypot(xs + flow[..., 0] - w / 2, ys + flow[..., 1] - h / 2)
    return float(np.count_nonzero(after >= before) / before.size)


def pair_type(magnitude: float, angle: float, zoom_in: float) -> str:
    """``get_type`` of camera_motion_detect.py: static, zoom, then the direction of the median angle."""
    if magnitude < TAU_STATIC:
        return "static"
    if zoom_in < TAU_ZOOM[0]:
        return "zoom out"
    if zoom_in > TAU_ZOOM[1]:
        return "zoom in"
    if angle < 45 or angle >= 315:
        return "pan left"
    if angle < 135:
        return "tilt up"
    if angle < 225:
        return "pan right"
    return "tilt down"


def clip_label(labels: list[str]) -> str:
    """``get_video_type``: the label of more than half of the pairs, else unknown / pan/tilt / dynamic."""
    counts = Counter(labels)
    label, count = counts.most_common(1)[0]
    if count > len(labels) / 2:
        return label
    if "static" in counts:
        return "unknown"
    if "zoom in" not in counts and "zoom out" not in counts:
        return "pan/tilt"
    return "dynamic"


__all__ = ["MotionStage", "clip_label", "pair_type", "source_flow", "zoom_in_share"]
