"""Open-Sora 2.0 conditioning: condition types, the condition mask + reference latent, the frame replacement.

Follows ``prepare_inference_condition`` and ``collect_references_batch`` of opensora/utils/inference.py and
the end of ``api_fn`` in opensora/utils/sampling.py (hpcaitech/Open-Sora main, the 2.0 code).

The MMDiT takes the condition as ``cond = pack(cat(mask [B,1,T,H,W], masked_ref [B,16,T,H,W]))``: mask 1
on the latent frames given by a reference, and the reference latent placed there (zeros elsewhere).

| cond_type | conditioned latent frames | reference content |
|---|---|---|
| t2v | none | - |
| i2v_head | 0 | frame 0 of the item's first reference |
| i2v_tail | T-1 | last frame of its last reference |
| i2v_loop | 0 and T-1 | frame 0 of the first, last frame of the last reference |
| v2v_head / v2v_tail | first / last 9 (8 + causal) | the same frames of the first reference |
| v2v_head_easy / v2v_tail_easy | first / last 17 (16 + causal) | the same frames of the first reference |

Nothing is placed for one latent frame (an image). ``v2v_head_half`` / ``v2v_tail_half`` appear in the
official config comments but are not implemented there (the official code raises); they raise ValueError
here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .plan import encode_references

logger = logging.getLogger("opensora")

COND_TYPES = ("t2v", "i2v_head", "i2v_tail", "i2v_loop", "v2v_head", "v2v_tail", "v2v_head_easy", "v2v_tail_easy")
UNIMPLEMENTED_COND_TYPES = ("v2v_head_half", "v2v_tail_half")
V2V_FRAMES = {"v2v_head": 8, "v2v_tail": 8, "v2v_head_easy": 16, "v2v_tail_easy": 16}  # latent frames, + causal
V2V_PIXEL_FRAMES = 32  # pixel frames a v2v reference gives (64 for *_easy when the video is long enough), + causal

References = Sequence[Sequence[torch.Tensor] | None]  # per batch item: latents [C, T', H, W], or None


def check_cond_type(cond_type: str) -> str:
    """``cond_type`` if known; a clear ValueError otherwise."""
    if cond_type in UNIMPLEMENTED_COND_TYPES:
        raise ValueError(
            f"cond_type {cond_type!r} is listed in the official 256px.py comments but not implemented: the official "
            "code fails with 'Unknown mask condition'. Use 'v2v_head'/'v2v_tail' (9 latent frames) or "
            "'v2v_head_easy'/'v2v_tail_easy' (17)"
        )
    if cond_type not in COND_TYPES:
        raise ValueError(f"unknown cond_type {cond_type!r}; choose one of {', '.join(COND_TYPES)}")
    return cond_type


def uses_temporal_ramp(cond_type: str) -> bool:
    """The image-guidance temporal ramp is applied to i2v types only (``"i2v" in cond_type``)."""
    return "i2v" in check_cond_type(cond_type)


def conditioned_frames(cond_type: str, frames: int, *, causal: bool = True) -> list[int]:
    """Latent frame indices a reference fills for ``cond_type`` in a latent of ``frames`` frames."""
    check_cond_type(cond_type)
    if frames <= 1 or cond_type == "t2v":
        return []
    if cond_type == "i2v_head":
        return [0]
    if cond_type == "i2v_tail":
        return [frames - 1]
    if cond_type == "i2v_loop":
        return sorted({0, frames - 1})
    k = V2V_FRAMES[cond_type] + int(causal)
    return list(range(frames))[:k] if "head" in cond_type else list(range(frames))[-k:]


# ---------------------------------------------------------------------------
# Mask and reference latent (prepare_inference_condition)
# ---------------------------------------------------------------------------


@dataclass
class ConditionV2:
    """The condition of one generation.

    masks [B, 1, T, H, W] and masked_ref [B, C, T, H, W] (zeros where nothing is given); ``references`` the
    per-item reference latents, kept for :func:`replace_reference_frames`.
    """

    cond_type: str
    masks: torch.Tensor
    masked_ref: torch.Tensor
    references: list[list[torch.Tensor] | None]

    @property
    def is_empty(self) -> bool:
        """True when no frame is conditioned (t2v, a single frame, or no reference for any item)."""
        return not bool(self.masks.any()) and not bool(self.masked_ref.any())


def build_condition(z: torch.Tensor, cond_type: str, references: References | None = None, *,
                    causal: bool = True) -> ConditionV2:
    """Mask and masked reference latent for the noise latent z [B, C, T, H, W] (``prepare_inference_condition``).

    references[b] lists item b's reference latents [C, T', H, W] (i2v: one frame each; i2v_loop: head and tail;
    v2v: one clip of at least the conditioned frames), or None for no condition on that item. Placed only if
    T > 1.
    """
    check_cond_type(cond_type)
    B, C, T, H, W = z.shape
    refs = _check_references(cond_type, references, B)
    masks = torch.zeros(B, 1, T, H, W)
    masked = torch.zeros(B, C, T, H, W)
    for b, ref in enumerate(refs):
        if ref is None or T == 1 or cond_type == "t2v":
            continue
        for frame, source in _placements(cond_type, ref, T, causal):
            masks[b, :, frame] = 1
            masked[b, :, frame] = _reference_frame(source, (C, H, W), cond_type, b)
    return ConditionV2(cond_type, masks.to(z.device, z.dtype), masked.to(z.device, z.dtype), refs)


def _check_references(cond_type: str, references: References | None, batch: int) -> list[list[torch.Tensor] | None]:
    if references is None:
        if cond_type != "t2v":
            raise ValueError(f"cond_type {cond_type!r} needs references (one list of latents per batch item)")
        return [None] * batch
    if len(references) != batch:
        raise ValueError(f"references has {len(references)} entries for a batch of {batch}: give one per item")
    refs = [None if r is None else list(r) for r in references]
    for b, ref in enumerate(refs):
        if ref is not None and not ref:
            raise ValueError(f"references[{b}] is an empty list: give latents or None")
        if ref is not None and cond_type == "i2v_loop" and len(ref) != 2:
            raise ValueError(
                f"i2v_loop: references[{b}] must hold two latents (head image, tail image), got {len(ref)}"
            )
        if ref is None and cond_type != "t2v":
            logger.warning("batch item %d has no reference: generated without the %s condition", b, cond_type)
    return refs


def _placements(cond_type: str, ref: list[torch.Tensor], frames: int, causal: bool) -> list[tuple[int, torch.Tensor]]:
    """(latent frame, reference frame [C, H, W]) pairs, as the official code reads them."""
    if cond_type == "i2v_head":
        return [(0, ref[0][:, 0])]
    if cond_type == "i2v_tail":
        return [(frames - 1, ref[-1][:, -1])]
    if cond_type == "i2v_loop":
        return [(0, ref[0][:, 0]), (frames - 1, ref[-1][:, -1])]
    clip, k = ref[0], V2V_FRAMES[cond_type] + int(causal)
    target = conditioned_frames(cond_type, frames, causal=causal)
    source = list(range(clip.shape[1]))[:k] if "head" in cond_type else list(range(clip.shape[1]))[-k:]
    if len(source) != len(target):
        raise ValueError(
            f"{cond_type}: the reference clip has {clip.shape[1]} latent frames and the video {frames}; both need "
            f"at least {k}, or equally many (encode {V2V_PIXEL_FRAMES + int(causal)} video frames for the reference)"
        )
    return [(t, clip[:, s]) for t, s in zip(target, source, strict=True)]


def _reference_frame(frame: torch.Tensor, chw: tuple[int, int, int], cond_type: str, item: int) -> torch.Tensor:
    if tuple(frame.shape) != chw:
        raise ValueError(
            f"{cond_type}: reference latent of item {item} has frame shape {tuple(frame.shape)}, the latent needs "
            f"{chw} [C, H, W]: encode the reference at the generation size"
        )
    return frame


# ---------------------------------------------------------------------------
# Pixel frames a reference contributes (collect_references_batch)
# ---------------------------------------------------------------------------


def reference_clips(cond_type: str, videos: Sequence[torch.Tensor], *, causal: bool = True) -> list[torch.Tensor]:
    """The pixel clips [C, T, H, W] to VAE-encode for one batch item, from its reference videos/images
    [C, T, H, W] (already resized/cropped to the generation size), as ``collect_references_batch`` picks them:
    i2v_head: frame 0 of the first; i2v_tail: last frame of the last; i2v_loop: both; v2v_*: the first
    (or last) 32 + causal frames of the first video (64 + causal for *_easy if it has >= 64 frames)."""
    check_cond_type(cond_type)
    if cond_type == "t2v":
        return []
    if not videos:
        raise ValueError(f"cond_type {cond_type!r} needs at least one reference image or video")
    uses = _uses(cond_type, [int(v.shape[1]) for v in videos], causal=causal)
    return [videos[use.ref_id][:, use.frames] for use in uses]


# ---------------------------------------------------------------------------
# After sampling
# ---------------------------------------------------------------------------


def replace_reference_frames(x: torch.Tensor, condition: ConditionV2, *, all_items: bool = False) -> torch.Tensor:
    """Overwrite the i2v reference frames of the final latent x [B, C, T, H, W] (in place), as ``api_fn``
    does before decoding: i2v_head frame 0, i2v_tail the last frame, i2v_loop both.

    The official code does this for batch item 0 only (its other items keep their generated frames);
    ``all_items=True`` applies it to every item that has a reference. Other cond types change nothing.
    """
    cond_type = condition.cond_type
    if cond_type not in ("i2v_head", "i2v_tail", "i2v_loop"):
        return x
    items = range(x.shape[0]) if all_items else [0]
    for b in items:
        ref = condition.references[b]
        if ref is None:
            if all_items:
                continue
            raise ValueError(
                f"{cond_type}: batch item 0 has no reference latent to put back (the official code fails here)"
            )
        if cond_type == "i2v_tail":
            x[b, :, -1:] = ref[0][:, -1:]  # api_fn reads references[0][0]: the (only) tail reference
        else:
            x[b, :, :1] = ref[0][:, :1]
            if cond_type == "i2v_loop":
                x[b, :, -1:] = ref[1][:, -1:]
    return x


# ---------------------------------------------------------------------------
# The family's conditioning (what the generation pipeline calls)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceUse:
    """One reference clip a condition type reads: reference ``ref_id``, its pixel ``frames`` (encoded alone,
    as ``collect_references_batch`` does), and its ``role`` in the condition ("head", "tail" or "clip")."""

    cond_type: str
    ref_id: int
    frames: slice
    role: str


class ConditionTypes:
    """Open-Sora 2.0's conditioning as the generation pipeline uses it (``Family.conditioning``).

    The request names a ``condition_type`` (t2v, i2v_head, i2v_tail, i2v_loop, v2v_*) instead of a mask
    strategy; :meth:`place` picks the reference clips it reads (i2v_head: frame 0 of reference 0; i2v_tail:
    the last frame of the last reference; i2v_loop: both; v2v: the first / last 33 or 65 frames of reference 0),
    each encoded alone; :meth:`insert` leaves the noise as it is and returns the :class:`ConditionV2` the sampler
    takes as its ``mask``. There is no loop mode.
    """

    def place(self, strategy, *, geometry, num_frames: int, reference_frames: Sequence[int], loops: int,
              condition_frames: int | None, condition_edit: float, align: int | None,
              condition_type: str) -> list[ReferenceUse]:
        check_cond_type(condition_type)
        if strategy:  # mask groups or a named task
            raise ValueError(f"Open-Sora 2.0 is conditioned by condition_type ({condition_type}), not a mask "
                             "strategy: leave mask_strategy empty")
        if loops != 1 or condition_edit or align is not None:
            raise ValueError("Open-Sora 2.0 has no loop mode: loops must be 1 (no condition_frame_edit / align)")
        frames = geometry.latent_frames(num_frames)
        if condition_type == "t2v":
            if reference_frames:
                raise ValueError(f"{len(reference_frames)} reference(s) given but condition_type is t2v, which uses "
                                 "none: pick i2v_head (first frame), i2v_tail (last frame) or i2v_loop (both)")
            return []
        if not reference_frames:
            raise ValueError(f"condition_type {condition_type} needs a reference image (or video); give one")
        if frames == 1:
            raise ValueError(f"a one-frame output takes no reference (the official code ignores {condition_type} "
                             "there): generate 5 or more frames, or use condition_type t2v")
        uses = _uses(condition_type, list(reference_frames))
        needed = len(conditioned_frames(condition_type, frames))
        if condition_type.startswith("v2v") and needed < V2V_FRAMES[condition_type] + 1:
            raise ValueError(f"{condition_type} conditions {V2V_FRAMES[condition_type] + 1} latent frames but "
                             f"{num_frames} frames give {frames}; generate more frames")
        return uses

    def encode(self, vae, references: Sequence[torch.Tensor], placements: Sequence[Sequence[ReferenceUse]], *,
               height: int, width: int, num_frames: int, noise) -> list[list[torch.Tensor]]:
        """The clips of the first sample's uses ((T, H, W, 3) frames of a reference), in order, each fitted and
        encoded on its own (:func:`~opensora_core.conditioning.encode_references`, as ``collect_references_batch``:
        i2v_loop with one image encodes it twice, two posterior samples); every sample uses the same latents."""
        uses = placements[0] if placements else []
        latents = encode_references(vae, [references[use.ref_id][use.frames] for use in uses], height, width, noise)
        return [list(latents) for _ in placements]

    def insert(self, z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]],
               placements: Sequence[Sequence[ReferenceUse]], loop_i: int) -> tuple[torch.Tensor, ConditionV2]:
        """z unchanged and the condition built from each sample's encoded clips (``refs[b]`` in the order of
        :meth:`encode`)."""
        types = {use.cond_type for sample in placements for use in sample} or {"t2v"}
        if len(types) != 1:
            raise ValueError(f"one condition type per generation, got {sorted(types)}")
        cond_type = types.pop()
        if cond_type == "t2v":
            return z, build_condition(z, "t2v")
        per_item = [list(refs[b][: len(sample)]) for b, sample in enumerate(placements)]
        return z, build_condition(z, cond_type, per_item)

    def describe(self, placements: Sequence[ReferenceUse], *, loop_i: int, geometry, num_frames: int) -> str:
        if not placements:
            return "t2v: no reference"
        frames = geometry.latent_frames(num_frames)
        cond_type = placements[0].cond_type
        where = conditioned_frames(cond_type, frames)
        used = ", ".join(f"reference {u.ref_id} frames {_slice_text(u.frames)} ({u.role})" for u in placements)
        return f"{cond_type}: {used} -> latent frame(s) {where[0]}..{where[-1]} of {frames}"


def _uses(cond_type: str, reference_frames: list[int], *, causal: bool = True) -> list[ReferenceUse]:
    """The clips ``collect_references_batch`` reads for ``cond_type`` from references of these frame counts."""
    last = len(reference_frames) - 1
    if cond_type == "i2v_head":
        return [ReferenceUse(cond_type, 0, slice(0, 1), "head")]
    if cond_type == "i2v_tail":
        n = reference_frames[last]
        return [ReferenceUse(cond_type, last, slice(n - 1, n), "tail")]
    if cond_type == "i2v_loop":
        n = reference_frames[last]
        return [ReferenceUse(cond_type, 0, slice(0, 1), "head"), ReferenceUse(cond_type, last, slice(n - 1, n), "tail")]
    available = reference_frames[0]
    needed = 2 * V2V_PIXEL_FRAMES if "easy" in cond_type and available >= 2 * V2V_PIXEL_FRAMES else V2V_PIXEL_FRAMES
    needed += int(causal)
    if available < needed:
        raise ValueError(f"{cond_type} needs a reference video of at least {needed} frames, got {available}")
    frames = slice(0, needed) if "head" in cond_type else slice(available - needed, available)
    return [ReferenceUse(cond_type, 0, frames, "clip")]


def _slice_text(frames: slice) -> str:
    return str(frames.start) if frames.stop - frames.start == 1 else f"{frames.start}..{frames.stop - 1}"


__all__ = [
    "COND_TYPES",
    "ConditionTypes",
    "ConditionV2",
    "ReferenceUse",
    "UNIMPLEMENTED_COND_TYPES",
    "build_condition",
    "check_cond_type",
    "conditioned_frames",
    "reference_clips",
    "replace_reference_frames",
    "uses_temporal_ramp",
]
