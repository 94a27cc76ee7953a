"""User-facing mask strategies: frame checks, pixel-frame positions, placement once, reports, builders.

:func:`place_strategy` checks a sample's groups against the frame counts (every value the official
code would reject or silently misread raises a ``ValueError`` naming the group and the fix) and places
each group once; the generation plan keeps those placements and both the report
(:func:`describe_placements`) and the insertion (:func:`~.strategy.insert_references`) read them.
Users think in pixel frames: a :class:`~.strategy.MaskGroup` in pixel units becomes a latent group with
the VAE's :class:`~opensora_core.geometry.LatentGeometry` (:func:`to_latent_groups`).
:class:`MaskStrategyConditioning` is what an Open-Sora family declares as its conditioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import media
from ..geometry import LatentGeometry
from .loop import continuation_groups
from .strategy import (
    LATENT,
    NAME,
    V1_1,
    V1_2,
    MaskGroup,
    PlacedGroup,
    Strategy,
    as_groups,
    check_groups,
    check_version,
    insert_references,
    place_group,
    where,
)

# ---------------------------------------------------------------------------
# Frame checks and placement
# ---------------------------------------------------------------------------


def _check_frame(what: str, start: int, frames: int, name: str) -> None:
    if not -frames <= start < frames:
        raise ValueError(
            f"{what} lies beyond the {name}: {start} with {frames} frame(s); "
            f"use 0..{frames - 1}, or -{frames}..-1 to count from the end"
        )


def _check_fits_v1_1(index: int, placed: PlacedGroup, latent_frames: int, ref_frames: int) -> None:
    """v1.1 copies unclipped slices; they must have equal length (or the reference slice 1 frame)."""
    target = min(placed.length, latent_frames - placed.target_start)
    source = min(placed.length, ref_frames - placed.ref_start)
    if source != target and source != 1:
        fits = min(latent_frames - placed.target_start, ref_frames - placed.ref_start)
        raise ValueError(
            f"{where(index, placed.group, V1_1)} runs past the end of the latent video or the reference "
            f"({target} target frame(s), {source} reference frame(s)); shorten length to {fits}"
        )


def place_strategy(
    strategy: Strategy,
    *,
    latent_frames: int,
    ref_latent_frames: Sequence[int],
    version: str = V1_2,
    align: int | None = None,
    loops: int = 1,
) -> list[PlacedGroup]:
    """Check one sample's latent groups against its references and place each once.

    latent_frames:     latent frames of the generated clip
    ref_latent_frames: latent frames of each reference of this sample, by ref_id
    loops:             loop rounds that will run (loop_id must be below it)
    """
    groups = as_groups(strategy)
    check_groups(groups, references=len(ref_latent_frames), loops=loops, version=check_version(version))
    return _place_checked(groups, latent_frames, ref_latent_frames, version, align)


def _place_checked(groups: Sequence[MaskGroup], latent_frames: int, ref_latent_frames: Sequence[int], version: str,
                   align: int | None) -> list[PlacedGroup]:
    """Frame checks and placement of groups that passed :func:`~.strategy.check_groups`."""
    if align is not None and (version == V1_1 or align < 1):
        raise ValueError(f"align={align} is not valid for {version}; use None, or a positive integer with v1.2")
    placed = []
    for index, group in enumerate(groups):
        what, ref_frames = where(index, group, version), ref_latent_frames[group.ref_id]
        _check_frame(f"{what}: target_start", group.target_start, latent_frames, "latent video")
        _check_frame(f"{what}: ref_start", group.ref_start, ref_frames, f"reference {group.ref_id}")
        placed.append(place_group(group, latent_frames, ref_frames, version, align))
        if version == V1_1:
            _check_fits_v1_1(index, placed[-1], latent_frames, ref_frames)
    return placed


def validate_mask_strategy(strategy: Strategy, **frames) -> list[MaskGroup]:
    """Check one sample's strategy (text or latent groups) and return its groups; the keyword arguments
    of :func:`place_strategy`."""
    return [placed.group for placed in place_strategy(strategy, **frames)]


# ---------------------------------------------------------------------------
# Pixel positions
# ---------------------------------------------------------------------------


def _pixel_span(what: str, start: int, length: int, frames: int, name: str) -> tuple[int, int]:
    _check_frame(f"{what}: start frame", start, frames, name)
    start = start + frames if start < 0 else start
    if start + length > frames:
        raise ValueError(
            f"{what} runs past the end of the {name} ({frames} frames) from frame {start}; "
            f"shorten length to {frames - start}"
        )
    return start, start + length - 1


def to_latent_groups(
    groups: Sequence[MaskGroup],
    *,
    geometry: LatentGeometry,
    num_frames: int,
    ref_num_frames: Sequence[int],
    name: str = NAME,
) -> list[MaskGroup]:
    """Groups in latent frames: pixel groups are converted, latent groups kept.

    num_frames:     pixel frames of the generated clip
    ref_num_frames: pixel frames of each reference (1 for an image), by ref_id
    A pixel group covers every latent frame that holds one of its pixel frames.
    """
    check_groups(groups, references=len(ref_num_frames), name=name)
    return _to_latent_checked(groups, geometry, num_frames, ref_num_frames, name)


def _to_latent_checked(groups: Sequence[MaskGroup], geometry: LatentGeometry, num_frames: int,
                       ref_num_frames: Sequence[int], name: str = NAME) -> list[MaskGroup]:
    return [g if g.units == LATENT else _to_latent(i, g, geometry, num_frames, ref_num_frames, name)
            for i, g in enumerate(groups)]


def _to_latent(index: int, group: MaskGroup, geometry: LatentGeometry, num_frames: int,
               ref_num_frames: Sequence[int], name: str) -> MaskGroup:
    what = f"{where(index, group, name=name)} in pixel frames"
    ref_frames = ref_num_frames[group.ref_id]
    first, last = _pixel_span(what, group.target_start, group.length, num_frames, "generated video")
    target = geometry.pixel_to_latent_frame(first, num_frames)
    length = geometry.pixel_to_latent_frame(last, num_frames) - target + 1
    ref_first, _ = _pixel_span(what, group.ref_start, group.length, ref_frames, f"reference {group.ref_id}")
    ref_start = geometry.pixel_to_latent_frame(ref_first, ref_frames)
    ref_latents = geometry.latent_frames(ref_frames)
    if ref_start + length > ref_latents:
        raise ValueError(
            f"{what} needs {length} latent frame(s) from latent frame {ref_start} of reference {group.ref_id}, "
            f"which has {ref_latents}; start earlier in the reference or shorten length"
        )
    return MaskGroup(group.loop_id, group.ref_id, ref_start, target, length, float(group.edit_ratio))


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


def _adjustments(placed: PlacedGroup) -> str:
    """Notes on what alignment and clipping changed compared with the group as written."""
    ref_start, target_start = placed.unaligned
    notes = []
    if placed.target_start != target_start:
        notes.append(f"target start {target_start} snapped to {placed.target_start} by align")
    if placed.ref_start != ref_start:
        notes.append(f"reference start {ref_start} snapped to {placed.ref_start} by align")
    if placed.length != placed.group.length:
        notes.append(f"length {placed.group.length} clipped to {placed.length}")
    return f" ({'; '.join(notes)})" if notes else ""


def describe_placements(
    placements: Sequence[PlacedGroup],
    *,
    latent_frames: int,
    loop_i: int = 0,
    version: str = V1_2,
    geometry: LatentGeometry | None = None,
    num_frames: int | None = None,
) -> str:
    """One line per group: which reference frames land on which latent (and pixel) frames in round ``loop_i``.

    Pass ``geometry`` and ``num_frames`` (pixel frames of the clip) to add pixel positions.
    """
    lines = []
    for index, placed in enumerate(placements):
        head = where(index, placed.group, version)
        if placed.group.loop_id != loop_i:
            lines.append(f"{head}: loop {placed.group.loop_id}, not used in loop {loop_i}")
            continue
        text = (
            f"{head}: reference {placed.ref_id} latent {_frames_text(placed.ref_start, placed.length)} -> "
            f"latent {_frames_text(placed.target_start, placed.length)} of {latent_frames}"
        )
        if geometry is not None and num_frames is not None:
            text += _pixel_text(geometry, placed.target_start, placed.length, num_frames)
        lines.append(f"{text}; {_role(placed.edit_ratio)}{_adjustments(placed)}")
    return "\n".join(lines) if lines else "no reference frames: every frame is generated"


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
    """:func:`describe_placements` of a strategy placed against ``ref_latent_frames`` (no validation)."""
    placed = [place_group(g, latent_frames, ref_latent_frames[g.ref_id], version, align) if g.loop_id == loop_i
              else PlacedGroup(g, g.ref_start, g.target_start, g.length, (g.ref_start, g.target_start))
              for g in as_groups(strategy)]
    return describe_placements(placed, latent_frames=latent_frames, loop_i=loop_i, version=version,
                               geometry=geometry, num_frames=num_frames)


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


@dataclass(frozen=True)
class Task:
    """A named task as a strategy: resolved to latent groups when the plan knows the clip and the references."""

    name: str  # one of TASKS
    frames: int = 1  # extend: pixel frames of reference 0's end that start the video
    edit_ratio: float = 0.0  # edit: how much of the source is regenerated

    def groups(self, *, geometry: LatentGeometry, num_frames: int, ref_num_frames: Sequence[int]) -> list[MaskGroup]:
        return task_groups(self.name, geometry=geometry, num_frames=num_frames, ref_num_frames=ref_num_frames,
                           frames=self.frames, edit_ratio=self.edit_ratio)


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
# Encoding references
# ---------------------------------------------------------------------------


def encode_references(vae, references: Sequence[torch.Tensor], height: int, width: int, noise) -> list[torch.Tensor]:
    """Fit each reference (T, H, W, 3) to the requested size and encode it: (C, t, h, w) float32 latents.

    As ``collect_references_batch`` + ``read_from_path(..., transform_name="resize_crop")``: images are
    resized with bicubic and videos with bilinear filtering to cover ``height`` x ``width`` (the requested
    size, e.g. 240x426, not the decoded 240x424), centre-cropped to it, and encoded one by one; the VAE
    floors sizes that are not multiples of 8 and samples its posterior with ``noise`` (a ``vae.NoiseFn``).
    """
    latents = []
    for frames in references:
        mode = "bicubic" if frames.shape[0] == 1 else "bilinear"
        fitted = media.resize_cover_crop(frames, height, width, mode=mode)
        x = media.to_model_range(fitted).unsqueeze(0)  # (1, 3, T, H, W)
        latents.append(vae.encode(x, noise=noise).float()[0])  # (C, t, h, w)
    return latents


# ---------------------------------------------------------------------------
# The conditioning a family declares
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskStrategyConditioning:
    """Reference frames placed by Open-Sora mask strategies, with the rules of one release ("v1.1"/"v1.2").

    :meth:`place` turns one sample's groups (any units) into its placements for every loop round: the user
    groups against the user references, then one continuation group per later round (official loop mode),
    which takes the previous clip's last ``condition_frames`` latent frames. :meth:`encode` encodes the
    references, :meth:`insert` and :meth:`describe` read the placements (the pipeline calls these four;
    another family's conditioning implements the same four).
    """

    version: str

    def __post_init__(self) -> None:
        check_version(self.version)

    def place(self, strategy: Sequence[MaskGroup] | Task, *, geometry: LatentGeometry, num_frames: int,
              reference_frames: Sequence[int], loops: int, condition_frames: int, condition_edit: float,
              align: int | None) -> list[PlacedGroup]:
        if isinstance(strategy, Task):
            groups = strategy.groups(geometry=geometry, num_frames=num_frames, ref_num_frames=reference_frames)
        elif reference_frames and not strategy:
            raise ValueError(
                f"{len(reference_frames)} reference(s) given but the mask strategy is empty, so none would be used; "
                "give a mask strategy (e.g. '0': reference 0 as the first frame) or leave the references out"
            )
        else:
            groups = list(strategy)
        check_groups(groups, references=len(reference_frames), loops=loops, version=self.version)
        latent_frames = geometry.latent_frames(num_frames)
        latent = _to_latent_checked(groups, geometry, num_frames, reference_frames)
        ref_latents = [geometry.latent_frames(n) for n in reference_frames]
        placed = _place_checked(latent, latent_frames, ref_latents, self.version, align)
        for group in continuation_groups(loops, len(reference_frames), condition_frames, condition_edit):
            placed.append(place_group(group, latent_frames, latent_frames, self.version, align))  # ref: a clip
        return placed

    def encode(self, vae, references: Sequence[torch.Tensor], placements: Sequence[Sequence[PlacedGroup]], *,
               height: int, width: int, num_frames: int, noise) -> list[list[torch.Tensor]]:
        """Every sample gets the same references, encoded once (:func:`encode_references`)."""
        latents = encode_references(vae, references, height, width, noise)
        return [list(latents) for _ in placements]

    def insert(self, z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]],
               placements: Sequence[Sequence[PlacedGroup]], loop_i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The round's noise with the placed reference latents inserted, and the frame mask (B, T)."""
        return insert_references(z, refs, [[p for p in sample if p.group.loop_id == loop_i] for sample in placements])

    def describe(self, placements: Sequence[PlacedGroup], *, loop_i: int, geometry: LatentGeometry,
                 num_frames: int) -> str:
        return describe_placements(placements, latent_frames=geometry.latent_frames(num_frames), loop_i=loop_i,
                                   version=self.version, geometry=geometry, num_frames=num_frames)
