"""The family registry: every released system the pack runs, declared once with keyword fields.

Two kinds of declaration live here:

* a :class:`FileKind` is one kind of weights file (an STDiT3 transformer, the VAE v1.2, an SD-VAE in the
  LDM layout, a T5 encoder): how it is recognised (marker keys), what it is called in messages and what
  to do with it. :class:`ModelKind` and :class:`VAEKind` add what a diffusion model or a VAE file needs.
* a :class:`Family` is one released system (Open-Sora v1.2 = STDiT3 + VAE v1.2 + T5 + rectified flow):
  its model kind, the VAE kinds that fit it, its text encoders, its sampler, its conditioning and its
  defaults.

Family modules (``families/opensora_v1.py``) build the declarations and call :func:`register`; the
loaders, the pipeline, the command line, the nodes and the trainer read them through the functions
below instead of branching on names. This module imports no family module: it holds the types and the
tables, and ``opensora_core.families`` fills them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from .. import models, vae
from ..checkpoints import CheckpointError
from ..geometry import LatentGeometry
from ..sampling import Denoiser, GuidedModel, ScheduleRequest

Role = Literal["diffusion", "vae", "text"]


# ---------------------------------------------------------------------------
# File kinds
# ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FileKind:
    """One kind of weights file and how to recognise it."""

    name: str  # unique id ("STDiT3", "vae_v1_2", "sd_ldm", "t5")
    role: Role
    class_name: str  # official class of what the file holds ("VideoAutoencoderPipeline")
    markers: tuple[str, ...]  # keys that are all present in such a file
    description: str  # for messages: "an Open-Sora v1.2 STDiT3 diffusion transformer"
    fix: str  # what to do with such a file ("load it with the VAE loader")
    prefixed: bool = False  # the markers may sit under a prefix ("first_stage_model.", "vae.")
    shadows: tuple[str, ...] = ()  # kinds whose markers these files contain too (STDiT2 holds STDiT's)


@dataclass(frozen=True, kw_only=True)
class ModelKind(FileKind):
    """A diffusion-transformer file: the official class (``models.model_class``) with its presets."""

    role: Role = "diffusion"
    # Official release file names -> the preset they were built with, for files whose shapes cannot tell
    # the size (v1.0 .pth files omit their fixed position tables).
    released_files: Mapping[str, str] = field(default_factory=dict)

    @property
    def cls(self) -> type[nn.Module]:
        return models.model_class(self.class_name)


@dataclass(frozen=True, kw_only=True)
class VAEKind(FileKind):
    """A VAE file: its latent geometry and where the released file comes from."""

    role: Role = "vae"
    geometry: LatentGeometry
    short_name: str  # "the video VAE", "the SD-VAE"
    source: str  # where to get the released file ("hpcai-tech/OpenSora-VAE-v1.2, model.safetensors")
    # (state dict without the file's prefix, micro batch, norm groups) -> (video VAE on the meta device,
    # the module to load strictly, the state dict in that module's layout); see vae.shapes
    build: Callable[[Mapping[str, torch.Tensor], int | None, int], tuple[nn.Module, nn.Module, Mapping]]
    comfy_latent_format: str | None = None  # ComfyUI latent format whose RGB factors preview this latent space


@dataclass(frozen=True)
class Detected:
    """What :func:`detect` found: the kind and the key prefix its keys carry ("" when none)."""

    kind: FileKind
    prefix: str = ""


# ---------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TextEncoder:
    """One text encoder of a family and the caption it produces."""

    kind: FileKind  # the file kind (T5)
    name: str  # "T5-XXL (DeepFloyd/t5-v1_1-xxl)"
    max_length: int  # caption tokens L (the model's model_max_length)
    channels: int  # feature width (the model's caption_channels)


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """A schedule and a sample function over one denoiser interface (:class:`~..sampling.Denoiser`).

    ``schedule(request)`` gives what ``sample`` walks; ``sample(denoiser, x, schedule, *, mask, noise,
    callback)`` runs it; ``denoiser(model, caption, y_null, model_args, *, scale, channels, null_mask)``
    wraps the model with guidance (default: classifier-free guidance on ``guidance_channels``).
    """

    name: str  # "rflow", "iddpm" (shown in reports)
    schedule: Callable[[ScheduleRequest], Any]
    sample: Callable[..., torch.Tensor]
    denoiser: Callable[..., Denoiser] = GuidedModel
    guidance_channels: int | None = None  # prediction channels guided (None: all)
    check_frames: Callable[[int], None] | None = None  # raises for frame counts the schedule cannot take
    step_range: tuple[int, int | None] = (1, None)  # sampling steps the schedule takes (None: no upper bound)


class Conditioning(Protocol):
    """How a family puts reference frames into the latent (``conditioning.MaskStrategyConditioning`` for
    Open-Sora v1.1/v1.2). The pipeline calls these three and nothing else."""

    def place(self, groups: Sequence, *, geometry: LatentGeometry, num_frames: int, reference_frames: Sequence[int],
              loops: int, condition_frames: int, condition_edit: float, align: int | None) -> list:
        """One sample's placements for every loop round, checked against the frame counts."""

    def insert(self, z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]], placements: Sequence[Sequence],
               loop_i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The round's start latent with the references inserted, and the frame mask the sampler reads."""

    def describe(self, placements: Sequence, *, loop_i: int, geometry: LatentGeometry, num_frames: int) -> str:
        """Where each reference lands in round ``loop_i``, for the log."""


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """What the official inference config of the release uses when the user does not say."""

    steps: int
    cfg_scale: float
    num_frames: int  # pixel frames of one clip
    fps: float
    aesthetic_score: float | None  # appended to prompts (None: no score phrases)
    condition_frame_length: int  # latent frames a loop round continues from
    frame_interval: int  # saved fps = fps / frame_interval


