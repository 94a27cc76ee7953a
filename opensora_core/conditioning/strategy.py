"""Mask strategies: where reference latents go in the generated latent, exactly as the official scripts.

A strategy string is a ``;``-separated list of groups of up to six comma-separated numbers,
``loop_id,ref_id,ref_start,target_start,length,edit_ratio`` (missing trailing fields default
to 0,0,0,1,0). All positions count LATENT frames. Applying the groups of loop ``loop_i``
copies reference frames into the latent and writes the per-frame mask the sampler reads:
1 = generate, 0 = keep the reference, r in (0, 1) = edit the reference with strength r.

The two versions differ (``version`` switch):

* "v1.1" (scripts/inference-long.py ``apply_mask_strategy``): a slice that runs past the
  latent or the reference is not clipped; the copy follows tensor broadcasting (a 1-frame
  reference slice fills the whole target slice) and fails otherwise. No alignment.
* "v1.2" (opensora/utils/inference_utils.py ``apply_mask_strategy``): optional ``align``
  snapping of both starts with :func:`find_nearest_point`, then the length is clipped to
  what fits in both the latent and the reference.

These functions reproduce the official results for every input the official code accepts;
:mod:`.plan` validates user input first and explains mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

V1_1 = "v1.1"
V1_2 = "v1.2"
VERSIONS = (V1_1, V1_2)

FIELDS = ("loop_id", "ref_id", "ref_start", "target_start", "length", "edit_ratio")
DEFAULT_FIELDS = ("0", "0", "0", "0", "1", "0")
FORMAT_HINT = "each group is loop_id,ref_id,ref_start,target_start,length[,edit_ratio], e.g. '0,0,0,0,1'"


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown mask-strategy version {version!r}; use {' or '.join(map(repr, VERSIONS))}")
    return version


# ---------------------------------------------------------------------------
# Groups and parsing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskGroup:
    """One group of a mask strategy (latent frames; negative starts count from the end)."""

    loop_id: int = 0
    ref_id: int = 0
    ref_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0

    def format(self, version: str = V1_2) -> str:
        """The group as a strategy string; v1.1 strings have no edit ratio when it is 0."""
        head = f"{self.loop_id},{self.ref_id},{self.ref_start},{self.target_start},{self.length}"
        if check_version(version) == V1_1 and self.edit_ratio == 0:
            return head
        return f"{head},{float(self.edit_ratio)}"


def format_mask_strategy(groups: Sequence[MaskGroup], version: str = V1_2) -> str:
    return ";".join(g.format(version) for g in groups)


def _describe(index: int, text: str) -> str:
    return f"mask strategy group {index + 1} {text!r}"


def split_mask_strategy(strategy: str | None) -> list[list[str]]:
    """Groups as lists of six field strings with the defaults filled in (the official parser's output
    before conversion). None or "" gives no groups."""
    if strategy is None or strategy == "":
        return []
    groups = []
    for index, text in enumerate(strategy.split(";")):
        fields = text.split(",")
        if len(fields) > len(FIELDS):
            raise ValueError(f"{_describe(index, text)} has {len(fields)} fields, at most 6 are allowed; {FORMAT_HINT}")
        groups.append(fields + list(DEFAULT_FIELDS[len(fields) :]))
    return groups


def parse_mask_strategy(strategy: str | None) -> list[MaskGroup]:
    """Typed groups of a strategy string (parse_mask_strategy / process_mask_strategy)."""
    groups = []
    for index, fields in enumerate(split_mask_strategy(strategy)):
        text = strategy.split(";")[index]
        if text.strip() == "":
            raise ValueError(f"{_describe(index, text)} is empty: remove the extra ';'; {FORMAT_HINT}")
        values = []
        for name, field in zip(FIELDS, fields, strict=True):
            convert = float if name == "edit_ratio" else int
            try:
                values.append(convert(field))
            except ValueError:
                kind = "a number" if convert is float else "an integer"
                raise ValueError(f"{_describe(index, text)}: {name} {field!r} is not {kind}; {FORMAT_HINT}") from None
        groups.append(MaskGroup(*values))
    return groups


Strategy = str | None | Sequence[MaskGroup]


def as_groups(strategy: Strategy) -> list[MaskGroup]:
    if strategy is None or isinstance(strategy, str):
        return parse_mask_strategy(strategy)
    return list(strategy)


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
class Placement:
    """Where one group lands after resolving negative starts, alignment and clipping."""

    ref_id: int
    ref_start: int
    target_start: int
    length: int
    edit_ratio: float


def place_group(
    group: MaskGroup, latent_frames: int, ref_frames: int, version: str, align: int | None = None
) -> Placement:
    """Resolve a group against a latent of ``latent_frames`` and a reference of ``ref_frames`` frames."""
    check_version(version)
    ref_start, target_start, length = group.ref_start, group.target_start, group.length
    if ref_start < 0:
        ref_start += ref_frames
    if target_start < 0:
        target_start += latent_frames
    if version == V1_2:
        if align is not None:
            ref_start = find_nearest_point(ref_start, align, ref_frames)
            target_start = find_nearest_point(target_start, align, latent_frames)
        length = min(length, latent_frames - target_start, ref_frames - ref_start)
    elif align is not None:
        raise ValueError("align is a v1.2 option; v1.1 mask strategies are not aligned")
    return Placement(group.ref_id, ref_start, target_start, length, group.edit_ratio)


def _reference(refs: Sequence[torch.Tensor], group: MaskGroup, sample: int) -> torch.Tensor:
    try:
        return refs[group.ref_id]
    except IndexError:
        raise ValueError(
            f"mask strategy of sample {sample} uses reference {group.ref_id}, "
            f"but the sample has {len(refs)} reference(s)"
        ) from None


def _insert(z: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, where: Placement, group: MaskGroup) -> None:
    """Copy the placed reference frames into z (C, T, H, W) and write the edit ratio into mask (T,)."""
    stop_z, stop_r = where.target_start + where.length, where.ref_start + where.length
    try:
        z[:, where.target_start : stop_z] = ref[:, where.ref_start : stop_r]
    except RuntimeError:
        raise ValueError(
            f"mask strategy group {group.format()!r} does not fit: latent frames "
            f"{where.target_start}..{stop_z - 1} of {z.shape[1]} cannot take reference frames "
            f"{where.ref_start}..{stop_r - 1} of {ref.shape[1]}"
        ) from None
    mask[where.target_start : stop_z] = where.edit_ratio


def apply_mask_strategy(
    z: torch.Tensor,
    refs: Sequence[Sequence[torch.Tensor]],
    strategies: Sequence[Strategy],
    loop_i: int = 0,
    *,
    version: str = V1_2,
    align: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Insert reference latents and build the frame mask (official ``apply_mask_strategy``).

    z:          (B, C, T, H, W) latent (not modified; the result is a copy)
    refs:       per sample, its reference latents, each (C, T_ref, H, W)
    strategies: per sample, a strategy string (None or "" = no references) or parsed groups
    Returns (z with the references inserted, mask (B, T) float32), or (z, None) when
    ``strategies`` is empty. Groups of other loops are skipped; later groups overwrite earlier ones.
    """
    check_version(version)
    if len(strategies) == 0:
        return z, None
    if len(strategies) != z.shape[0] or len(refs) < len(strategies):
        raise ValueError(f"{len(strategies)} strategies and {len(refs)} reference lists for a batch of {z.shape[0]}")
    z = z.clone()
    masks = []
    for b, strategy in enumerate(strategies):
        mask = torch.ones(z.shape[2], dtype=torch.float32, device=z.device)  # (T,)
        for group in as_groups(strategy):
            if group.loop_id != loop_i:
                continue
            ref = _reference(refs[b], group, b)
            where = place_group(group, z.shape[2], ref.shape[1], version, align)
            _insert(z[b], mask, ref, where, group)
        masks.append(mask)
    return z, torch.stack(masks)  # (B, T)
