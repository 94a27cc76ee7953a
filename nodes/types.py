"""What travels between our nodes: the objects behind the ``OPENSORA_*`` sockets and our LATENT layout.

Socket objects are plain dataclasses around core objects. They are never pickled: ComfyUI
keeps node outputs in memory. The LATENT dict holds only a tensor and plain numbers, so it
survives ComfyUI's cache and latent save/load nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..opensora_core.conditioning import MaskGroup, Task
from ..opensora_core.families import Family
from ..opensora_core.geometry import LatentGeometry
from ..opensora_core.pipeline import Clip, GenerationPlan
from ..opensora_core.text.caption import Caption
from .comfy_bridge import Managed, io

# Socket type names (prefixed; never rename them: saved workflows refer to them) and their V3 types.
MODEL = "OPENSORA_MODEL"
VAE = "OPENSORA_VAE"
T5 = "OPENSORA_T5"
CAPTION = "OPENSORA_CAPTION"
REFERENCES = "OPENSORA_REFERENCES"
CLIP_L = "OPENSORA_CLIP"
GUIDANCE = "OPENSORA_GUIDANCE"

ModelSocket = io.Custom(MODEL)
VAESocket = io.Custom(VAE)
T5Socket = io.Custom(T5)
CaptionSocket = io.Custom(CAPTION)
ReferencesSocket = io.Custom(REFERENCES)
ClipSocket = io.Custom(CLIP_L)
GuidanceSocket = io.Custom(GUIDANCE)


# ---------------------------------------------------------------------------
# Loaded models
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class ModelHandle:
    """OPENSORA_MODEL: a loaded STDiT / STDiT2 / STDiT3."""

    module: nn.Module
    family: Family
    preset: str | None
    source: str
    attention: str
    managed: Managed | None = None

    def describe(self) -> str:
        preset = f" {self.preset}" if self.preset else ""
        return f"{self.family.model.class_name}{preset} ({self.family.title})"


@dataclass(eq=False)
class VAEHandle:
    """OPENSORA_VAE: a loaded video VAE (VAE v1.2 or the per-frame SD-VAE wrapper)."""

    module: nn.Module
    source: str
    managed: Managed | None = None

    @property
    def geometry(self) -> LatentGeometry:
        return self.module.geometry


@dataclass(eq=False)
class T5Handle:
    """OPENSORA_T5: a loaded T5 encoder (``opensora_core.text.t5.T5TextEncoder``)."""

    encoder: object
    source: str
    managed: Managed | None = None


@dataclass(eq=False)
class ClipHandle:
    """OPENSORA_CLIP: a loaded CLIP text encoder (``opensora_core.text.clip.CLIPTextEncoder``), the pooled
    vector of Open-Sora 2.0."""

    encoder: object
    source: str
    managed: Managed | None = None


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class PromptCaptions:
    """OPENSORA_CAPTION: one prompt encoded per loop segment (``|0|text|2|text`` gives two).

    ``segments`` are (first loop round, caption (1, 1, L, C) on the CPU); round i uses the
    last segment that starts at or before i, as the official loop mode does.
    """

    prompt: str
    segments: list[tuple[int, Caption]]
    texts: list[str]  # the text the encoder saw, per segment
    release: str  # Open-Sora release the text was prepared for (scores, caption length)
    # The segments as written, where the family wraps prompts in a template (Open-Sora-Plan): what this prompt
    # gives when connected as the negative (the official code does not wrap the negative prompt); None: segments
    plain: list[tuple[int, Caption]] | None = None
    # The family's default negative prompt, encoded (Open-Sora-Plan's release one, Open-Sora 2.0's ""): the
    # Sampler's negative when none is connected; None: the model's learned null caption
    default_negative: Caption | None = None

    @property
    def max_length(self) -> int:
        return self.segments[0][1].max_length

    def for_round(self, round_index: int) -> Caption:
        return [caption for start, caption in self.segments if start <= round_index][-1]

    def per_round(self, rounds: int) -> list[Caption]:
        return [self.for_round(i) for i in range(rounds)]

    def negative_per_round(self, rounds: int) -> list[Caption]:
        """This prompt as the negative: its text as written (no template), per round."""
        segments = self.plain if self.plain is not None else self.segments
        return [[caption for start, caption in segments if start <= i][-1] for i in range(rounds)]

    def default_negatives(self, rounds: int) -> list[Caption] | None:
        """What guides when no negative is connected: the encoded default negative per round, or None."""
        return None if self.default_negative is None else [self.default_negative] * rounds


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class References:
    """OPENSORA_REFERENCES: reference frames plus where they go (parsed strategy groups or a named task).

    ``frames``: one (T, H, W, 3) float tensor in 0..1 per reference (an image has T = 1).
    ``groups``: the mask strategy, parsed once by the Mask Builder (each group knows its units);
    a named ``task`` (opensora_core.conditioning.TASKS) is resolved by the plan, which knows the clip length.
    """

    frames: list[torch.Tensor]
    groups: list[MaskGroup] = field(default_factory=list)
    task: str | None = None
    task_frames: int = 1
    edit_ratio: float = 0.0
    condition_type: str | None = None  # Open-Sora 2.0: how the references condition (i2v_head, ...), no strategy

    @property
    def frame_counts(self) -> list[int]:
        return [int(f.shape[0]) for f in self.frames]

    @property
    def strategy(self) -> list[MaskGroup] | Task:
        """What the generation request takes: the parsed groups, or the named task."""
        if self.task is None:
            return list(self.groups)
        return Task(self.task, self.task_frames, self.edit_ratio)


@dataclass(frozen=True)
class GuidanceOptions:
    """OPENSORA_GUIDANCE: guidance settings only some families take (Open-Sora 2.0); the plan refuses them
    for a family that does not."""

    image_cfg_scale: float
    oscillation: bool


def image_frames(name: str, image) -> torch.Tensor:
    """A ComfyUI IMAGE input as (T, H, W, 3) float frames on the CPU; raises naming the input if it is none."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 4 or shape[-1] not in (3, 4):
        channels = f"{shape[-1]} channel(s)" if len(shape) == 4 else f"shape {shape}"
        raise ValueError(
            f"{name}: expected an IMAGE batch (frames, height, width, 3 RGB channels), got {channels}; "
            "connect an image or video frames (a mask or a grayscale batch needs 'Convert Mask to Image' first)"
        )
    if shape[0] < 1 or shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"{name}: the IMAGE batch is empty (shape {shape}); connect at least one frame")
    return image[..., :3].float().cpu()