@dataclass(frozen=True, kw_only=True)
class Training:
    """How the trainer treats the family's model (None on a family: not trainable here)."""

    objective: str  # sampling.losses.build_objective kind ("rflow", "iddpm")
    aspect_ratio: Literal["height/width", "width/height"]  # the ``ar`` argument the official dataset gives
    fps_per_frame_interval: bool  # fps argument = source fps // frame_interval (else the source fps)


@dataclass(frozen=True, kw_only=True)
class Family:
    """One released system, declared once."""

    name: str  # registry key ("opensora-v1.2")
    system: str  # "Open-Sora"
    release: str  # "v1.2"
    model: ModelKind
    vae: tuple[VAEKind, ...]  # VAE files that fit (all share one geometry)
    vae_name: str  # for messages: "the Open-Sora VAE v1.2"
    text: tuple[TextEncoder, ...]  # the first gives the caption
    sampler: Sampler
    conditioning: Conditioning | None  # how reference frames are placed (None: the model takes none)
    defaults: Defaults
    score_phrases: bool = False  # prompts take " aesthetic score: X." / motion / camera phrases (text.prompts)
    prompt_syntax: str = "v1.2"  # JSON options after a prompt text (text.prompts.parse_prompt_options version)
    training: Training | None = None

    def __post_init__(self) -> None:
        if len({kind.geometry for kind in self.vae}) != 1:
            raise ValueError(f"{self.name}: every VAE kind of a family must share one latent geometry")

    @property
    def title(self) -> str:
        return f"{self.system} {self.release}"

    @property
    def geometry(self) -> LatentGeometry:
        return self.vae[0].geometry

    @property
    def caption_length(self) -> int:
        return self.text[0].max_length


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------

_KINDS: dict[str, FileKind] = {}
_FAMILIES: dict[str, Family] = {}


def register_kind(kind: FileKind) -> FileKind:
    """Add a file kind (registering the same object again is a no-op)."""
    known = _KINDS.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"file kind {kind.name!r} is registered twice with different declarations")
    _KINDS[kind.name] = kind
    return kind


def register(family: Family) -> Family:
    """Add a family and its file kinds."""
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"family {family.name!r} is registered twice")
    for kind in (family.model, *family.vae, *(encoder.kind for encoder in family.text)):
        register_kind(kind)
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    return list(_FAMILIES.values())


def kinds(role: Role | None = None) -> list[FileKind]:
    return [kind for kind in _KINDS.values() if role is None or kind.role == role]


