"""The official string-level mask-strategy helpers, restated to replay the reference tables.

The runtime never builds strategy strings: it parses a strategy once into typed groups
(:mod:`opensora_core.conditioning`). The official scripts manipulate the strings themselves
(the loop mode appends text, the v1.1 Gradio app plans lengths), and the reference tables record
those strings; these helpers reproduce them so the tables can check our typed code against them.
"""

from __future__ import annotations

import math

from ..conditioning import V1_1, check_version

DEFAULT_FIELDS = ("0", "0", "0", "0", "1", "0")


def split_mask_strategy(strategy: str | None) -> list[list[str]]:
    """Groups as lists of six field strings with the defaults filled in (the official parser's output
    before conversion). None or "" gives no groups."""
    if strategy is None or strategy == "":
        return []
    return [fields + list(DEFAULT_FIELDS[len(fields):]) for fields in (text.split(",") for text in strategy.split(";"))]


def append_generated(strategy: str | None, ref_index: int, loop_i: int, condition_frames: int,
                     edit_ratio: float = 0.0, *, version: str = "v1.2") -> str:
    """The strategy string after appending the continuation group of round ``loop_i``
    (``append_generated``): v1.1 writes five fields, v1.2 adds ``edit_ratio`` as Python prints it.

    ref_index: index the previous clip gets in the sample's reference list (= references before it).
    """
    length = int(condition_frames)
    group = f"{loop_i},{ref_index},-{length},0,{length}"
    if check_version(version) != V1_1:
        group += f",{float(edit_ratio)}"
    return group if strategy in (None, "") else f"{strategy};{group}"


def loop_strategies(strategy: str | None, loops: int, condition_frames: int, *, num_refs: int = 0,
                    edit_ratio: float = 0.0, version: str = "v1.2") -> list[str | None]:
    """The strategy string in effect for every round, starting from ``strategy`` with ``num_refs`` references."""
    current, per_loop = strategy, [strategy]
    for loop_i in range(1, loops):
        ref_index = num_refs + loop_i - 1
        current = append_generated(current, ref_index, loop_i, condition_frames, edit_ratio, version=version)
        per_loop.append(current)
    return per_loop


def loops_for_length(total_frames: float, clip_frames: int, condition_frames: int) -> int:
    """Rounds needed for at least ``total_frames`` frames when each round adds clip - condition frames."""
    if clip_frames <= condition_frames:
        raise ValueError(f"clip_frames ({clip_frames}) must exceed condition_frames ({condition_frames})")
    return max(1, math.ceil((total_frames - condition_frames) / (clip_frames - condition_frames)))


def gradio_v1_1_length_plan(seconds: int, *, fps: int = 24, frame_interval: int = 3, condition_frames: int = 4,
                            clip_frames: int = 16) -> tuple[int, int]:
    """(num_frames, loops) the v1.1 Gradio app uses for a requested length (gradio/app.py, v1.1.0).

    Up to 16 s it renders one clip of seconds * fps // frame_interval frames; longer requests
    loop ``clip_frames``-frame clips until seconds * fps / frame_interval frames are covered.
    """
    if seconds <= 16:
        return seconds * fps // frame_interval, 1
    return clip_frames, loops_for_length(seconds * fps / frame_interval, clip_frames, condition_frames)


__all__ = ["append_generated", "gradio_v1_1_length_plan", "loop_strategies", "loops_for_length", "split_mask_strategy"]
