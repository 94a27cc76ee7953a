"""Picture quality: sharpness and exposure (OpenCV), ours (the official pipeline has no such scores).

On three frames (10 %, 50 %, 90 % into the clip), in grayscale resized so the long side is 576 pixels
(sharpness depends on the scale, so clips of any size are measured alike); the median over the frames:

* ``sharpness``: variance of the Laplacian (blurred or out-of-focus clips score low; below ~20 is soft);
* ``brightness``: mean luma, 0 (black) .. 1 (white);
* ``clipped``: share of pixels crushed to black (<= 4) or blown to white (>= 251), 0..1.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .clips import ClipSpec, points_to_indices
from .deps import require
from .frames import Frames

QUALITY_POINTS = (0.1, 0.5, 0.9)
WORK_SIDE = 576
DARK, BRIGHT = 4, 251


class QualityStage:
    name = "quality"
    columns = ("sharpness", "brightness", "clipped")

    def __init__(self) -> None:
        self.cv2 = require("cv2", "quality")

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "points": QUALITY_POINTS, "side": WORK_SIDE, "levels": [DARK, BRIGHT]})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else points_to_indices(QUALITY_POINTS, clip.num_frames)

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        measured = np.array([self.measure(frames[i]) for i in sorted(frames)])
        sharpness, brightness, clipped = np.median(measured, axis=0)
        return {"sharpness": round(float(sharpness), 2), "brightness": round(float(brightness), 4),
                "clipped": round(float(clipped), 4)}

    def measure(self, frame: np.ndarray) -> tuple[float, float, float]:
        gray = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        scale = WORK_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = self.cv2.resize(gray, size, interpolation=self.cv2.INTER_AREA if scale < 1 else self.cv2.INTER_LINEAR)
        sharpness = float(self.cv2.Laplacian(gray, self.cv2.CV_64F).var())
        clipped = float(np.mean((gray <= DARK) | (gray >= BRIGHT)))
        return sharpness, float(gray.mean()) / 255, clipped


__all__ = ["QualityStage"]