def by_name(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def by_release(release: str) -> Family:
    """The family of a release label ("v1.2")."""
    for family in _FAMILIES.values():
        if family.release == release:
            return family
    raise ValueError(f"unknown release {release!r}; known: {', '.join(f.release for f in _FAMILIES.values())}")


def for_class(class_name: str) -> Family:
    """The family whose diffusion model has this official class name."""
    for family in _FAMILIES.values():
        if family.model.class_name == class_name:
            return family
    known = ", ".join(f.model.class_name for f in _FAMILIES.values())
    raise ValueError(f"{class_name} is not an Open-Sora diffusion model; expected one of {known}")


def family_of(model: nn.Module) -> Family:
    """The family of a loaded diffusion model (from its official class name)."""
    return for_class(getattr(model, "OFFICIAL_NAME", type(model).__name__))


def families_using(vae: Iterable[FileKind]) -> list[Family]:
    """Families one of whose VAE kinds is among ``vae``."""
    names = {kind.name for kind in vae}
    return [f for f in _FAMILIES.values() if any(kind.name in names for kind in f.vae)]


def releases_text(families_: list[Family]) -> str:
    """"Open-Sora v1.2" for one family, "Open-Sora v1.0/v1.1 models" for several."""
    if len(families_) == 1:
        return families_[0].title
    systems = dict.fromkeys(f.system for f in families_)
    if len(systems) == 1:
        return f"{next(iter(systems))} {'/'.join(sorted(f.release for f in families_))} models"
    return " or ".join(f.title for f in families_) + " models"


# ---------------------------------------------------------------------------
# Official class names (build_model)
# ---------------------------------------------------------------------------


def official_class(class_name: str) -> type[nn.Module]:
    """Our class for an official class name: a diffusion model (``models``) or a VAE (``vae``)."""
    if class_name in models.class_names():
        return models.model_class(class_name)
    if class_name in vae.class_names():
        return vae.vae_class(class_name)
    known = ", ".join([*models.class_names(), *vae.class_names()])
    raise ValueError(f"unknown model class {class_name!r}; known: {known}")


def build_model(class_name: str, config: dict) -> nn.Module:
    """Build ``class_name`` from official constructor kwargs (a released ``config.json``, a case's kwargs)."""
    return official_class(class_name).from_official_config(dict(config))


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def detect(state_dict: Collection[str], *, role: Role | None = None, class_name: str | None = None) -> Detected | None:
    """What a state dict (or its key list) holds, from the marker keys of the registered kinds.

    Kinds another matching kind shadows are dropped; ``class_name`` (the class the file's own config or
    metadata names) picks among what is left, else the first registered wins. ``role`` limits the search.
    """
    keys = set(state_dict)
    found = [d for kind in kinds(role) if (d := _match(kind, keys)) is not None]
    shadowed = {name for d in found for name in d.kind.shadows}
    found = [d for d in found if d.kind.name not in shadowed]
    stated = [d for d in found if class_name is not None and d.kind.class_name == class_name]
    return (stated or found or [None])[0]


def _match(kind: FileKind, keys: set[str]) -> Detected | None:
    if not kind.prefixed:
        return Detected(kind) if all(m in keys for m in kind.markers) else None
    first, *rest = kind.markers
    for key in sorted(keys):
        if key.endswith(first):
            prefix = key[: -len(first)]
            if (prefix == "" or prefix.endswith(".")) and all(prefix + m in keys for m in rest):
                return Detected(kind, prefix)
    return None


def describe(found: Detected | FileKind | None) -> str:
    """What a file holds, for messages."""
    kind = found.kind if isinstance(found, Detected) else found
    return "something this pack does not recognise" if kind is None else kind.description


def fix_for(found: Detected | FileKind | None) -> str:
    """What to do with such a file, for messages."""
    kind = found.kind if isinstance(found, Detected) else found
    return "check that the file is an Open-Sora checkpoint" if kind is None else kind.fix


def expect(state_dict: Collection[str], wanted: Iterable[FileKind], source: str, *,
           class_name: str | None = None) -> Detected:
    """The detected kind if it is one of ``wanted``; else a :class:`CheckpointError` naming what the file is."""
    wanted = list(wanted)
    found = detect(state_dict, class_name=class_name)
    if found is not None and any(found.kind is kind for kind in wanted):
        return found
    names = " or ".join(describe(kind) for kind in wanted)
    raise CheckpointError(f"{source}: expected {names}, but this file holds {describe(found)}; {fix_for(found)}")


__all__ = [
    "Conditioning",
    "Defaults",
    "Detected",
    "Family",
    "FileKind",
    "ModelKind",
    "Role",
    "Sampler",
    "TextEncoder",
    "Training",
    "VAEKind",
    "build_model",
    "by_name",
    "by_release",
    "describe",
    "detect",
    "expect",
    "families",
    "families_using",
    "family_of",
    "fix_for",
    "for_class",
    "kinds",
    "official_class",
    "register",
    "register_kind",
    "releases_text",
]
