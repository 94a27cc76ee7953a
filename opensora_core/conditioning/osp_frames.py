"""The conditioning the Open-Sora-Plan v1.3 image-to-video family declares: given frames -> inpainting channels.

``OpenSoraInpaint_v1_3`` is conditioned on whole pixel frames: some frames of the video are given, the
rest are generated. :class:`InpaintConditioning` turns the pipeline's inputs (references and a strategy)
into :class:`GivenFrames` placements once, encodes the masked video with the WF-VAE
(:mod:`.osp_inpaint`: hidden frames -1, the posterior sampled, the pixel mask compressed to 4 channels) and
hands the 12 condition channels to the sampler, which appends them to every model input.

What gives which official mask type (``MaskType`` of opensora/utils/mask_utils.py @v1.3.1):

* no reference: ``t2iv`` (nothing given);
* one image, no strategy, or the ``first_frame`` task: ``i2v`` (frame 0);
* two images, no strategy, or the ``first_last`` task: ``transition`` (first and last frame);
* the ``extend`` task (continue from last frames): the reference's last N frames become frames 0..N-1
  (``continuation``, with the frames a user picks instead of the official random half);
* a custom strategy (mask-strategy groups, best in pixel frames): any frames, e.g. every frame
  (``clear``) or images at chosen indices (``random_temporal`` with the indices given).

References are cut and resized as the release script does (``--crop_for_hw``: centre crop to the output
aspect ratio, then the uint8 bilinear antialiased resize of :func:`~.osp_inpaint.center_crop_resize`).
There is no loop (extension) mode and no partial edit (edit ratio): both raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import media
from ..geometry import LatentGeometry
from .osp_inpaint import MaskType, build_inpaint_condition, center_crop_resize, pack_pixels
from .plan import Task
from .strategy import LATENT, NAME, MaskGroup, where

SYSTEM = "Open-Sora-Plan v1.3"


@dataclass(frozen=True)
class GivenFrames:
    """Reference ``ref_id``'s pixel frames [ref_start, ref_start + length) are the generated video's frames
    [target_start, target_start + length) (indices resolved and checked)."""

    ref_id: int
    ref_start: int
    target_start: int
    length: int


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------


def default_frames(reference_frames: Sequence[int], num_frames: int) -> list[GivenFrames]:
    """The official defaults without a strategy (``get_mask_type_cond_indices``): none -> t2iv, one image ->
    i2v, two images -> transition. Others need a strategy (the official video path picks frames at random)."""
    counts = list(reference_frames)
    if not counts:
        return []
    if counts == [1]:
        return [GivenFrames(0, 0, 0, 1)]
    if counts == [1, 1]:
        return [GivenFrames(0, 0, 0, 1), GivenFrames(1, 0, num_frames - 1, 1)]
    raise ValueError(
        f"{SYSTEM}: {len(counts)} reference(s) of {counts} frame(s) and no mask strategy: only one image (image to "
        "video) or two images (first and last frame) have a default; pick a preset (first frame, first and last "
        "frame, extend from last frames) or give a strategy in pixel frames, e.g. '0,0,0,0,1;0,1,0,40,1'"
    )


def task_frames(task: Task, reference_frames: Sequence[int], num_frames: int) -> list[GivenFrames]:
    """first_frame -> i2v; first_last -> transition (the last reference's last frame ends the video);
    extend -> continuation from reference 0's last ``task.frames`` frames; edit has no v1.3 equivalent."""
    if not reference_frames:
        raise ValueError(f"the {task.name} task needs at least one reference image or video")
    if task.name == "first_frame":
        return [GivenFrames(0, 0, 0, 1)]
    if task.name == "first_last":
        last = len(reference_frames) - 1
        return [GivenFrames(0, 0, 0, 1), GivenFrames(last, reference_frames[last] - 1, num_frames - 1, 1)]
    if task.name == "extend":
        frames = min(task.frames, reference_frames[0])
        if frames < 1 or frames >= num_frames:
            raise ValueError(f"extend: {frames} given frame(s) of a {num_frames}-frame video; give between 1 and "
                             f"{num_frames - 1} frames so that some are generated")
        return [GivenFrames(0, reference_frames[0] - frames, 0, frames)]
    raise ValueError(
        f"{SYSTEM} cannot edit a video with an edit ratio (its condition keeps the given frames exactly); use first "
        "frame, first and last frame, extend from last frames, or a strategy that gives frames in pixel units"
    )


def _span(what: str, start: int, length: int, frames: int, name: str) -> int:
    """``start`` resolved (negative: from the end) after checking [start, start + length) lies in ``frames``."""
    first = start + frames if start < 0 else start
    if not 0 <= first < frames or first + length > frames:
        raise ValueError(f"{what}: frames {start}..{start + length - 1} lie outside the {name} ({frames} frames); "
                         f"use 0..{frames - 1} (or -{frames}..-1 from the end) and a length that fits")
    return first


def group_frames(index: int, group: MaskGroup, geometry: LatentGeometry, num_frames: int,
                 reference_frames: Sequence[int]) -> GivenFrames:
    """One mask-strategy group as given pixel frames; latent groups cover every pixel frame of their latent
    frames (latent frame 0 is pixel frame 0 alone; later ones hold 4 each)."""
    what = where(index, group, name=NAME)
    if group.loop_id != 0:
        raise ValueError(f"{what}: loop_id {group.loop_id}, but {SYSTEM} has no loop mode (use loop_id 0)")
    if group.edit_ratio != 0:
        raise ValueError(f"{what}: edit_ratio {group.edit_ratio:g}, but {SYSTEM} keeps given frames exactly "
                         "(edit_ratio 0) or generates them")
    if not 0 <= group.ref_id < len(reference_frames):
        raise ValueError(f"{what}: ref_id {group.ref_id}, but {len(reference_frames)} reference(s) are given")
    ref_frames = reference_frames[group.ref_id]
    if group.units != LATENT:
        target = _span(what, group.target_start, group.length, num_frames, "generated video")
        ref = _span(what, group.ref_start, group.length, ref_frames, f"reference {group.ref_id}")
        return GivenFrames(group.ref_id, ref, target, group.length)
    latents = geometry.latent_frames(num_frames)
    target = _span(what, group.target_start, group.length, latents, "latent video")
    pixels = range(geometry.latent_to_pixel_frames(target, num_frames).start,
                   geometry.latent_to_pixel_frames(target + group.length - 1, num_frames).stop)
    ref_latent = _span(what, group.ref_start, 1, geometry.latent_frames(ref_frames), f"reference {group.ref_id}")
    ref = geometry.latent_to_pixel_frames(ref_latent, ref_frames).start
    if ref + len(pixels) > ref_frames:
        raise ValueError(
            f"{what}: latent frames {target}..{target + group.length - 1} are pixel frames {pixels.start}..{pixels.stop - 1}"
            f" ({len(pixels)} frames), but reference {group.ref_id} has {ref_frames - ref} from pixel frame {ref}; "
            "write the strategy in pixel frames (units 'pixel frames' / --pixel-positions), e.g. '0;0,1,0,-1,1' "
            "for the first and the last frame"
        )
    return GivenFrames(group.ref_id, ref, pixels.start, len(pixels))


def mask_type(placements: Sequence[GivenFrames], num_frames: int) -> MaskType:
    """The official mask type the given frames amount to."""
    given = sorted({g.target_start + i for g in placements for i in range(g.length)})
    if not given:
        return MaskType.t2iv
    if len(given) == num_frames:
        return MaskType.clear
    if given == [0]:
        return MaskType.i2v
    if given == [0, num_frames - 1]:
        return MaskType.transition
    if given == list(range(len(given))):
        return MaskType.continuation
    return MaskType.random_temporal


# ---------------------------------------------------------------------------
# The family's conditioning
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintConditioning:
    """Given frames for ``OpenSoraInpaint_v1_3`` (the pipeline calls place, encode, insert, describe)."""

    def place(self, strategy: Sequence[MaskGroup] | Task, *, geometry: LatentGeometry, num_frames: int,
              reference_frames: Sequence[int], loops: int, condition_frames: int | None, condition_edit: float,
              align: int | None) -> list[GivenFrames]:
        if loops != 1:
            raise ValueError(f"{SYSTEM} has no loop (extension) mode: loops must be 1, got {loops}; continue a "
                             "video with the 'extend from last frames' preset instead")
        if align is not None:
            raise ValueError(f"align={align} is an Open-Sora v1.2 option; {SYSTEM} places whole frames (leave it out)")
        if isinstance(strategy, Task):
            return task_frames(strategy, reference_frames, num_frames)
        if not strategy:
            return default_frames(reference_frames, num_frames)
        return [group_frames(i, g, geometry, num_frames, reference_frames) for i, g in enumerate(strategy)]

    def encode(self, vae, references: Sequence[torch.Tensor], placements: Sequence[Sequence[GivenFrames]], *,
               height: int, width: int, num_frames: int, noise) -> list[list[torch.Tensor]]:
        """Per sample, one tensor: the condition channels (1, C + 4, t, h, w) of its masked video."""
        fitted = [center_crop_resize(media.to_uint8(r).permute(0, 3, 1, 2), height, width)  # (N, 3, H, W) uint8
                  for r in references]
        out = []
        for sample in placements:
            canvas = torch.zeros(num_frames, 3, height, width)  # 0..255 values; hidden frames end up -1
            mask = torch.ones(num_frames, 1, height, width)  # 1 = generate
            for g in sample:
                canvas[g.target_start : g.target_start + g.length] = fitted[g.ref_id][g.ref_start : g.ref_start + g.length]
                mask[g.target_start : g.target_start + g.length] = 0
            condition = build_inpaint_condition(pack_pixels(canvas, mask), lambda x: vae.encode(x, noise=noise))
            out.append([condition.channels().float()])
        return out

    def insert(self, z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]], placements: Sequence[Sequence[GivenFrames]],
               loop_i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The start latent unchanged, and the condition channels (B, C + 4, t, h, w) the sampler appends."""
        condition = torch.cat([sample[0] for sample in refs]).to(z.device)
        if condition.shape[0] != z.shape[0] or condition.shape[2:] != z.shape[2:]:
            raise ValueError(f"condition {tuple(condition.shape)} does not fit the latent {tuple(z.shape)}")
        return z, condition

    def describe(self, placements: Sequence[GivenFrames], *, loop_i: int, geometry: LatentGeometry,
                 num_frames: int) -> str:
        kind = mask_type(placements, num_frames)
        lines = [f"reference {g.ref_id} {_frames(g.ref_start, g.length)} -> {_frames(g.target_start, g.length)} "
                 f"of {num_frames}, given" for g in placements]
        given = {g.target_start + i for g in placements for i in range(g.length)}
        return "; ".join([f"mask type {kind.name}", *lines, f"{num_frames - len(given)} frame(s) generated"])


def _frames(start: int, length: int) -> str:
    return f"frame {start}" if length == 1 else f"frames {start}-{start + length - 1}"


__all__ = ["GivenFrames", "InpaintConditioning", "default_frames", "group_frames", "mask_type", "task_frames"]
