"""Widget definitions shared by the nodes, and the labels their choices map to.

Changing a choice label breaks saved workflows (they store the label): add labels, never rename.
"""

from __future__ import annotations

import torch

from ..opensora_core.dtypes import DTYPES
from ..opensora_core.families import families
from ..opensora_core.text import prompts
from . import comfy_bridge as bridge
from .comfy_bridge import io

CATEGORY = "OpenSora"

# ---------------------------------------------------------------------------
# Widgets (V3 inputs). Keep each node's inputs in the order they always had: saved workflows store
# widget values by position (required inputs first, then optional ones).
# ---------------------------------------------------------------------------

MAX_SEED = 0xFFFFFFFFFFFFFFFF


def seed(default: int = 42, name: str = "seed", tooltip: str | None = None) -> io.Int.Input:
    return io.Int.Input(
        name, default=default, min=0, max=MAX_SEED, control_after_generate=True,
        tooltip=tooltip or "Seed of every random draw (start noise, sampler noise, reference encoding); "
                           "the same seed gives the same video on every device.",
    )


def integer(name: str, default: int, lo: int, hi: int, tooltip: str, step: int = 1) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=lo, max=hi, step=step, tooltip=tooltip)


def number(name: str, default: float, lo: float, hi: float, tooltip: str, step: float = 0.01,
           optional: bool = False) -> io.Float.Input:
    """A float widget; ``optional`` for one added to a node after workflows were saved with it (an API prompt
    that lacks it still runs, with the default)."""
    return io.Float.Input(name, default=default, min=lo, max=hi, step=step, tooltip=tooltip, optional=optional)


def text(name: str, default: str, tooltip: str, multiline: bool = False) -> io.String.Input:
    return io.String.Input(name, default=default, multiline=multiline, tooltip=tooltip)


def choice(name: str, options: list[str], default: str, tooltip: str) -> io.Combo.Input:
    return io.Combo.Input(name, options=list(options), default=default, tooltip=tooltip)


def boolean(name: str, default: bool, tooltip: str) -> io.Boolean.Input:
    return io.Boolean.Input(name, default=default, tooltip=tooltip)


def file_choice(name: str, folder: str, tooltip: str) -> io.Combo.Input:
    """A combo over the files ComfyUI lists in one of its model folders (read each time the UI asks)."""
    return io.Combo.Input(name, options=bridge.model_files(folder), tooltip=tooltip)


# ---------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


# ---------------------------------------------------------------------------
# Text encoding
# ---------------------------------------------------------------------------

# label -> name of the family whose caption length (text encoder max length) and prompt rules apply; families
# that share a label (Open-Sora-Plan v1.3 text and image to video) share both, the first registered one answers
CAPTION_LENGTHS = {"from model": None}
for _family in families():
    CAPTION_LENGTHS.setdefault(f"{_family.short_label} ({_family.caption_length} tokens)", _family.name)

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
