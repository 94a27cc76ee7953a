"""User-facing mask strategies: validation, pixel-frame positions, readable reports and builders.

Validate before sampling: :func:`validate_mask_strategy` raises a ``ValueError`` that names
the group and the fix for every string the official code would reject or silently misread
(bad numbers, unknown references, empty or out-of-range groups, edit ratios outside 0..1).
Users think in pixel frames; :class:`PixelCondition` + :func:`pixel_conditions_to_groups`
convert them to latent groups with the VAE's :class:`~opensora_core.geometry.LatentGeometry`,
and :func:`describe_mask_strategy` says where every group lands in latent and pixel frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..geometry import LatentGeometry
from .strategy import (
    V1_1,
    V1_2,
    MaskGroup,
    Placement,
    Strategy,
    as_groups,
    check_version,
    place_group,
)

# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _where(index: int, group: MaskGroup, version: str) -> str:
    return f"mask strategy group {index + 1} ({group.format(version)!r})"


def _check_frame(what: str, start: int, frames: int, name: str) -> None:
    if not -frames <= start < frames:
        raise ValueError(
            f"{what} lies beyond the {name}: {start} with {frames} frame(s); "
            f"use 0..{frames - 1}, or -{frames}..-1 to count from the end"
        )


def _check_group(
    index: int, group: MaskGroup, latent_frames: int, refs: Sequence[int], version: str, loops: int
) -> None:
    what = _where(index, group, version)
    if not 0 <= group.loop_id < loops:
        raise ValueError(f"{what} is for loop {group.loop_id} but {loops} loop(s) run; use loop_id 0..{loops - 1}")
    if not 0 <= group.ref_id < len(refs):
        if not refs:
            raise ValueError(
                f"{what} uses reference {group.ref_id}, but no reference was given; add one or remove the group"
            )
        raise ValueError(
            f"{what} uses reference {group.ref_id}, but only {len(refs)} reference(s) were given "
            f"(ref_id 0..{len(refs) - 1}); add a reference or fix ref_id"
        )
    if group.length < 1:
        raise ValueError(f"{what} has length {group.length}; a group covers at least 1 latent frame")
    if not 0.0 <= group.edit_ratio <= 1.0:
        raise ValueError(f"{what} has edit_ratio {group.edit_ratio}; use 0 (keep) .. 1 (regenerate)")
    _check_frame(f"{what}: target_start", group.target_start, latent_frames, "latent video")
    _check_frame(f"{what}: ref_start", group.ref_start, refs[group.ref_id], f"reference {group.ref_id}")


def _check_fits_v1_1(index: int, group: MaskGroup, where: Placement, latent_frames: int, ref_frames: int) -> None:
    """v1.1 copies unclipped slices; they must have equal length (or the reference slice 1 frame)."""
    target = min(where.length, latent_frames - where.target_start)
    source = min(where.length, ref_frames - where.ref_start)
    if source != target and source != 1:
        fits = min(latent_frames - where.target_start, ref_frames - where.ref_start)
        raise ValueError(
            f"{_where(index, group, V1_1)} runs past the end of the latent video or the reference "
            f"({target} target frame(s), {source} reference frame(s)); shorten length to {fits}"
        )


def validate_mask_strategy(
    strategy: Strategy,
    *,
    latent_frames: int,
    ref_latent_frames: Sequence[int],
    version: str = V1_2,
    align: int | None = None,
    loops: int = 1,
) -> list[MaskGroup]:
    """Parse and check one sample's strategy against its references; returns the groups.

    latent_frames:     latent frames of the generated clip
    ref_latent_frames: latent frames of each reference of this sample, by ref_id
    loops:             loop rounds that will run (loop_id must be below it)
    """
    check_version(version)
    if align is not None and (version == V1_1 or align < 1):
        raise ValueError(f"align={align} is not valid for {version}; use None, or a positive integer with v1.2")
    groups = as_groups(strategy)
    for index, group in enumerate(groups):
        _check_group(index, group, latent_frames, ref_latent_frames, version, loops)
        if version == V1_1:
            where = place_group(group, latent_frames, ref_latent_frames[group.ref_id], version)
            _check_fits_v1_1(index, group, where, latent_frames, ref_latent_frames[group.ref_id])
    return groups


# ---------------------------------------------------------------------------
# Pixel positions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelCondition:
    """A reference placement in PIXEL frames, as a user sees the videos (negative starts count from the end).

    ref_start/target_start: first pixel frame of the reference / of the generated video;
    length: pixel frames; the group covers every latent frame that holds one of them.
    """

    ref_id: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0
    loop_id: int = 0


def _pixel_span(what: str, start: int, length: int, frames: int, name: str) -> tuple[int, int]:
    _check_frame(f"{what}: start frame", start, frames, name)
    start = start + frames if start < 0 else start
    if start + length > frames:
        raise ValueError(
            f"{what} runs past the end of the {name} ({frames} frames) from frame {start}; "
            f"shorten length to {frames - start}"
        )
    return start, start + length - 1


def pixel_conditions_to_groups(
    conditions: Sequence[PixelCondition],
    *,
    geometry: LatentGeometry,
    num_frames: int,
    ref_num_frames: Sequence[int],
) -> list[MaskGroup]:
    """Latent mask groups for pixel-frame conditions.

    num_frames:     pixel frames of the generated clip
    ref_num_frames: pixel frames of each reference (1 for an image), by ref_id
    """
    groups = []
    for index, cond in enumerate(conditions):
        what = f"condition {index + 1} ({cond})"
        if not 0 <= cond.ref_id < len(ref_num_frames):
            raise ValueError(f"{what} uses reference {cond.ref_id} but {len(ref_num_frames)} reference(s) were given")
        if cond.length < 1:
            raise ValueError(f"{what} has length {cond.length}; a condition covers at least 1 frame")
        ref_frames = ref_num_frames[cond.ref_id]
        first, last = _pixel_span(what, cond.target_start, cond.length, num_frames, "generated video")
        target = geometry.pixel_to_latent_frame(first, num_frames)
        length = geometry.pixel_to_latent_frame(last, num_frames) - target + 1
        ref_first, _ = _pixel_span(what, cond.ref_start, cond.length, ref_frames, f"reference {cond.ref_id}")
        ref_start = geometry.pixel_to_latent_frame(ref_first, ref_frames)
        ref_latents = geometry.latent_frames(ref_frames)
        if ref_start + length > ref_latents:
            raise ValueError(
                f"{what} needs {length} latent frame(s) from latent frame {ref_start} of reference {cond.ref_id}, "
                f"which has {ref_latents}; start earlier in the reference or shorten length"
            )
        groups.append(MaskGroup(cond.loop_id, cond.ref_id, ref_start, target, length, float(cond.edit_ratio)))
    return groups


# ---------------------------------------------------------------------------
# Readable report
# ---------------------------------------------------------------------------


def _frames_text(start: int, length: int) -> str:
    return f"frame {start}" if length == 1 else f"frames {start}-{start + length - 1}"


def _role(edit_ratio: float) -> str:
    if edit_ratio == 0:
        return "kept as given"
    if edit_ratio >= 1:
        return "regenerated (edit ratio 1: no conditioning)"
    return f"edited with ratio {edit_ratio:g} (kept until the noise level falls to {edit_ratio:g}, then re-noised)"


def _pixel_text(geometry: LatentGeometry, start: int, length: int, num_frames: int) -> str:
    first = geometry.latent_to_pixel_frames(start, num_frames).start
    last = geometry.latent_to_pixel_frames(start + length - 1, num_frames).stop - 1
    return f" = pixel {_frames_text(first, last - first + 1)} of {num_frames}"


def _adjustments(group: MaskGroup, where: Placement, latent_frames: int, ref_frames: int, version: str) -> str:
    """Notes on what alignment and clipping changed compared with the group as written."""
    plain = place_group(group, latent_frames, ref_frames, version)
    notes = []
    if where.target_start != plain.target_start:
        notes.append(f"target start {plain.target_start} snapped to {where.target_start} by align")
    if where.ref_start != plain.ref_start:
        notes.append(f"reference start {plain.ref_start} snapped to {where.ref_start} by align")
    if where.length != group.length:
        notes.append(f"length {group.length} clipped to {where.length}")
    return f" ({'; '.join(notes)})" if notes else ""


def describe_mask_strategy(
    strategy: Strategy,
    *,
    latent_frames: int,
    ref_latent_frames: Sequence[int],
    loop_i: int = 0,
    version: str = V1_2,
    align: int | None = None,
    geometry: LatentGeometry | None = None,
    num_frames: int | None = None,
) -> str:
    """One line per group: which reference frames land on which latent (and pixel) frames.

    Pass ``geometry`` and ``num_frames`` (pixel frames of the clip) to add pixel positions.
    The placement is computed by the same rule that applies the strategy.
    """
    lines = []
    for index, group in enumerate(as_groups(strategy)):
        head = _where(index, group, version)
        if group.loop_id != loop_i:
            lines.append(f"{head}: loop {group.loop_id}, not used in loop {loop_i}")
            continue
        ref_frames = ref_latent_frames[group.ref_id]
        where = place_group(group, latent_frames, ref_frames, version, align)
        text = (
            f"{head}: reference {where.ref_id} latent {_frames_text(where.ref_start, where.length)} -> "
            f"latent {_frames_text(where.target_start, where.length)} of {latent_frames}"
        )
        if geometry is not None and num_frames is not None:
            text += _pixel_text(geometry, where.target_start, where.length, num_frames)
        lines.append(
            f"{text}; {_role(where.edit_ratio)}{_adjustments(group, where, latent_frames, ref_frames, version)}"
        )
    return "\n".join(lines) if lines else "no reference frames: every frame is generated"


# ---------------------------------------------------------------------------
# Builders for the common tasks (latent frames)
# ---------------------------------------------------------------------------


def first_frame_strategy(ref_id: int = 0) -> list[MaskGroup]:
    """Image-to-video: the reference image is the first frame ("0")."""
    return [MaskGroup(ref_id=ref_id)]


def first_last_strategy(first_ref: int = 0, last_ref: int = 1) -> list[MaskGroup]:
    """Two images as first and last frame ("0;0,1,0,-1,1")."""
    return [MaskGroup(ref_id=first_ref), MaskGroup(ref_id=last_ref, target_start=-1)]


def extend_strategy(latent_frames: int, ref_id: int = 0, edit_ratio: float = 0.0) -> list[MaskGroup]:
    """Video extension: the last ``latent_frames`` of the reference become the first of the new clip."""
    return [MaskGroup(ref_id=ref_id, ref_start=-latent_frames, length=latent_frames, edit_ratio=edit_ratio)]


def edit_strategy(latent_frames: int, edit_ratio: float, ref_id: int = 0) -> list[MaskGroup]:
    """Video-to-video: every frame starts from the reference and is edited with ``edit_ratio``."""
    return [MaskGroup(ref_id=ref_id, length=latent_frames, edit_ratio=edit_ratio)]


# ---------------------------------------------------------------------------
# Named tasks, resolved once the clip length and the references are known
# ---------------------------------------------------------------------------

TASKS = ("first_frame", "first_last", "extend", "edit")


def task_groups(
    task: str,
    *,
    geometry: LatentGeometry,
    num_frames: int,
    ref_num_frames: Sequence[int],
    frames: int = 1,
    edit_ratio: float = 0.0,
) -> list[MaskGroup]:
    """Latent mask groups of a named task for a clip of ``num_frames`` pixel frames.

    first_frame: reference 0's first frame starts the video (image to video);
    first_last:  reference 0's first frame starts it, the last reference's last frame ends it (stitching;
                 with one video reference, its first and last frames);
    extend:      the last ``frames`` pixel frames of reference 0 (as latent frames) start the video;
    edit:        the video starts from reference 0, every frame edited with ``edit_ratio`` (video to video).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not ref_num_frames:
        raise ValueError(f"the {task} task needs at least one reference image or video")
    clip_latents = geometry.latent_frames(num_frames)
    first_latents = geometry.latent_frames(ref_num_frames[0])
    if task == "first_frame":
        return first_frame_strategy()
    if task == "first_last":
        last = len(ref_num_frames) - 1
        if geometry.latent_frames(ref_num_frames[last]) == 1:
            return first_last_strategy(0, last)  # the official "0;0,1,0,-1,1" for two images
        return [MaskGroup(ref_id=0), MaskGroup(ref_id=last, ref_start=-1, target_start=-1)]
    if task == "extend":
        if frames < 1:
            raise ValueError(f"extend: frames must be >= 1, got {frames}")
        wanted = geometry.pixel_to_latent_frame(min(frames, num_frames) - 1, num_frames) + 1
        return extend_strategy(min(wanted, first_latents, clip_latents))
    return edit_strategy(min(first_latents, clip_latents), edit_ratio)


# ---------------------------------------------------------------------------
# The conditioning a family declares
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskStrategyConditioning:
    """Reference frames placed by Open-Sora mask strategies, with the rules of one release ("v1.1"/"v1.2")."""

    version: str

    def __post_init__(self) -> None:
        check_version(self.version)
