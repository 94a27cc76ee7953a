"""Open-Sora v1.x sizes: the official resolution / aspect-ratio tables (opensora/datasets/aspect.py) and the
named durations ("2s" -> 51 frames). Aspect ratios are named "H:W" here (Open-Sora 2.0 names them "W:H",
:mod:`.opensora_v2`). Nothing touches a file at import; the tables are read on first use.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

IMG_FPS = 120  # fps the official code passes to the model for single images


# ---------------------------------------------------------------------------
# Resolution and aspect-ratio tables (opensora/datasets/aspect.py)
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tables() -> dict:
    text = resources.files("opensora_core").joinpath("data/aspect_ratios.json").read_text()
    return json.loads(text)


def resolutions() -> list[str]:
    """Resolution names of the official tables, smallest pixel count first."""
    res = _tables()["resolutions"]
    return sorted(res, key=lambda r: res[r]["num_pixels"])


@lru_cache(maxsize=1)
def official_sizes() -> frozenset[tuple[int, int]]:
    """Every (height, width) of the official resolution tables."""
    return frozenset(hw for r in resolutions() for hw in aspect_ratio_table(r).values())


def named_aspect_ratios() -> dict[str, str]:
    """'H:W' aspect-ratio names -> table keys ("9:16" -> "0.56"). Note H:W, not W:H."""
    return dict(_tables()["named_ratios"])


def resolution_pixels(resolution: str) -> int:
    return _resolution(resolution)["num_pixels"]


def aspect_ratio_table(resolution: str) -> dict[str, tuple[int, int]]:
    """Aspect-ratio key -> (height, width) for one resolution."""
    return {k: tuple(v) for k, v in _resolution(resolution)["sizes"].items()}


def _resolution(resolution: str) -> dict:
    res = _tables()["resolutions"]
    if resolution not in res:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(resolutions())}")
    return res[resolution]


def image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) in pixels for a resolution preset and an 'H:W' aspect ratio (get_image_size)."""
    names = named_aspect_ratios()
    if aspect_ratio not in names:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r} (H:W); choose one of {', '.join(names)}")
    table = aspect_ratio_table(resolution)
    key = names[aspect_ratio]
    if key not in table:
        usable = [n for n, k in names.items() if k in table]
        raise ValueError(
            f"resolution {resolution!r} has no {aspect_ratio} size; "
            f"usable aspect ratios: {', '.join(usable) or 'none (PixArt-style table)'}"
        )
    return table[key]


def closest_ratio(height: float, width: float, resolution: str) -> str:
    """Table key whose ratio is closest to height/width (get_closest_ratio; ties keep table order)."""
    return closest_ratio_key(height, width, aspect_ratio_table(resolution))


def closest_ratio_key(height: float, width: float, keys) -> str:
    """The key of ``keys`` (aspect-ratio strings such as "0.56") closest to height/width; ties keep order.

    Works for any table with the official key format, e.g. a custom training resolution.
    """
    ratio = height / width
    return min(keys, key=lambda k: abs(float(k) - ratio))


def num_frames_from_duration(value: str | int) -> int:
    """'2s'/'1x' style names -> pixel frames (51, 102, ...); anything else int() (get_num_frames)."""
    durations = _tables()["named_durations"]
    if isinstance(value, str) and value in durations:
        return durations[value]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"unknown duration {value!r}; use a frame count or one of {', '.join(durations)}") from None


def named_durations() -> dict[str, int]:
    return dict(_tables()["named_durations"])


__all__ = [
    "IMG_FPS",
    "aspect_ratio_table",
    "closest_ratio",
    "closest_ratio_key",
    "image_size",
    "named_aspect_ratios",
    "named_durations",
    "num_frames_from_duration",
    "resolution_pixels",
    "resolutions",
]
