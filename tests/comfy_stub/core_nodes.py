"""Test stand-ins for the ComfyUI core nodes our example workflows use.

Inputs, widget order and outputs follow ComfyUI v0.3.64 (nodes.py ``LoadImage``,
comfy_extras/nodes_video.py ``LoadVideo`` / ``GetVideoComponents``, nodes_images.py
``ImageFromBatch``); the bodies are ours, reading files with PyAV through ``opensora_core.media``.
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


CORE_NODES: dict[str, type] = {
    "LoadImage": LoadImage,
    "LoadVideo": LoadVideo,
    "GetVideoComponents": GetVideoComponents,
    "ImageFromBatch": ImageFromBatch,
}
