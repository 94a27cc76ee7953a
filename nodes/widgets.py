"""Widget definitions shared by the nodes, and the labels their choices map to.

Changing a choice label breaks saved workflows (they store the label): add labels, never rename.
"""

from __future__ import annotations

import torch

from ..opensora_core.dtypes import DTYPES
from ..opensora_core.families import families
from ..opensora_core.text import prompts

CATEGORY = "OpenSora"

# ---------------------------------------------------------------------------
# Numbers and text
# ---------------------------------------------------------------------------

MAX_SEED = 0xFFFFFFFFFFFFFFFF


def seed(default: int = 42) -> tuple:
    return ("INT", {
        "default": default, "min": 0, "max": MAX_SEED, "control_after_generate": True,
        "tooltip": "Seed of every random draw (start noise, sampler noise, reference encoding); "
                   "the same seed gives the same video on every device.",
    })


def integer(default: int, lo: int, hi: int, tooltip: str, step: int = 1) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})


def number(default: float, lo: float, hi: float, tooltip: str, step: float = 0.01) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})


def text(default: str, tooltip: str, multiline: bool = False) -> tuple:
    return ("STRING", {"default": default, "multiline": multiline, "tooltip": tooltip})


def choice(options: list[str], default: str, tooltip: str) -> tuple:
    return (list(options), {"default": default, "tooltip": tooltip})


def boolean(default: bool, tooltip: str) -> tuple:
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


# ---------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


# ---------------------------------------------------------------------------
# Text encoding
# ---------------------------------------------------------------------------

# label -> release whose caption length (text encoder max length) and prompt rules apply, from the families
CAPTION_LENGTHS = {"from model": None} | {f"{f.release} ({f.caption_length} tokens)": f.release for f in families()}

# v1.2 camera-motion phrases (the official Gradio app's choices)
CAMERA_MOTIONS = ["none", *prompts.CAMERA_MOTIONS]

DEFAULT_PROMPT = (
    "a beautiful waterfall in a lush green forest, sunlight filtering through the leaves, "
    "water splashing on the rocks, cinematic"
)

# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------

# label -> opensora_core.conditioning task name (None: the mask_strategy text)
TASK_LABELS = {
    "custom": None,
    "first frame (image to video)": "first_frame",
    "first and last frame (stitching)": "first_last",
    "extend from last frames": "extend",
    "edit whole video (video to video)": "edit",
}
UNITS = ["latent frames", "pixel frames"]
MAX_REFERENCES = 4  # image_1 .. image_4 inputs of the mask builder

# ---------------------------------------------------------------------------
# VAE tiling
# ---------------------------------------------------------------------------

TILING = ["off (retry tiled on out-of-memory)", "on"]
