"""Mask strategies: where reference latents go in the generated latent, exactly as the official scripts.

A strategy string is a ``;``-separated list of groups of up to six comma-separated numbers,
``loop_id,ref_id,ref_start,target_start,length,edit_ratio`` (missing trailing fields default
to 0,0,0,1,0). :func:`parse_mask_strategy` is the one parser: it turns the text into typed
:class:`MaskGroup` objects, which carry their units (latent frames, or pixel frames that
:mod:`.plan` converts with the VAE's geometry) and travel typed from there on.
:func:`check_groups` is the one rule set for what a group may say without knowing the frame
counts (the node checks a strategy with it when the prompt is queued).

Placing a group of loop ``loop_i`` (:func:`place_group`) resolves negative starts, alignment and
clipping once; inserting it copies the reference frames into the latent and writes the per-frame
mask the sampler reads: 1 = generate, 0 = keep the reference, r in (0, 1) = edit with strength r.

The two versions differ (``version`` switch):

* "v1.1" (scripts/inference-long.py ``apply_mask_strategy``): a slice that runs past the
  latent or the reference is not clipped; the copy follows tensor broadcasting (a 1-frame
  reference slice fills the whole target slice) and fails otherwise. No alignment.
* "v1.2" (opensora/utils/inference_utils.py ``apply_mask_strategy``): optional ``align``
  snapping of both starts with :func:`find_nearest_point`, then the length is clipped to
  what fits in both the latent and the reference.

These functions reproduce the official results for every input the official code accepts;
:mod:`.plan` validates user input against the frame counts first and explains mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

V1_1 = "v1.1"
V1_2 = "v1.2"
VERSIONS = (V1_1, V1_2)

Units = Literal["latent", "pixel"]
LATENT: Units = "latent"
PIXEL: Units = "pixel"

FIELDS = ("loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio")
DEFAULT_FIELDS = ("0", "0", "0", "0", "1", "0")
FORMAT_HINT = "each group is loop_id,ref_id,ref_start,target_start,length[,edit_ratio], e.g. '0,0,0,0,1'"
NAME = "mask strategy"  # how messages call a strategy; the node says "mask_strategy" (its input)


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown mask-strategy version {version!r}; use {' or '.join(map(repr, VERSIONS))}")
    return version


# ---------------------------------------------------------------------------
# Groups and parsing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskGroup:
    """One group of a mask strategy (negative starts count from the end).

    ``units``: ``"latent"`` frames (the official strategies), or ``"pixel"`` frames as a user sees the
    videos; a pixel group covers every latent frame that holds one of its pixel frames.
    """

    loop_id: int = 0
    ref_id: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0
    units: Units = LATENT

    def format(self, version: str = V1_2) -> str:
        """The group as a strategy string; v1.1 strings have no edit ratio when it is 0."""
        head = f"{self.loop_id},{self.ref_id},{self.ref_start},{self.target_start},{self.length}"
        if check_version(version) == V1_1 and self.edit_ratio == 0:
            return head
        return f"{head},{float(self.edit_ratio)}"


def format_mask_strategy(groups: Sequence[MaskGroup], version: str = V1_2) -> str:
    return ";".join(g.format(version) for g in groups)


def _describe(name: str, index: int, text: str) -> str:
    return f"{name} group {index + 1} {text!r}"


def parse_mask_strategy(strategy: str | None, units: Units = LATENT, *, name: str = NAME) -> list[MaskGroup]:
    """Typed groups of a strategy string (official parse_mask_strategy / process_mask_strategy).

    None or "" gives no groups; ``units`` says what the frame numbers count; ``name`` is how messages call
    the strategy (the input it came from).
    """
    if units not in (LATENT, PIXEL):
        raise ValueError(f"units must be {LATENT!r} or {PIXEL!r}, got {units!r}")
    if strategy is None or strategy == "":
        return []
    return [_parse_group(index, text, units, name) for index, text in enumerate(strategy.split(";"))]


def _parse_group(index: int, text: str, units: Units, name: str) -> MaskGroup:
    fields = text.split(",")
    if len(fields) > len(FIELDS):
        raise ValueError(
            f"{_describe(name, index, text)} has {len(fields)} fields, at most 6 are allowed; {FORMAT_HINT}"
        )
    if text.strip() == "":
        raise ValueError(f"{_describe(name, index, text)} is empty: remove the extra ';'; {FORMAT_HINT}")
    values = []
    for field, value in zip(FIELDS, fields + list(DEFAULT_FIELDS[len(fields):]), strict=True):
        convert = float if field == "edit_ratio" else int
        try:
            values.append(convert(value))
        except ValueError:
            kind = "a number" if convert is float else "an integer"
            what = _describe(name, index, text)
            raise ValueError(f"{what}: {field} {value!r} is not {kind}; {FORMAT_HINT}") from None
    return MaskGroup(*values, units=units)


Strategy = str | None | Sequence[MaskGroup]


def as_groups(strategy: Strategy) -> list[MaskGroup]:
    """Groups of a strategy given as text (parsed, latent frames) or already as groups."""
    if strategy is None or isinstance(strategy, str):
        return parse_mask_strategy(strategy)
    return list(strategy)


# ---------------------------------------------------------------------------
# The rules that need no frame counts
# ---------------------------------------------------------------------------


def where(index: int, group: MaskGroup, version: str = V1_2, name: str = NAME) -> str:
    """How messages name a group: ``mask strategy group 2 ('0,1,0,-1,1,0.0')``."""
    return f"{name} group {index + 1} ({group.format(version)!r})"


def check_groups(groups: Sequence[MaskGroup], *, references: int | None = None, loops: int | None = None,
                 version: str = V1_2, name: str = NAME) -> None:
    """Raise ``ValueError`` naming the group and the fix for a value no strategy may have: a loop or
    reference it cannot use (when ``loops`` / ``references`` are known), an empty group, an edit ratio
    outside 0..1. Frame positions are checked against the frame counts by :mod:`.plan`."""
    for index, group in enumerate(groups):
        what = where(index, group, version, name)
        _check_loop(what, group, loops)
        _check_reference(what, group, references)
        if group.length < 1:
            raise ValueError(f"{what} has length {group.length}; a group covers at least 1 {group.units} frame")
        if not 0.0 <= group.edit_ratio <= 1.0:
            raise ValueError(f"{what} has edit_ratio {group.edit_ratio}; use 0 (keep) .. 1 (regenerate)")


def _check_loop(what: str, group: MaskGroup, loops: int | None) -> None:
    if loops is not None and not 0 <= group.loop_id < loops:
        raise ValueError(f"{what} is for loop {group.loop_id} but {loops} loop(s) run; use loop_id 0..{loops - 1}")
    if group.loop_id < 0:
        raise ValueError(f"{what} has loop_id {group.loop_id}; loops count from 0")


def _check_reference(what: str, group: MaskGroup, references: int | None) -> None:
    if references is not None and not 0 <= group.ref_id < references:
        if references == 0:
            raise ValueError(
                f"{what} uses reference {group.ref_id}, but no reference was given; add one or remove the group"
            )
        raise ValueError(
            f"{what} uses reference {group.ref_id}, but only {references} reference(s) were given "
            f"(ref_id 0..{references - 1}); add a reference or fix ref_id"
        )
    if group.ref_id < 0:
        raise ValueError(f"{what} has ref_id {group.ref_id}; references count from 0")


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------


def find_nearest_point(value: int, point: int, max_value: int) -> int:
    """Snap ``value`` to a multiple of ``point``: up if the remainder exceeds point/2 and a
    further multiple still fits below ``max_value``, else down (official ``find_nearest_point``)."""
    steps = value // point
    if value % point > point / 2 and steps < max_value // point - 1:
        steps += 1
    return steps * point


@dataclass(frozen=True)
class PlacedGroup:
    """Where one (latent) group lands after resolving negative starts, alignment and clipping."""

    group: MaskGroup  # as written
    ref_start: int
    target_start: int
    length: int
    unaligned: tuple[int, int]  # (ref_start, target_start) before ``align`` snapped them

    @property
    def ref_id(self) -> int:
        return self.group.ref_id

    @property
    def edit_ratio(self) -> float:
        return self.group.edit_ratio


def place_group(
    group: MaskGroup, latent_frames: int, ref_frames: int, version: str, align: int | None = None
) -> PlacedGroup:
    """Resolve a latent group against a latent of ``latent_frames`` and a reference of ``ref_frames`` frames."""
    check_version(version)
    if group.units != LATENT:
        raise ValueError(f"{group} counts pixel frames; convert it with the VAE geometry first (plan.to_latent_groups)")
    ref_start, target_start, length = group.ref_start, group.target_start, group.length
    if ref_start < 0:
        ref_start += ref_frames
    if target_start < 0:
        target_start += latent_frames
    unaligned = (ref_start, target_start)
    if version == V1_2:
        if align is not None:
            ref_start = find_nearest_point(ref_start, align, ref_frames)
            target_start = find_nearest_point(target_start, align, latent_frames)
        length = min(length, latent_frames - target_start, ref_frames - ref_start)
    elif align is not None:
        raise ValueError("align is a v1.2 option; v1.1 mask strategies are not aligned")
    return PlacedGroup(group, ref_start, target_start, length, unaligned)


def _reference(refs: Sequence[torch.Tensor], group: MaskGroup, sample: int) -> torch.Tensor:
    try:
        return refs[group.ref_id]
    except IndexError:
        raise ValueError(
            f"mask strategy of sample {sample} uses reference {group.ref_id}, "
            f"but the sample has {len(refs)} reference(s)"
        ) from None


def _insert(z: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, placed: PlacedGroup) -> None:
    """Copy the placed reference frames into z (C, T, H, W) and write the edit ratio into mask (T,)."""
    stop_z, stop_r = placed.target_start + placed.length, placed.ref_start + placed.length
    try:
        z[:, placed.target_start : stop_z] = ref[:, placed.ref_start : stop_r]
    except RuntimeError:
        raise ValueError(
            f"mask strategy group {placed.group.format()!r} does not fit: latent frames "
            f"{placed.target_start}..{stop_z - 1} of {z.shape[1]} cannot take reference frames "
            f"{placed.ref_start}..{stop_r - 1} of {ref.shape[1]}"
        ) from None
    mask[placed.target_start : stop_z] = placed.edit_ratio


def insert_references(
    z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]], placed: Sequence[Sequence[PlacedGroup]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Insert placed groups (per sample, in order; later ones overwrite earlier ones) into a copy of ``z``.

    z (B, C, T, H, W); refs: per sample its reference latents, each (C, T_ref, H, W). Returns the new
    latent and the frame mask (B, T) float32, or (z, None) when ``placed`` is empty.
    """
    if len(placed) == 0:
        return z, None
    if len(placed) != z.shape[0] or len(refs) < len(placed):
        raise ValueError(f"{len(placed)} strategies and {len(refs)} reference lists for a batch of {z.shape[0]}")
    z = z.clone()
    masks = []
    for b, groups in enumerate(placed):
        mask = torch.ones(z.shape[2], dtype=torch.float32, device=z.device)  # (T,)
        for group in groups:
            _insert(z[b], mask, _reference(refs[b], group.group, b), group)
        masks.append(mask)
    return z, torch.stack(masks)  # (B, T)


def apply_mask_strategy(
    z: torch.Tensor,
    refs: Sequence[Sequence[torch.Tensor]],
    strategies: Sequence[Strategy],
    loop_i: int = 0,
    *,
    version: str = V1_2,
    align: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Place and insert in one call, as the official ``apply_mask_strategy`` (no validation).

    z:          (B, C, T, H, W) latent (not modified; the result is a copy)
    refs:       per sample, its reference latents, each (C, T_ref, H, W)
    strategies: per sample, a strategy string (None or "" = no references) or latent groups
    Groups of other loops are skipped. Returns (z, mask (B, T)), or (z, None) for no strategies.
    """
    check_version(version)
    if len(strategies) != 0 and (len(strategies) != z.shape[0] or len(refs) < len(strategies)):
        raise ValueError(f"{len(strategies)} strategies and {len(refs)} reference lists for a batch of {z.shape[0]}")
    placed = [
        [place_group(g, z.shape[2], _reference(refs[b], g, b).shape[1], version, align)
         for g in as_groups(strategy) if g.loop_id == loop_i]
        for b, strategy in enumerate(strategies)
    ]
    return insert_references(z, refs, placed)
