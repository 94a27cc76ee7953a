"""Mask builder node: reference images/videos plus where they go in the generated video."""

from __future__ import annotations

from ..opensora_core.conditioning import LATENT, PIXEL, MaskGroup, check_groups, parse_mask_strategy
from ..opensora_core.conditioning.v2 import COND_TYPES, check_cond_type
from ..opensora_core.geometry import V1_2_MICRO_FRAMES
from . import widgets as w
from .comfy_bridge import io
from .types import References, ReferencesSocket, image_frames

INPUT = "mask_strategy"  # the input every strategy error is reported on

STRATEGY_HELP = (
    "Used when preset is 'custom': groups 'loop_id,ref_id,ref_start,target_start,length[,edit_ratio]' "
    "separated by ';'. ref_id 0 is image_1. Negative starts count from the end. edit_ratio 0 keeps the "
    "frames, 0.4 edits them, 1 regenerates. Examples: '0' (image to video), '0;0,1,0,-1,1' (first and "
    "last frame), '0,0,0,0,5,0.4' (edit 5 latent frames)."
)


def parse_strategy(text: str, units: str, references: int) -> list[MaskGroup]:
    """The strategy parsed once (core parser) and checked with the core rules that need no frame counts;
    a ValueError names the mask_strategy input and the group."""
    groups = parse_mask_strategy(text, PIXEL if units == "pixel frames" else LATENT, name=INPUT)
    check_groups(groups, references=references, name=INPUT)
    return groups


def parse_custom_strategy(text: str, units: str, references: int) -> list[MaskGroup]:
    """The 'custom' preset's strategy: as :func:`parse_strategy`, and an empty one is refused (the
    references would not be used). Not at queue time: an empty text is fine with the other presets."""
    if not text.strip():
        raise ValueError(
            f"{INPUT}: empty, so image_1 would not be used; write a strategy such as '0' (image_1 as the "
            "first frame) or pick a preset"
        )
    return parse_strategy(text, units, references)


class OpenSoraMaskBuilder(io.ComfyNode):
    """Reference frames for the Sampler: image_1..image_4 (an image is one frame, an image batch a video)
    and where they land, as a preset or as Open-Sora mask-strategy tuples in pixel or latent frames.
    Everything is checked again against the real frame counts when the Sampler runs, before sampling."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        optional = [io.Image.Input(f"image_{i}", optional=True, tooltip=f"Reference {i - 1} (ref_id {i - 1}).")
                    for i in range(2, w.MAX_REFERENCES + 1)]
        return io.Schema(
            node_id="OpenSoraMaskBuilder", display_name="Open-Sora Mask Builder (references)",
            category=f"{w.CATEGORY}/conditioning", description=cls.__doc__,
            inputs=[
                io.Image.Input("image_1", tooltip="Reference 0: an image, or a video as an image batch."),
                w.choice("preset", list(w.TASK_LABELS), "first frame (image to video)",
                         "What the references do; 'custom' uses mask_strategy. Open-Sora-Plan v1.3 image to "
                         "video: first frame = i2v, first and last frame = transition, extend = continuation "
                         "(editing has no Open-Sora-Plan equivalent)."),
                w.text("mask_strategy", "0", STRATEGY_HELP),
                w.choice("units", w.UNITS, "latent frames",
                         "Units of ref_start/target_start/length in mask_strategy. The v1.2 VAE packs "
                         "17 pixel frames into 5 latent frames; pixel frames are converted."),
                w.integer("frames", V1_2_MICRO_FRAMES, 1, 4096, "Preset 'extend from last frames': pixel frames of "
                          "image_1's end that start the new video."),
                w.number("edit_ratio", 0.4, 0.0, 1.0, "Preset 'edit whole video': 0 keeps the video, 1 ignores it."),
                *optional,
            ],
            outputs=[ReferencesSocket.Output(display_name="references")],
        )

    @classmethod
    def validate_inputs(cls, mask_strategy) -> bool | str:
        """Queue-time check of the strategy text. ComfyUI reports a failure on every input named here, so
        only mask_strategy is (preset and units are combos ComfyUI checks itself); the frame units are not
        known here, so the text is read as latent frames (the units only change the wording)."""
        try:
            parse_strategy(mask_strategy, "latent frames", w.MAX_REFERENCES)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, image_1, preset, mask_strategy, units, frames, edit_ratio, **more) -> io.NodeOutput:
        images = [image_1] + [more.get(f"image_{i}") for i in range(2, w.MAX_REFERENCES + 1)]
        while images[-1] is None:
            images.pop()
        if any(image is None for image in images):
            gap = 1 + images.index(None)
            raise ValueError(f"image_{gap} is empty but a later image is connected; connect references in order")
        task = w.TASK_LABELS[preset]
        groups = parse_custom_strategy(mask_strategy, units, len(images)) if task is None else []
        frames_list = [image_frames(f"image_{i}", image) for i, image in enumerate(images, start=1)]  # (T, H, W, 3)
        return io.NodeOutput(References(frames_list, groups, task, frames, edit_ratio))


class OpenSoraConditionImages(io.ComfyNode):
    """Open-Sora 2.0 references: image_1 (and image_2) with an official condition type instead of a mask
    strategy: i2v_head (image_1 is the first frame), i2v_tail (the last image is the last frame), i2v_loop
    (first frame from image_1, last frame from the last image; one image: both), v2v_head / v2v_tail (the
    first / last 33 frames of a video in image_1). Connect it to the Sampler's references."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraConditionImages", display_name="Open-Sora 2.0 Condition (references)",
            category=f"{w.CATEGORY}/conditioning", description=cls.__doc__,
            inputs=[
                io.Image.Input("image_1", tooltip="Reference 0: an image, or a video as an image batch (v2v)."),
                w.choice("condition_type", [t for t in COND_TYPES if t != "t2v"], "i2v_head",
                         "How the references condition the video (the official cond_type)."),
                io.Image.Input("image_2", optional=True, tooltip="Reference 1: the last frame for i2v_tail / i2v_loop."),
            ],
            outputs=[ReferencesSocket.Output(display_name="references")],
        )

    @classmethod
    def execute(cls, image_1, condition_type, image_2=None) -> io.NodeOutput:
        check_cond_type(condition_type)
        images = [("image_1", image_1)] + ([("image_2", image_2)] if image_2 is not None else [])
        frames = [image_frames(name, image) for name, image in images]  # (T, H, W, 3)
        return io.NodeOutput(References(frames, condition_type=condition_type))
