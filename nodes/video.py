"""VAE encode/decode nodes (IMAGE <-> LATENT) and the MP4 save node."""

from __future__ import annotations

import json
import logging

from ..opensora_core import media
from ..opensora_core.pipeline import decode_clips, decode_memory_bytes
from ..opensora_core.vae import TilingOptions
from . import comfy_bridge as bridge
from . import widgets as w
from .comfy_bridge import io
from .types import VAEHandle, VAESocket, clips_from_latent, image_frames, latent_from_video

log = logging.getLogger("opensora")

DEFAULT_FPS = 24.0


class OpenSoraVAEDecode(io.ComfyNode):
    """Decodes an Open-Sora LATENT to frames (an IMAGE batch, 0..1) for any ComfyUI video node, joining
    extension-loop clips. Decoding is exact and retries tiled (with a log warning) on out-of-memory;
    tiling 'on' bounds memory from the start."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraVAEDecode", display_name="Open-Sora VAE Decode", category=f"{w.CATEGORY}/latent",
            description=cls.__doc__,
            inputs=[
                VAESocket.Input("vae"),
                io.Latent.Input("samples"),
                w.choice("tiling", w.TILING, w.TILING[0], "Tiled decoding uses less memory and differs slightly."),
                w.integer("tile_size", 512, 64, 4096, "Largest tile side in pixels (tiling on).", step=64),
                w.integer("tile_overlap", 128, 0, 1024, "Overlap between tiles in pixels (tiling on).", step=32),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="All frames, (frames, height, width, 3)."),
                     io.Float.Output(display_name="fps", tooltip="Frame rate to save the video at.")],
        )

    @classmethod
    def execute(cls, vae: VAEHandle, samples, tiling, tile_size, tile_overlap) -> io.NodeOutput:
        clips, fps = clips_from_latent(samples, vae.geometry, DEFAULT_FPS)
        factor = vae.geometry.spatial_factor
        channels = vae.module.latent_channels
        if clips[0].latent.shape[1] != channels:
            raise ValueError(f"samples: the latent has {clips[0].latent.shape[1]} channels but this VAE decodes "
                             f"{channels}; connect the LATENT of the Open-Sora Sampler or VAE Encode")
        if tiling == "on" and not tile_overlap < tile_size:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})")
        options = TilingOptions(tile_size // factor, tile_overlap // factor) if tiling == "on" else None
        working_memory = decode_memory_bytes(vae.module, clips, tiling=options)  # the VAE's own estimate
        with bridge.ComfyPlacement([vae.managed]).use(vae.module, working_memory):
            frames = decode_clips(vae.module, clips, tiling=options)  # (B, T, H, W, 3)
        images = frames.reshape(-1, *frames.shape[2:]).to(bridge.intermediate_device())
        return io.NodeOutput(images, fps)


class OpenSoraVAEEncode(io.ComfyNode):
    """Encodes an IMAGE batch (a video: frames in order) to an Open-Sora LATENT (posterior mean).
    Any size of at least 8 pixels, as the official VAEs: the latent is size / 8 rounded down (240x426 ->
    30x53, which decodes to 240x424). References for the Sampler go through the Mask Builder instead,
    which encodes them with the sampler's seed as the official code does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraVAEEncode", display_name="Open-Sora VAE Encode", category=f"{w.CATEGORY}/latent",
            description=cls.__doc__,
            inputs=[VAESocket.Input("vae"), io.Image.Input("images")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, vae: VAEHandle, images) -> io.NodeOutput:
        frames = image_frames("images", images)  # (T, H, W, 3)
        x = media.to_model_range(frames)[None]  # (1, 3, T, H, W)
        with bridge.ComfyPlacement([vae.managed]).use(vae.module):
            latent = vae.module.encode(x, sample=False)  # (1, C, t, h, w)
        return io.NodeOutput(latent_from_video(latent, frames.shape[0], DEFAULT_FPS))


class OpenSoraSaveVideo(io.ComfyNode):
    """Saves frames as an H.264 MP4 in ComfyUI's output folder (prefix_00001_.mp4, counting up) and
    shows it in the UI. The workflow is stored in the file, as ComfyUI's Save Video does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraSaveVideo", display_name="Open-Sora Save Video (MP4)", category=f"{w.CATEGORY}/video",
            description=cls.__doc__, is_output_node=True,  # ComfyUI then hands it the prompt and workflow (hidden)
            inputs=[
                io.Image.Input("images"),
                w.number("fps", DEFAULT_FPS, 0.01, 240.0, "Frames per second (connect the decoder's fps).", step=0.01),
                w.text("filename_prefix", "OpenSora/video", "Prefix in the output folder; may contain subfolders."),
                w.integer("crf", 18, 0, 51, "H.264 quality: lower is better and larger (18 is visually lossless)."),
            ],
        )

    @classmethod
    def execute(cls, images, fps, filename_prefix, crf) -> io.NodeOutput:
        frames = image_frames("images", images)  # (T, H, W, 3)
        target = bridge.next_output_file(filename_prefix, frames.shape[2], frames.shape[1], "mp4")
        metadata = {}
        if bridge.metadata_enabled():
            stored = {**(cls.hidden.extra_pnginfo or {}), "prompt": cls.hidden.prompt}
            metadata = {k: json.dumps(v) for k, v in stored.items() if v is not None}
        media.write_video(frames, target.path, fps, crf=crf, metadata=metadata)
        log.info("saved %d frames at %g fps to %s", frames.shape[0], fps, target.path)
        result = {"filename": target.filename, "subfolder": target.subfolder, "type": "output"}
        return io.NodeOutput(ui={"images": [result], "animated": (True,)})
