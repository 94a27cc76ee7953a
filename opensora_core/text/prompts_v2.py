"""Open-Sora 2.0 prompt suffixes: frame rate and motion score are given to the model as text.

Follows ``add_fps_info_to_text`` / ``add_motion_score_to_text`` (opensora/utils/inference.py, used by
scripts/diffusion/inference.py with fps_save = 24 and motion_score = "4" from 256px.py) and the caption
suffix of the training data (opensora/datasets/datasets.py). There is no numeric motion embedding: the
motion score exists only in the prompt. Negative prompts get no suffix.

    prepare_prompt("a cat")  ->  "a cat. 24 FPS. 4 motion score."
"""

from __future__ import annotations

import re

DEFAULT_FPS = 24  # fps_save of the inference configs
DEFAULT_MOTION_SCORE = "4"  # motion_score of configs/diffusion/inference/256px.py
_FPS_SUFFIX = re.compile(r"\d+ FPS\.$")


def ensure_period(text: str) -> str:
    """Strip surrounding whitespace and end the prompt with a period."""
    text = text.strip()
    return text if text.endswith(".") else text + "."


def number_text(value: float | int | str) -> str:
    """A number as the official suffixes write it: whole numbers without a decimal part (24.0 -> "24")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_fps_info(text: str, fps: float = DEFAULT_FPS) -> str:
    """``"a cat"`` -> ``"a cat. 24 FPS."``; a prompt already ending in ``"<n> FPS."`` keeps its own rate."""
    text = ensure_period(text)
    return text if _FPS_SUFFIX.search(text) else f"{text} {number_text(fps)} FPS."


def add_motion_score(text: str, motion_score: float | str = DEFAULT_MOTION_SCORE) -> str:
    """``"... 24 FPS."`` -> ``"... 24 FPS. 4 motion score."``.

    The official ``"dynamic"`` setting asks an OpenAI model for a score; that is not available offline, so it
    raises: pass a number (the release uses 4; the training data spans about 1 to 7).
    """
    if str(motion_score) == "dynamic":
        raise ValueError(
            "motion_score='dynamic' needs the official OpenAI prompt-refinement service; give a number instead "
            "(e.g. 4, the released default; higher = more motion)"
        )
    return f"{text} {number_text(motion_score)} motion score."


def prepare_prompt(text: str, fps: float = DEFAULT_FPS, motion_score: float | str | None = DEFAULT_MOTION_SCORE) -> str:
    """The prompt as the inference script feeds it to the encoders: FPS suffix, then the motion score (skipped
    when ``motion_score`` is None, as when the config has none)."""
    text = add_fps_info(text, fps)
    return text if motion_score is None else add_motion_score(text, motion_score)


def training_caption(text: str, fps: int | None = None, motion: float | None = None) -> str:
    """Caption of a training clip: ``text + " 24 FPS, 3 motion score."`` (either part may be absent; the
    motion score is the clip's VMAF motion rounded half up)."""
    parts = []
    if fps:
        parts.append(f"{fps} FPS")
    if motion is not None and motion == motion:  # NaN means unknown
        parts.append(f"{int(motion + 0.5)} motion score")
    return text + (" " + ", ".join(parts) + "." if parts else "")


__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_MOTION_SCORE",
    "add_fps_info",
    "add_motion_score",
    "ensure_period",
    "number_text",
    "prepare_prompt",
    "training_caption",
]
