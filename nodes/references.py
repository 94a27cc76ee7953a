"""Mask builder node: reference images/videos plus where they go in the generated video."""

from __future__ import annotations

from ..opensora_core.conditioning import parse_mask_strategy
from . import widgets as w
from .types import REFERENCES, References, image_frames

STRATEGY_HELP = (
    "Used when preset is 'custom': groups 'loop_id,ref_id,ref_start,target_start,length[,edit_ratio]' "
    "separated by ';'. ref_id 0 is image_1. Negative starts count from the end. edit_ratio 0 keeps the "
    "frames, 0.4 edits them, 1 regenerates. Examples: '0' (image to video), '0;0,1,0,-1,1' (first and "
    "last frame), '0,0,0,0,5,0.4' (edit 5 latent frames)."
)


def check_strategy_text(strategy: str, references: int) -> None:
    """Syntax and value checks that need no frame counts; raises ValueError naming the input and group."""
    if not strategy.strip():
        raise ValueError(
            "mask_strategy: empty, so image_1 would not be used; write a strategy such as '0' (image_1 as the "
            "first frame) or pick a preset"
        )
    try:
        groups = parse_mask_strategy(strategy)
    except ValueError as err:
        raise ValueError(f"mask_strategy: {err}") from None
    for index, group in enumerate(groups, start=1):
        where = f"mask_strategy group {index} ({group.format()!r})"
        if group.loop_id < 0:
            raise ValueError(f"{where}: loop_id must be >= 0")
        if not 0 <= group.ref_id < references:
            raise ValueError(f"{where}: ref_id {group.ref_id} but {references} reference input(s); ref_id 0 is image_1")
        if group.length < 1:
            raise ValueError(f"{where}: length must be >= 1")
        if not 0.0 <= group.edit_ratio <= 1.0:
            raise ValueError(f"{where}: edit_ratio must be 0 (keep) .. 1 (regenerate)")


class OpenSoraMaskBuilder:
    """Reference frames for the Sampler: image_1..image_4 (an image is one frame, an image batch a video)
    and where they land, as a preset or as Open-Sora mask-strategy tuples in pixel or latent frames.
    Everything is checked again against the real frame counts when the Sampler runs, before sampling."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/conditioning"
    RETURN_TYPES = (REFERENCES,)
    RETURN_NAMES = ("references",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"image_{i}": ("IMAGE", {"tooltip": f"Reference {i - 1} (ref_id {i - 1})."})
                    for i in range(2, w.MAX_REFERENCES + 1)}
        return {
            "required": {
                "image_1": ("IMAGE", {"tooltip": "Reference 0: an image, or a video as an image batch."}),
                "preset": w.choice(list(w.TASK_LABELS), "first frame (image to video)",
                                   "What the references do; 'custom' uses mask_strategy."),
                "mask_strategy": w.text("0", STRATEGY_HELP),
                "units": w.choice(w.UNITS, "latent frames",
                                  "Units of ref_start/target_start/length in mask_strategy. The v1.2 VAE packs "
                                  "17 pixel frames into 5 latent frames; pixel frames are converted."),
                "frames": w.integer(17, 1, 4096, "Preset 'extend from last frames': pixel frames of image_1's "
                                    "end that start the new video."),
                "edit_ratio": w.number(0.4, 0.0, 1.0, "Preset 'edit whole video': 0 keeps the video, 1 ignores it."),
            },
            "optional": optional,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset, mask_strategy, units):
        if preset not in w.TASK_LABELS:
            return f"preset: {preset!r} is not one of {', '.join(w.TASK_LABELS)}"
        if units not in w.UNITS:
            return f"units: {units!r} is not one of {', '.join(w.UNITS)}"
        if w.TASK_LABELS[preset] is None:
            try:
                check_strategy_text(mask_strategy, w.MAX_REFERENCES)
            except ValueError as err:
                return str(err)
        return True

    def build(self, image_1, preset, mask_strategy, units, frames, edit_ratio, **more):
        images = [image_1] + [more.get(f"image_{i}") for i in range(2, w.MAX_REFERENCES + 1)]
        while images[-1] is None:
            images.pop()
        if any(image is None for image in images):
            gap = 1 + images.index(None)
            raise ValueError(f"image_{gap} is empty but a later image is connected; connect references in order")
        task = w.TASK_LABELS[preset]
        if task is None:
            check_strategy_text(mask_strategy, len(images))
        frames_list = [image_frames(f"image_{i}", image) for i, image in enumerate(images, start=1)]  # (T, H, W, 3)
        return (References(frames_list, mask_strategy, units == "pixel frames", task, frames, edit_ratio),)
