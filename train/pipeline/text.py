"""Text in the picture: the number of text regions and the share of the frame they cover (OCR detection).

The official v1.2 pipeline (``tools/scoring/ocr/inference.py``) runs MMOCR's DBNet++ on frame 10 (resized to
1024, centre-cropped) and stores the number of text boxes with confidence > 0.3 as ``ocr``; dense-text clips
(news, adverts, slides) are then dropped. We run the DBNet detector that RapidOCR ships as an ONNX model
(``rapidocr-onnxruntime``: nothing is downloaded), detection only (no recognition), on three frames (10 %,
50 %, 90 % into the clip, the long side at most ``MAX_SIDE`` pixels) and keep the largest values:

* ``ocr``: the number of text boxes (as the official column);
* ``text_area``: the share of the frame covered by text boxes, 0..1 (a subtitle line is about 0.02-0.05).
"""

from __future__ import annotations

import json
import threading
from importlib.metadata import version
from typing import Any

import numpy as np

from .clips import ClipSpec, points_to_indices
from .deps import require
from .frames import Frames

TEXT_POINTS = (0.1, 0.5, 0.9)
MAX_SIDE = 736  # detector input: long side (RapidOCR's default limit length, applied as a maximum)


class TextStage:
    name = "text"
    columns = ("ocr", "text_area")

    def __init__(self) -> None:
        self.cv2 = require("cv2", "text (OCR)")
        self._module = require("rapidocr_onnxruntime", "text (OCR)")
        self._engine = None
        self._lock = threading.Lock()

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "points": TEXT_POINTS, "max_side": MAX_SIDE,
                           "engine": f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}"})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else points_to_indices(TEXT_POINTS, clip.num_frames)

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        found = [self.detect(frames[i]) for i in sorted(frames)]
        return {"ocr": max(n for n, _ in found), "text_area": round(max(a for _, a in found), 5)}

    def detect(self, frame: np.ndarray) -> tuple[int, float]:
        """(number of text boxes, share of the frame they cover) of one RGB frame."""
        boxes, _ = self.engine()(np.ascontiguousarray(frame[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
        if not boxes:
            return 0, 0.0
        mask = np.zeros(frame.shape[:2], np.uint8)
        self.cv2.fillPoly(mask, [np.asarray(box, np.float32).round().astype(np.int32) for box in boxes], 1)
        return len(boxes), float(mask.mean())

    def engine(self):
        """The detector, built once (one ONNX thread per call: the pipeline runs files in parallel)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._module.RapidOCR(det_limit_side_len=MAX_SIDE, det_limit_type="max",
                                                     intra_op_num_threads=1, inter_op_num_threads=1)
            return self._engine


__all__ = ["TextStage"]
