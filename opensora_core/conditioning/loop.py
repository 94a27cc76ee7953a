"""Loop (extension) mode: each round continues the previous clip from its last latent frames.

For round i > 0 the previous round's decoded clip is encoded again, appended to the
sample's references, and a group ``i,<its index>,-L,0,L[,edit]`` (:func:`continuation_groups`)
joins the sample's strategy (L = condition_frame_length in latent frames), so the previous
clip's last L latent frames become the new clip's first L. When the clips are joined, every
clip after the first drops the pixel frames those L latent frames decode to.
Follows scripts/inference-long.py (v1.1.0) and opensora/utils/inference_utils.py
``append_generated`` / ``dframe_to_frame`` (v1.2.0); the official string-level helpers are
restated in ``opensora_core.parity.strategies`` to check these against the reference tables.
"""

from __future__ import annotations

from ..geometry import LatentGeometry
from .strategy import MaskGroup


def continuation_groups(loops: int, num_refs: int, condition_frames: int, edit_ratio: float = 0.0) -> list[MaskGroup]:
    """The group each round after the first appends: round i takes the last ``condition_frames`` latent frames
    of reference ``num_refs + i - 1`` (the previous clip, after the ``num_refs`` user references)."""
    length = int(condition_frames)
    return [MaskGroup(i, num_refs + i - 1, -length, 0, length, float(edit_ratio)) for i in range(1, loops)]


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


__all__ = ["continuation_groups", "extension_drop_frames", "extension_total_frames"]
