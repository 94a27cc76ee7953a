"""Test stand-ins for the ComfyUI core nodes our example workflows use.

Inputs, widget order and outputs follow ComfyUI v0.3.64 (nodes.py ``LoadImage`` / ``KSampler``,
comfy_extras/nodes_video.py ``LoadVideo`` / ``GetVideoComponents`` / ``CreateVideo`` / ``SaveVideo``,
nodes_images.py ``ImageFromBatch``, nodes_custom_sampler.py ``SamplerCustomAdvanced`` / ``RandomNoise`` /
``KSamplerSelect`` / ``CFGGuider``, nodes_primitive.py ``PrimitiveStringMultiline``); the bodies are ours,
reading and writing files with PyAV through ``opensora_core.media`` and sampling with the stand-in
``comfy.samplers`` (Euler only). The Flux image nodes (:data:`FLUX_NODES`) are definitions only: tests check
the links and widget values of a workflow that uses them and run the rest; the Flux half itself runs in a real
ComfyUI (``tests/tiny_flux_files.py``).
"""

from __future__ import annotations

import os
import sys

import torch

from opensora_core import media

FRONTEND_ONLY = ("Note", "MarkdownNote")  # nodes that never reach the server


def _folder_paths():
    """The stand-in installed now (each ``comfy_stub.installed`` block imports a fresh one)."""
    return sys.modules["folder_paths"]


def _files(kind: tuple[str, ...]) -> list[str]:
    folder = _folder_paths().get_input_directory()
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(kind))


def _frames(path: str) -> torch.Tensor:
    frames, _ = media.read_frames(path)
    return frames.float() / 255  # (T, H, W, 3) in 0..1, ComfyUI's IMAGE


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_files(media.IMAGE_SUFFIXES), {"image_upload": True})}}

    def load_image(self, image):
        frames = _frames(_folder_paths().get_annotated_filepath(image))
        return (frames, torch.zeros(frames.shape[:3]))


class VideoFile:
    """What LoadVideo passes on (ComfyUI: a VideoFromFile)."""

    def __init__(self, path: str):
        self.path = path


class LoadVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (_files(media.VIDEO_SUFFIXES), {"video_upload": True})}}

    def load(self, file):
        return (VideoFile(_folder_paths().get_annotated_filepath(file)),)


class GetVideoComponents:
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "get"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def get(self, video: VideoFile):
        frames, fps = media.read_frames(video.path)
        return (frames.float() / 255, None, float(fps))


class ImageFromBatch:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "frombatch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE",),
            "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095}),
            "length": ("INT", {"default": 1, "min": 1, "max": 4096}),
        }}

    def frombatch(self, image, batch_index, length):
        start = min(image.shape[0] - 1, batch_index)
        return (image[start:start + min(image.shape[0] - start, length)].clone(),)


# ---------------------------------------------------------------------------
# Sampling (the native MODEL)
# ---------------------------------------------------------------------------

SAMPLER_NAMES = ["euler"]  # the stand-in samples with Euler only (ComfyUI lists ~40)
SCHEDULER_NAMES = ["simple"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _sample(model, noise, positive, negative, cfg, sampler, sigmas, latent):
    from comfy import samplers

    guider = samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return _guided(guider, noise, sampler, sigmas, latent)


def _guided(guider, noise, sampler, sigmas, latent):
    import latent_preview

    callback = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1)
    samples = guider.sample(noise, latent["samples"], sampler, sigmas, latent.get("noise_mask"), callback)
    return {**latent, "samples": samples}


class KSampler:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLER_NAMES,),
            "scheduler": (SCHEDULER_NAMES,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
        }}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
        from comfy import samplers

        if denoise != 1.0:
            raise NotImplementedError("the stand-in KSampler samples with denoise 1 only")
        samples = latent_image["samples"]
        noise = torch.randn(samples.shape, generator=torch.manual_seed(seed), dtype=samples.dtype)
        sigmas = samplers.simple_scheduler(model.get_model_object("model_sampling"), steps)
        return (_sample(model, noise, positive, negative, cfg, samplers.ksampler(sampler_name), sigmas, latent_image),)


class Noise_RandomNoise:  # noqa: N801 (ComfyUI's name)
    def __init__(self, seed):
        self.seed = seed

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        return torch.randn(samples.shape, generator=torch.manual_seed(self.seed), dtype=samples.dtype)


class RandomNoise:
    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise_seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                                    "control_after_generate": True})}}

    def get_noise(self, noise_seed):
        return (Noise_RandomNoise(noise_seed),)


class KSamplerSelect:
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": (SAMPLER_NAMES,)}}

    def get_sampler(self, sampler_name):
        from comfy import samplers

        return (samplers.ksampler(sampler_name),)


