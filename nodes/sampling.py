"""Sampler node (text/image/video to video, extension loops) and the resolution/duration preset node."""

from __future__ import annotations

from ..opensora_core import geometry
from ..opensora_core.loading import model_family
from ..opensora_core.pipeline import Components, GenerationSpec, sample_video
from . import comfy_bridge as bridge
from . import preview
from . import widgets as w
from .comfy_bridge import io
from .types import (
    CaptionSocket,
    GuidanceOptions,
    GuidanceSocket,
    ModelHandle,
    ModelSocket,
    PromptCaptions,
    References,
    ReferencesSocket,
    VAEHandle,
    VAESocket,
    latent_from_clips,
)

IMAGE_DURATION = "image (1 frame)"


class OpenSoraResolution(io.ComfyNode):
    """Official Open-Sora sizes and lengths: a resolution and aspect ratio give width and height
    (e.g. 360p 9:16 = 640x360), a duration gives the frame count (2s = 51 frames)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraResolution", display_name="Open-Sora Resolution & Duration",
            category=f"{w.CATEGORY}/sampling", description=cls.__doc__,
            inputs=[
                w.choice("resolution", geometry.resolutions(), "360p", "Official resolution names (pixel count)."),
                w.choice("aspect_ratio", list(geometry.named_aspect_ratios()), "9:16",
                         "Open-Sora writes ratios as HEIGHT:WIDTH: 9:16 is landscape (360p: 640x360), 16:9 portrait."),
                w.choice("duration", [IMAGE_DURATION, *geometry.named_durations()], "2s",
                         "Frames at 24 fps: 2s = 51, 4s = 102, 8s = 204, 16s = 408."),
            ],
            outputs=[io.Int.Output(display_name="width"), io.Int.Output(display_name="height"),
                     io.Int.Output(display_name="num_frames")],
        )

    @classmethod
    def execute(cls, resolution, aspect_ratio, duration) -> io.NodeOutput:
        height, width = geometry.image_size(resolution, aspect_ratio)
        frames = 1 if duration == IMAGE_DURATION else geometry.num_frames_from_duration(duration)
        return io.NodeOutput(width, height, frames)


# Nodes a Sampler's model link may pass through on its way from the loader (node id -> the input passed on)
MODEL_PASS_THROUGH = {"OpenSoraLoraLoader": "model"}


def check_pixel_size(width, height) -> bool | str:
    """Queue time: sizes no Open-Sora VAE gives exactly (every one has 8 pixels per latent, official preset
    sizes such as 426 excepted); linked sizes (None here) are checked when the node runs."""
    if width is None or height is None:
        return True
    try:
        geometry.LatentGeometry().check_output_hw(height, width)
    except ValueError as err:
        return str(err)
    return True


def check_frames_at_queue(node_id: str | None, num_frames, loader: str = "OpenSoraModelLoader",
                          through: dict[str, str] = MODEL_PASS_THROUGH) -> bool | str:
    """Queue time: frame counts the model's sampler cannot take (v1.2: 2..16), when the queued prompt shows
    which file the model comes from (a ``loader`` node upstream, reached through the node types in
    ``through``); otherwise the check runs with the node."""
    if num_frames is None:
        return True
    source = bridge.queued_source(node_id, "model", through)
    if source is None or source.get("class_type") != loader:
        return True
    name = source.get("inputs", {}).get("model_name")
    try:
        family = model_family(bridge.model_path("diffusion_models", name))
    except (OSError, ValueError):  # missing or damaged file: the loader reports it
        return True
    try:
        if family.sampler.check_frames is not None:
            family.sampler.check_frames(num_frames)
    except ValueError as err:
        return f"{err} ({family.title}, {name})"
    return True


class OpenSoraSampler(io.ComfyNode):
    """Generates an Open-Sora video latent: text to video, or with references (Mask Builder) image to video,
    stitching, extension and video to video. loops > 1 extends the video: each round continues from the
    last condition_frame_length latent frames of the previous one (per-round prompts: '|0|...|2|...').
    The sampler (rectified flow for v1.2, IDDPM for v1.0/v1.1, Euler-ancestral v-prediction for
    Open-Sora-Plan v1.3, the shifted flow with text and image guidance for Open-Sora 2.0) comes from the model."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraSampler", display_name="Open-Sora Sampler", category=f"{w.CATEGORY}/sampling",
            description=cls.__doc__,
            inputs=[
                ModelSocket.Input("model"),
                VAESocket.Input("vae", tooltip="Encodes references and joins loop rounds; must match the model."),
                CaptionSocket.Input("positive", tooltip="Open-Sora Text Encode output."),
                w.integer("width", 640, 16, 4096, "Output width in pixels, in steps of 8 (every VAE has 8 pixels per "
                          "latent); an official preset size may come from the Resolution node (240p 9:16 = 426, "
                          "decoded to 424).", step=8),
                w.integer("height", 360, 16, 4096, "Output height in pixels, in steps of 8; official preset sizes "
                          "come from the Resolution node.", step=8),
                w.integer("num_frames", 51, 1, 4096, "Frames per clip (v1.2: 1, or 17 and more; 51 = 2 s)."),
                w.number("fps", 24.0, 1.0, 120.0, "Frame rate the model is conditioned on.", step=1.0),
                w.integer("steps", 30, 1, 1000, "Sampling steps (official: 30 for v1.2, 100 for v1.1)."),
                w.number("cfg", 7.0, 0.0, 30.0, "Classifier-free guidance scale (official 7.0).", step=0.1),
                w.seed(),
                w.integer("loops", 1, 1, 256, "Extension rounds; each adds num_frames minus the frames it continues from."),
                w.integer("condition_frame_length", 0, 0, 256, "Latent frames each round continues from "
                          "(0 = model default: 5 for v1.2, 4 for v1.1)."),
                w.number("condition_frame_edit", 0.0, 0.0, 1.0, "Edit ratio of those frames (0 = keep them)."),
                w.integer("align", 0, 0, 64, "v1.2: snap strategy starts to multiples of this (official "
                          "sample config: 5); 0 = off."),
                CaptionSocket.Input("negative", optional=True, tooltip="Negative prompt; without it the model's "
                                    "learned null caption (Open-Sora) or the release negative prompt the Text "
                                    "Encode adds (Open-Sora-Plan) is used, as in the official code."),
                ReferencesSocket.Input("references", optional=True,
                                       tooltip="Open-Sora Mask Builder output (needs the VAE); Open-Sora 2.0: "
                                       "Open-Sora 2.0 Condition."),
                GuidanceSocket.Input("guidance", optional=True, tooltip="Open-Sora 2.0 Guidance: image guidance and "
                                     "oscillation (without it: the official 3.0 and on)."),
                w.number("shift_scale", 1.0, 0.05, 20.0, "v1.2 (rectified flow): a factor on the official timestep "
                         "shift (1.0 = official). Above 1 more of the steps go to high noise, where placement and "
                         "shape are decided.", step=0.05, optional=True),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Video latent (B, C, T, H, W) with the clip "
                                      "bookkeeping the Open-Sora VAE Decode needs.")],
            hidden=[io.Hidden.unique_id],  # validate_inputs finds its model link in the queued prompt
        )

    @classmethod
    def validate_inputs(cls, num_frames) -> bool | str:
        """Queue time: the frame count, for the model file the queued prompt loads. ComfyUI reports a failure
        on every input named here, so only num_frames is; sizes are entered in steps of 8 (the widgets) and
        any other size (a linked value, an edited API prompt) is refused when the node runs, with the nearest
        valid sizes."""
        return check_frames_at_queue(cls.hidden.unique_id, num_frames)

    @classmethod
    def execute(cls, model: ModelHandle, vae: VAEHandle, positive: PromptCaptions, width, height, num_frames, fps,
                steps, cfg, seed, loops, condition_frame_length, condition_frame_edit, align,
                negative: PromptCaptions | None = None, references: References | None = None,
                guidance: GuidanceOptions | None = None, shift_scale: float = 1.0) -> io.NodeOutput:
        strategy = references.strategy if references is not None else ""  # parsed groups or a named task
        spec = GenerationSpec(
            prompts=[positive.prompt], height=height, width=width, num_frames=num_frames, fps=fps, steps=steps,
            cfg_scale=cfg, seed=seed, mask_strategy=strategy, loops=loops,
            condition_frame_length=condition_frame_length or None, condition_frame_edit=condition_frame_edit,
            align=align or None, condition_type=references.condition_type if references is not None else None,
            image_cfg_scale=guidance.image_cfg_scale if guidance is not None else None,
            oscillation=guidance.oscillation if guidance is not None else None,
            shift_scale=None if shift_scale == 1.0 else shift_scale,  # 1.0: the official schedule, any family
        )
        placement = bridge.ComfyPlacement([model.managed, vae.managed])
        components = Components(model.module, vae.module, placement=placement)
        report = bridge.step_reporter(steps * loops, preview.rgb_map(vae))
        with bridge.attention_backend(model.attention):
            result = sample_video(
                components, spec, positive.per_round(loops), references.frames if references is not None else [],
                negatives=(negative.negative_per_round(loops) if negative is not None
                           else positive.default_negatives(loops)),
                callback=report,
            )
        return io.NodeOutput(latent_from_clips(result.clips, result.plan))


class OpenSoraGuidance(io.ComfyNode):
    """Open-Sora 2.0 guidance besides the Sampler's cfg (its text guidance, official 7.5): the image guidance
    scale (official 3.0; for i2v it ramps from 1 on the first latent frame to this value on the last, and
    decays over the steps) and the oscillation (both scales 1 on odd steps from step 10, official on)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraGuidance", display_name="Open-Sora 2.0 Guidance", category=f"{w.CATEGORY}/sampling",
            description=cls.__doc__,
            inputs=[
                w.number("image_cfg", 3.0, 0.0, 30.0, "Image guidance scale (official 3.0; 1 = off).", step=0.1),
                w.boolean("oscillation", True, "Guidance 1 on odd steps from step 10 (official on)."),
            ],
            outputs=[GuidanceSocket.Output(display_name="guidance")],
        )

    @classmethod
    def execute(cls, image_cfg, oscillation) -> io.NodeOutput:
        return io.NodeOutput(GuidanceOptions(image_cfg, oscillation))
