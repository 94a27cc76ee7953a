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
from ..geometry import LatentGeometry, image_size
from ..sampling import Denoiser, GuidedModel, ScheduleRequest, stream_noise
from ..text import prompts
from ..text.t5 import load_t5_encoder

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
    fp8_weights: bool = False  # the class can store its Linear weights in fp8 (built with models.fp8.Fp8Operations)
    stores_fp8: bool = False  # such files hold fp8 weights with their scales: they always load with fp8 layers
    block_swap: bool = False  # the class has a ``blocks`` list models.block_swap can stream

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
    # (state dict without the file's prefix, micro batch, norm groups, the config saved with the file or None)
    # -> (video VAE on the meta device, the module to load strictly, the state dict in that module's layout);
    # see vae.shapes, vae.osp
    build: Callable[[Mapping[str, torch.Tensor], int | None, int, Mapping | None], tuple[nn.Module, nn.Module, Mapping]]


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
    # (shape, seed, the generation's sampling.NoiseSource, model dtype) -> the start latent; default: float32 from
    # the shared stream after the reference encodes (Open-Sora v1.x, Open-Sora-Plan)
    start_noise: Callable[..., torch.Tensor] = stream_noise


class Conditioning(Protocol):
    """How a family puts reference frames into the latent (``conditioning.MaskStrategyConditioning`` for
    Open-Sora v1.1/v1.2, ``conditioning.InpaintConditioning`` for Open-Sora-Plan v1.3 i2v,
    ``conditioning.v2.ConditionTypes`` for Open-Sora 2.0). The pipeline calls these four and nothing else."""

    def place(self, strategy, *, geometry: LatentGeometry, num_frames: int, reference_frames: Sequence[int],
              loops: int, condition_frames: int | None, condition_edit: float, align: int | None,
              **options) -> list:
        """One sample's placements for every loop round, checked against the frame counts. ``strategy``:
        the sample's typed groups (``conditioning.MaskGroup``, any units) or a named ``conditioning.Task``;
        ``options``: the family's conditioning options (``Defaults.condition_type``), where it has them."""

    def encode(self, vae: nn.Module, references: Sequence[torch.Tensor], placements: Sequence[Sequence], *,
               height: int, width: int, num_frames: int, noise) -> list[list[torch.Tensor]]:
        """Per sample, what :meth:`insert` takes: the references ((T, H, W, 3) frames) fitted to the output size
        and encoded with ``vae``; ``noise`` is the posterior's ``vae.NoiseFn``."""

    def insert(self, z: torch.Tensor, refs: Sequence[Sequence[torch.Tensor]], placements: Sequence[Sequence],
               loop_i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The round's start latent with the references inserted, and the ``mask`` the sampler reads (a frame
        mask, or condition channels)."""

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
    condition_frame_length: int | None  # latent frames a loop round continues from (None: no loop mode)
    frame_interval: int  # saved fps = fps / frame_interval
    motion_score: float | None = None  # appended to prompts (None: no motion score unless the request gives one)
    negative_prompt: str | None = None  # encoded for guidance (None: the model's learned null caption)
    prompt_template: str | None = None  # wraps every prepared prompt ("...{}..."; None: the text as prepared)
    # Options only some families take (None: the family does not take it; a request that gives it is refused).
    # The plan hands them, as keywords of the same names, to the component that interprets them: the sampler's
    # denoiser (image_cfg_scale, oscillation), the conditioning's ``place`` (condition_type) or the schedule
    # (shift_scale).
    image_cfg_scale: float | None = None  # guidance on the image condition
    oscillation: bool | None = None  # guidance scales of 1 on odd steps from step 10
    condition_type: str | None = None  # how references condition the video (t2v, i2v_head, ...)
    # a factor on the shift of the rectified-flow timestep transform (official: 1.0; >1 spends more of the steps at
    # high noise, where placement is decided), handed to the sampler's schedule
    shift_scale: float | None = None
    # The size a request gets when it names none: the preset names ``Family.image_size`` reads (v1.x "240p",
    # "9:16" as H:W; 2.0 "256px", "16:9" as W:H), or, for a release without size presets (``image_size`` None),
    # the official sample script's (height, width) (Open-Sora-Plan v1.3: 352x640).
    resolution: str | None = "240p"
    aspect_ratio: str | None = "9:16"
    size: tuple[int, int] | None = None


def stdit_training_call(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                        x_mask: torch.Tensor | None, sizes: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The STDiT call of a training step: noisy latent, timesteps, caption (B, 1, L, C), its token mask (B, L),
    the frame mask (B, T) of condition frames and the per-sample size arguments."""
    return model(x, t, y, mask=mask, x_mask=x_mask, **sizes)