class CFGGuider:
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})}}

    def get_guider(self, model, positive, negative, cfg):
        from comfy import samplers

        guider = samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


class SamplerCustomAdvanced:
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise": ("NOISE",), "guider": ("GUIDER",), "sampler": ("SAMPLER",),
                             "sigmas": ("SIGMAS",), "latent_image": ("LATENT",)}}

    def sample(self, noise, guider, sampler, sigmas, latent_image):
        out = _guided(guider, noise.generate_noise(latent_image), sampler, sigmas, latent_image)
        return (out, out)


class PrimitiveStringMultiline:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"multiline": True})}}

    def execute(self, value):
        return (value,)


# ---------------------------------------------------------------------------
# Flux image nodes: definitions only (nodes.py, comfy_extras/nodes_flux.py / nodes_sd3.py / nodes_model_advanced.py)
# ---------------------------------------------------------------------------


def _definition(inputs: dict, returns: tuple) -> type:
    """A node class with these inputs and outputs whose run raises; ``("FILES", folder)`` lists a model folder."""
    def input_types(cls):
        return {section: {name: ((_folder_paths().get_filename_list(spec[1]),) if spec[0] == "FILES" else spec)
                          for name, spec in entries.items()} for section, entries in inputs.items()}

    def run(self, **kwargs):
        raise NotImplementedError("a definition-only stand-in: the Flux nodes run in a real ComfyUI")

    return type("FluxStandIn", (), {"RETURN_TYPES": returns, "FUNCTION": "run", "run": run,
                                    "INPUT_TYPES": classmethod(input_types)})


_SIZE = {"default": 1024, "min": 16, "max": 16384}
FLUX_NODES: dict[str, type] = {
    "UNETLoader": _definition({"required": {
        "unet_name": ("FILES", "diffusion_models"),
        "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}}, ("MODEL",)),
    "DualCLIPLoader": _definition({"required": {
        "clip_name1": ("FILES", "text_encoders"),
        "clip_name2": ("FILES", "text_encoders"),
        "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"],)},
        "optional": {"device": (["default", "cpu"], {"advanced": True})}}, ("CLIP",)),
    "CLIPTextEncode": _definition({"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}},
                                  ("CONDITIONING",)),
    "FluxGuidance": _definition({"required": {"conditioning": ("CONDITIONING",),
                                              "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0})}},
                                ("CONDITIONING",)),
    "ConditioningZeroOut": _definition({"required": {"conditioning": ("CONDITIONING",)}}, ("CONDITIONING",)),
    "ModelSamplingFlux": _definition({"required": {
        "model": ("MODEL",), "max_shift": ("FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0}),
        "base_shift": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0}),
        "width": ("INT", _SIZE), "height": ("INT", _SIZE)}}, ("MODEL",)),
    "EmptySD3LatentImage": _definition({"required": {
        "width": ("INT", _SIZE), "height": ("INT", _SIZE),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}, ("LATENT",)),
    "VAELoader": _definition({"required": {"vae_name": ("FILES", "vae")}},
                             ("VAE",)),
    "VAEDecode": _definition({"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, ("IMAGE",)),
    "SaveImage": _definition({"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                              "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}, ()),
}


# ---------------------------------------------------------------------------
# Video out
# ---------------------------------------------------------------------------


class VideoFrames:
    """What CreateVideo passes on (ComfyUI: a VideoFromComponents)."""

    def __init__(self, images, fps):
        self.images, self.fps = images, fps


class CreateVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
                "optional": {"audio": ("AUDIO",)}}

    def create(self, images, fps, audio=None):
        return (VideoFrames(images, fps),)


class SaveVideo:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4"],), "codec": (["auto", "h264"],)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, video, filename_prefix, format, codec, prompt=None, extra_pnginfo=None):
        frames = video.images  # (T, H, W, 3)
        folder, name, counter, subfolder, _ = _folder_paths().get_save_image_path(
            filename_prefix, _folder_paths().get_output_directory(), frames.shape[2], frames.shape[1])
        filename = f"{name}_{counter:05}_.mp4"
        media.write_video(frames, os.path.join(folder, filename), video.fps)
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


CORE_NODES: dict[str, type] = {
    "LoadImage": LoadImage,
    "LoadVideo": LoadVideo,
    "GetVideoComponents": GetVideoComponents,
    "ImageFromBatch": ImageFromBatch,
    "KSampler": KSampler,
    "RandomNoise": RandomNoise,
    "KSamplerSelect": KSamplerSelect,
    "CFGGuider": CFGGuider,
    "SamplerCustomAdvanced": SamplerCustomAdvanced,
    "CreateVideo": CreateVideo,
    "SaveVideo": SaveVideo,
    "PrimitiveStringMultiline": PrimitiveStringMultiline,
    **FLUX_NODES,
}