# ---------------------------------------------------------------------------
# LATENT
# ---------------------------------------------------------------------------

LATENT_INFO = "opensora"  # key of our bookkeeping in the LATENT dict


@dataclass
class LatentInfo:
    """How the clips of a LATENT join: latent and pixel frames per clip, frames dropped at each join."""

    clip_latent_frames: list[int]
    clip_num_frames: list[int]
    drop_frames: list[int]
    fps: float  # frames per second to save at
    family: str = ""  # official class name of the model that made it ("" if unknown)
    height: int | None = None  # requested pixel size (426 for 240p 9:16, decoded as 424), when a node knows it
    width: int | None = None

    def as_dict(self) -> dict:
        size = {} if self.height is None else {"height": int(self.height), "width": int(self.width)}
        return {
            "clip_latent_frames": list(self.clip_latent_frames),
            "clip_num_frames": list(self.clip_num_frames),
            "drop_frames": list(self.drop_frames),
            "fps": float(self.fps),
            "family": self.family,
        } | size

    @classmethod
    def of(cls, latent: dict) -> LatentInfo | None:
        """The bookkeeping of a LATENT, or None for a LATENT from another node."""
        raw = latent.get(LATENT_INFO)
        return None if raw is None else cls(**raw)


def latent_from_clips(clips: list[Clip], plan: GenerationPlan) -> dict:
    """LATENT ``{"samples": (B, C, sum t, h, w) on the CPU, "opensora": {...}}`` from sampled clips."""
    info = LatentInfo(
        clip_latent_frames=[c.latent.shape[2] for c in clips],
        clip_num_frames=[c.num_frames for c in clips],
        drop_frames=[c.drop for c in clips],
        fps=plan.save_fps,
        family=plan.family.model.class_name,
    )
    samples = torch.cat([c.latent.float().cpu() for c in clips], dim=2)  # (B, C, T, h, w)
    return {"samples": samples, LATENT_INFO: info.as_dict()}


def latent_from_video(latent: torch.Tensor, num_frames: int, fps: float) -> dict:
    """LATENT of one encoded video."""
    info = LatentInfo([latent.shape[2]], [num_frames], [0], fps)
    return {"samples": latent.float().cpu(), LATENT_INFO: info.as_dict()}


def clips_from_latent(latent: dict, geometry: LatentGeometry, default_fps: float) -> tuple[list[Clip], float]:
    """Split a LATENT back into clips. A LATENT from another node (no bookkeeping) is one clip of
    the largest pixel frame count its latent frames decode to."""
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            f"samples: expected a video latent (B, C, T, H, W), got shape {tuple(samples.shape)}; "
            "connect the LATENT of the Open-Sora Sampler or VAE Encode"
        )
    raw = latent.get(LATENT_INFO)
    if raw is None:
        frames = geometry.pixel_frame_range(samples.shape[2])[1]
        return [Clip(samples, frames, 0)], default_fps
    sizes = list(raw["clip_latent_frames"])
    if sum(sizes) != samples.shape[2]:
        raise ValueError(
            f"samples: the LATENT has {samples.shape[2]} latent frames but its Open-Sora bookkeeping lists clips of "
            f"{sizes}; a node between the sampler and the decoder changed the frames"
        )
    parts = torch.split(samples, sizes, dim=2)
    clips = [Clip(part, n, d) for part, n, d in zip(parts, raw["clip_num_frames"], raw["drop_frames"], strict=True)]
    return clips, float(raw["fps"])
