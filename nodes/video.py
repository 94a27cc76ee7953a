"""VAE encode/decode nodes (IMAGE <-> LATENT) and the MP4 save node."""

from __future__ import annotations

import json
import logging

from ..opensora_core import media
from ..opensora_core.pipeline import decode_clips
from ..opensora_core.vae import TilingOptions
from . import comfy_bridge as bridge
from . import widgets as w
from .types import VAE, VAEHandle, clips_from_latent, image_frames, latent_from_video

log = logging.getLogger("opensora")

DEFAULT_FPS = 24.0


class OpenSoraVAEDecode:
    """Decodes an Open-Sora LATENT to frames (an IMAGE batch, 0..1) for any ComfyUI video node, joining
    extension-loop clips. Decoding is exact and retries tiled (with a log warning) on out-of-memory;
    tiling 'on' bounds memory from the start."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("images", "fps")
    OUTPUT_TOOLTIPS = ("All frames, (frames, height, width, 3).", "Frame rate to save the video at.")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE,),
            "samples": ("LATENT",),
            "tiling": w.choice(w.TILING, w.TILING[0], "Tiled decoding uses less memory and differs slightly."),
            "tile_size": w.integer(512, 64, 4096, "Largest tile side in pixels (tiling on).", step=64),
            "tile_overlap": w.integer(128, 0, 1024, "Overlap between tiles in pixels (tiling on).", step=32),
        }}

    def decode(self, vae: VAEHandle, samples, tiling, tile_size, tile_overlap):
        clips, fps = clips_from_latent(samples, vae.geometry, DEFAULT_FPS)
        factor = vae.geometry.spatial_factor
        channels = vae.module.latent_channels
        if clips[0].latent.shape[1] != channels:
            raise ValueError(f"samples: the latent has {clips[0].latent.shape[1]} channels but this VAE decodes "
                             f"{channels}; connect the LATENT of the Open-Sora Sampler or VAE Encode")
        if tiling == "on" and not tile_overlap < tile_size:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})")
        options = TilingOptions(tile_size // factor, tile_overlap // factor) if tiling == "on" else None
        with bridge.ComfyPlacement([vae.managed]).use(vae.module):
            frames = decode_clips(vae.module, clips, tiling=options)  # (B, T, H, W, 3)
        images = frames.reshape(-1, *frames.shape[2:]).to(bridge.intermediate_device())
        return (images, fps)


class OpenSoraVAEEncode:
    """Encodes an IMAGE batch (a video: frames in order) to an Open-Sora LATENT (posterior mean).
    Any size of at least 8 pixels, as the official VAEs: the latent is size / 8 rounded down (240x426 ->
    30x53, which decodes to 240x424). References for the Sampler go through the Mask Builder instead,
    which encodes them with the sampler's seed as the official code does."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": (VAE,), "images": ("IMAGE",)}}

    def encode(self, vae: VAEHandle, images):
        frames = image_frames("images", images)  # (T, H, W, 3)
        x = media.to_model_range(frames)[None]  # (1, 3, T, H, W)
        with bridge.ComfyPlacement([vae.managed]).use(vae.module):
            latent = vae.module.encode(x, sample=False)  # (1, C, t, h, w)
        return (latent_from_video(latent, frames.shape[0], DEFAULT_FPS),)


class OpenSoraSaveVideo:
    """Saves frames as an H.264 MP4 in ComfyUI's output folder (prefix_00001_.mp4, counting up) and
    shows it in the UI. The workflow is stored in the file, as ComfyUI's Save Video does."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/video"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "fps": w.number(DEFAULT_FPS, 0.01, 240.0, "Frames per second (connect the decoder's fps).", step=0.01),
                "filename_prefix": w.text("OpenSora/video", "Prefix in the output folder; may contain subfolders."),
                "crf": w.integer(18, 0, 51, "H.264 quality: lower is better and larger (18 is visually lossless)."),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, images, fps, filename_prefix, crf, prompt=None, extra_pnginfo=None):
        frames = image_frames("images", images)  # (T, H, W, 3)
        target = bridge.next_output_file(filename_prefix, frames.shape[2], frames.shape[1], "mp4")
        metadata = {}
        if bridge.metadata_enabled():
            metadata = {k: json.dumps(v) for k, v in {**(extra_pnginfo or {}), "prompt": prompt}.items() if v is not None}
        media.write_video(frames, target.path, fps, crf=crf, metadata=metadata)
        log.info("saved %d frames at %g fps to %s", frames.shape[0], fps, target.path)
        result = {"filename": target.filename, "subfolder": target.subfolder, "type": "output"}
        return {"ui": {"images": [result], "animated": (True,)}}
