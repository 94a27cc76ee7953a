"""What the model being fine-tuned was trained at: size, length, frame rate, score phrases in its captions.

Read without loading weights, from (1) the bundled demo model's ``demo/demo.json`` when ``model.checkpoint``
is that file, or (2) the ``opensora.train_settings`` metadata that ``opensora-train`` writes into its exports.
Released checkpoints carry neither, so nothing is claimed about them (None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opensora_core.checkpoints import METADATA_TRAIN_SETTINGS as TRAIN_SETTINGS_KEY
from opensora_core.checkpoints import open_safetensors


@dataclass(frozen=True)
class TrainedSettings:
    source: str  # "the demo model", "<file name>"
    height: int
    width: int
    num_frames: int
    fps: float
    score_phrases: tuple[str, ...] = ()  # e.g. ("aesthetic score:",): phrases its training captions carried

    def to_json(self) -> str:
        return json.dumps({"height": self.height, "width": self.width, "num_frames": self.num_frames,
                           "fps": self.fps, "score_phrases": list(self.score_phrases)})


def trained_settings(checkpoint: str) -> TrainedSettings | None:
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    path = Path(checkpoint).resolve()
    return _demo_settings(path) or _export_settings(path)


def _demo_settings(path: Path) -> TrainedSettings | None:
    from opensora_core.demo import load_demo

    try:
        demo = load_demo()
    except FileNotFoundError:
        return None
    if demo.model.resolve() != path:
        return None
    return TrainedSettings("the demo model", demo.height, demo.width, demo.num_frames, float(demo.fps))


def _export_settings(path: Path) -> TrainedSettings | None:
    if path.suffix != ".safetensors":
        return None
    with open_safetensors(path) as handle:  # a damaged file is named with the fix
        raw = (handle.metadata() or {}).get(TRAIN_SETTINGS_KEY)
    if not raw:
        return None
    values = json.loads(raw)
    return TrainedSettings(path.name, int(values["height"]), int(values["width"]), int(values["num_frames"]),
                           float(values["fps"]), tuple(values.get("score_phrases", ())))


__all__ = ["TRAIN_SETTINGS_KEY", "TrainedSettings", "trained_settings"]