@dataclass(frozen=True, kw_only=True)
class Training:
    """How the trainer treats the family's model (None on a family: not trainable here)."""

    objective: str  # sampling.losses.build_objective kind ("rflow", "iddpm", "vprediction", "v2_flow")
    # the ``ar`` argument the official dataset gives (None: the model takes no aspect-ratio argument)
    aspect_ratio: Literal["height/width", "width/height"] | None
    fps_per_frame_interval: bool | None  # fps argument = source fps // frame_interval (else the source fps; None: none)
    zero_snr: bool = False  # the training schedule is rescaled to zero terminal SNR (Lin et al. 2023)
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting (None: unweighted)
    side_multiple: int | None = None  # bucket sides are multiples of this (None: the VAE's spatial factor)
    # the frame rate the official trainer resamples clips to (None: the source rate / frame_interval); opensora-train
    # does not resample yet (data.frame_interval picks frames)
    fps: float | None = None
    # (model, x_t, t, caption y, caption mask, frame mask or None, size args) -> the model's output
    forward: Callable[..., torch.Tensor] = stdit_training_call
    frame_masks: bool = True  # trains with condition-frame masks (mask_ratios); False: refused
    # (caption, fps, motion score) -> the training caption, for families whose captions carry them as text
    caption_suffix: Callable[[str, int | None, float | None], str] | None = None
    bucket_resolutions: tuple[str, ...] = ()  # resolution names of the official training buckets ("256px", ...)
    # name -> (pixel count, {aspect key: (height, width)}) of those buckets (None: the v1 tables of ``geometry``)
    bucket_sizes: Callable[[str], tuple[int, dict[str, tuple[int, int]]]] | None = None
    # "v1": Open-Sora v1.x/Plan bucket draws (T > t * interval, a draw per frame entry); "v2": Open-Sora 2.0's
    # (T // interval >= t, one draw stream per clip, a lost keep draw tries the next resolution)
    bucket_rule: Literal["v1", "v2"] = "v1"
    # the official training's caption dropout: encoder name -> probability of its null caption (2.0: t5, clip)
    caption_dropout: tuple[tuple[str, float], ...] = ()
    fp8_base: bool = False  # the frozen base may be stored in fp8 (LoRA training)
    block_swap: bool = False  # the model has a ``blocks`` list block swap can stream


@dataclass(frozen=True)
class PromptSettings:
    """What a family may add to a prompt; each value is already resolved (None: not added)."""

    fps: float
    aesthetic_score: float | None
    motion_score: float | str | None
    camera_motion: str | None
    clean: bool


def score_phrase_prompt(text: str, settings: PromptSettings) -> str:
    """Open-Sora v1.x prompts: score phrases appended, cleaned like the official code (``text.prompts``)."""
    return prompts.prepare_prompt(text, settings.aesthetic_score, settings.motion_score, settings.camera_motion,
                                  clean=settings.clean)


def prompt_as_written(text: str, settings: PromptSettings) -> str:
    """The text as written, no preprocessing (Open-Sora-Plan: its scripts give the prompt to mT5 unchanged)."""
    return text


@dataclass(frozen=True)
class TextFile:
    """A text-encoder file (a single ``.safetensors`` or a Hugging Face folder) and its tokenizer folder."""

    path: str
    tokenizer: str | None = None


def load_t5_text(files: Sequence[TextFile], *, max_length: int, dtype: torch.dtype, device) -> Any:
    """The text encoder of a family with one T5 (or mT5): ``text.t5.T5TextEncoder`` (captions with a token mask)."""
    (t5,) = files
    return load_t5_encoder(t5.path, t5.tokenizer, max_length=max_length, dtype=dtype, device=device)





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
    label: str | None = None  # name in choice lists (the Text Encode's caption_length); None: the release
    # (text, PromptSettings) -> the text the encoders see, before ``Defaults.prompt_template``
    prepare_prompt: Callable[[str, PromptSettings], str] = score_phrase_prompt
    # (files in ``text`` order, max_length, dtype, device) -> the pipeline's text encoder (``encode(texts)``)
    load_text: Callable[..., Any] = load_t5_text
    # (num_frames, height, width) -> raises for a size the model cannot take (None: the VAE geometry's checks)
    check_size: Callable[[int, int, int], None] | None = None
    # (resolution, aspect ratio) -> (height, width): the release's size presets (v1.x: "240p", "9:16" as H:W;
    # None: the release has none, sizes are given in pixels)
    image_size: Callable[[str, str], tuple[int, int]] | None = image_size

    def __post_init__(self) -> None:
        if len({kind.geometry for kind in self.vae}) != 1:
            raise ValueError(f"{self.name}: every VAE kind of a family must share one latent geometry")
        named = (self.defaults.resolution, self.defaults.aspect_ratio)
        if self.image_size is None and (self.defaults.size is None or named != (None, None)):
            raise ValueError(f"{self.name}: a family without size presets declares Defaults.size (height, width) "
                             "and resolution=None, aspect_ratio=None")
        if self.image_size is not None and (self.defaults.size is not None or None in named):
            raise ValueError(f"{self.name}: a family with size presets declares Defaults.resolution and aspect_ratio, "
                             "not Defaults.size")

    @property
    def title(self) -> str:
        return f"{self.system} {self.release}"

    @property
    def geometry(self) -> LatentGeometry:
        return self.vae[0].geometry

    @property
    def caption_length(self) -> int:
        return self.text[0].max_length

    @property
    def short_label(self) -> str:
        return self.label or self.release

    def takes_phrase(self, name: str) -> bool:
        """Whether prompts take this phrase ("aesthetic_score", "motion_score", "camera_motion"): every one for a
        family trained with score phrases (v1.2), the motion score also for one with a default (2.0)."""
        return self.score_phrases or (name == "motion_score" and self.defaults.motion_score is not None)


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


def families_with_geometry(geometry: LatentGeometry) -> list[Family]:
    """Families whose VAE makes latents of ``geometry`` (the latent space a LATENT belongs to)."""
    return [f for f in _FAMILIES.values() if f.geometry == geometry]


def releases_text(families_: list[Family]) -> str:
    """"Open-Sora v1.2" for one family, "Open-Sora v1.0/v1.1 models" for several."""
    if len(families_) == 1:
        return families_[0].title
    systems = dict.fromkeys(f.system for f in families_)
    if len(systems) == 1:
        return f"{next(iter(systems))} {'/'.join(sorted({f.release for f in families_}))} models"
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
    "PromptSettings",
    "Role",
    "Sampler",
    "TextEncoder",
    "TextFile",
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
    "load_t5_text",
    "official_class",
    "register",
    "register_kind",
    "releases_text",
    "prompt_as_written",
    "score_phrase_prompt",
    "stdit_training_call",
]
