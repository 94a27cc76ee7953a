"""Loop (extension) mode: each round continues the previous clip from its last latent frames.

For round i > 0 the previous round's decoded clip is encoded again, appended to the
sample's references, and a group ``i,<its index>,-L,0,L[,edit]`` is appended to the
sample's strategy (L = condition_frame_length in latent frames), so the previous clip's
last L latent frames become the new clip's first L. When the clips are joined, every
clip after the first drops the pixel frames those L latent frames decode to.
Follows scripts/inference-long.py (v1.1.0) and opensora/utils/inference_utils.py
``append_generated`` / ``dframe_to_frame`` (v1.2.0).
"""

from __future__ import annotations

import math

from ..geometry import LatentGeometry
from .strategy import V1_1, check_version


def append_generated(
    strategy: str | None,
    ref_index: int,
    loop_i: int,
    condition_frames: int,
    edit_ratio: float = 0.0,
    *,
    version: str = "v1.2",
) -> str:
    """The strategy string after appending the continuation group of round ``loop_i``.

    ref_index: index the previous clip gets in the sample's reference list (= references before it).
    v1.1 writes five fields (its loop has no edit ratio); v1.2 adds ``edit_ratio`` as Python prints it.
    """
    length = int(condition_frames)
    group = f"{loop_i},{ref_index},-{length},0,{length}"
    if check_version(version) != V1_1:
        group += f",{float(edit_ratio)}"
    return group if strategy in (None, "") else f"{strategy};{group}"


def loop_strategies(
    strategy: str | None,
    loops: int,
    condition_frames: int,
    *,
    num_refs: int = 0,
    edit_ratio: float = 0.0,
    version: str = "v1.2",
) -> list[str | None]:
    """The strategy string in effect for every round, starting from ``strategy`` with ``num_refs`` references."""
    current, per_loop = strategy, [strategy]
    for loop_i in range(1, loops):
        current = append_generated(
            current, num_refs + loop_i - 1, loop_i, condition_frames, edit_ratio, version=version
        )
        per_loop.append(current)
    return per_loop


def _check_condition_frames(condition_frames: int, num_frames: int, geometry: LatentGeometry) -> None:
    clip = geometry.latent_frames(num_frames)
    if not 1 <= condition_frames < clip:
        raise ValueError(
            f"condition_frame_length={condition_frames} must be between 1 and {clip - 1}: a {num_frames}-frame "
            f"clip has {clip} latent frames and each round must add new ones"
        )


def extension_drop_frames(condition_frames: int, num_frames: int, geometry: LatentGeometry) -> int:
    """Pixel frames every clip after the first drops when clips are joined (v1.2 ``dframe_to_frame``: 5 -> 17)."""
    _check_condition_frames(condition_frames, num_frames, geometry)
    return geometry.leading_pixel_frames(condition_frames, num_frames)


def extension_total_frames(num_frames: int, loops: int, condition_frames: int, geometry: LatentGeometry) -> int:
    """Pixel frames of the joined video: num_frames + (loops - 1) * (num_frames - dropped).

    With the per-frame SD-VAE (v1.1) this is loops * (num_frames - L) + L.
    """
    if loops < 1:
        raise ValueError(f"loops must be >= 1, got {loops}")
    if loops == 1:
        return num_frames
    return num_frames + (loops - 1) * (num_frames - extension_drop_frames(condition_frames, num_frames, geometry))


def loops_for_length(total_frames: float, clip_frames: int, condition_frames: int) -> int:
    """Rounds needed for at least ``total_frames`` frames when each round adds clip - condition frames."""
    if clip_frames <= condition_frames:
        raise ValueError(f"clip_frames ({clip_frames}) must exceed condition_frames ({condition_frames})")
    return max(1, math.ceil((total_frames - condition_frames) / (clip_frames - condition_frames)))


def gradio_v1_1_length_plan(
    seconds: int,
    *,
    fps: int = 24,
    frame_interval: int = 3,
    condition_frames: int = 4,
    clip_frames: int = 16,
) -> tuple[int, int]:
    """(num_frames, loops) the v1.1 Gradio app uses for a requested length (gradio/app.py, v1.1.0).

    Up to 16 s it renders one clip of seconds * fps // frame_interval frames; longer requests
    loop ``clip_frames``-frame clips until seconds * fps / frame_interval frames are covered.
    """
    if seconds <= 16:
        return seconds * fps // frame_interval, 1
    return clip_frames, loops_for_length(seconds * fps / frame_interval, clip_frames, condition_frames)
