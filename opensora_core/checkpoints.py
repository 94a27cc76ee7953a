"""Checkpoint IO: safe reading, prefix stripping, strict loading, atomic saving (no model knowledge).

Formats read (``read_checkpoint``):

* ``.safetensors`` files (read lazily: tensors are only loaded when used, so a
  4.8 GB checkpoint is never held twice in memory);
* Hugging Face style folders (``config.json`` + ``model.safetensors`` or a sharded
  ``*.safetensors.index.json``), as the v1.1 / v1.2 releases are published (the weights file of such a
  folder read on its own also gets the ``config.json`` beside it), diffusers folders
  (``diffusion_pytorch_model.safetensors``, Open-Sora-Plan), and
  Open-Sora training folders (``<dir>/model/`` or ``<dir>/ema.pt``);
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` through ``torch.load(weights_only=True)``
  only: arbitrary pickled code is never executed.

Wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``, ComfyUI's
``model.diffusion_model.``) and ``{"ema": ...}`` / ``{"state_dict": ...}`` dicts are
unwrapped. ``load_into`` is the one strict-loading routine (diffusion models and VAEs):
it copies a state dict into a module (names and shapes must match exactly) and on
mismatch raises :class:`CheckpointMismatchError` listing missing / unexpected /
mis-shaped keys, plus the likely cause the caller's ``hint`` names. ``save_checkpoint``
writes safetensors atomically with the config in its metadata, so the loaders read back
what the trainer writes. What a file holds is decided by ``opensora_core.families``;
building and loading a model by ``opensora_core.loading``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .official_config import HF_BOOKKEEPING_KEYS

log = logging.getLogger("opensora")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Prefixes added by training wrappers and by tools that re-save checkpoints; stripped
# only when every key carries them (so `spatial_vae.module.` inside VAE keys is kept).
WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "_orig_mod.", "module.", "model.")
# Dict keys under which training scripts nest the weights (first match wins; DiT's find_model takes "ema").
NESTED_KEYS = ("ema", "state_dict", "model", "module")

METADATA_CLASS = "opensora.class"
METADATA_CONFIG = "opensora.config"
# written by opensora-train into its DiT exports: JSON {height, width, num_frames, fps, score_phrases}, what the
# model was trained at and which score phrases ("aesthetic score:", ...) its training captions carried
METADATA_TRAIN_SETTINGS = "opensora.train_settings"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit what was asked for."""


class CheckpointMismatchError(CheckpointError):
    """State-dict keys or shapes do not match the model."""


# ---------------------------------------------------------------------------
# Damaged files
# ---------------------------------------------------------------------------

LFS_POINTER = b"version https://git-lfs"


def damaged_file_error(path: str | os.PathLike, reason: str, kind: str = "safetensors file") -> CheckpointError:
    """The error for a weights file that cannot be parsed: names the file, its size and the fix."""
    path = Path(path)
    try:
        size = path.stat().st_size
        head = path.open("rb").read(len(LFS_POINTER)) if path.is_file() else b""
    except OSError:
        size, head = 0, b""
    hint = "a Git LFS pointer, not the weights; " if head == LFS_POINTER else ""
    return CheckpointError(f"{path}: not a valid {kind} ({size} bytes; {hint}{reason}); download it again")


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Iterator:
    """``safetensors.safe_open`` whose parse errors become :class:`CheckpointError` naming the file."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt", device=str(device))
    except Exception as err:  # SafetensorError (not importable by name in every version) or OSError
        if isinstance(err, FileNotFoundError):
            raise CheckpointError(f"checkpoint not found: {path}") from None
        raise damaged_file_error(path, str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    with handle:
        yield handle


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` has a complete safetensors header (nothing is loaded)."""
    with open_safetensors(path):
        pass


# ---------------------------------------------------------------------------
# State dicts that load tensors on access
# ---------------------------------------------------------------------------


class LazyStateDict(Mapping):
    """A read-only ``name -> tensor`` mapping over safetensors files.

    Keys and shapes come from the file headers; a tensor is read from disk only when
    it is accessed. ``rename`` maps our key to the key stored in the file.
    """

    def __init__(self, files: list[Path], device: str | torch.device = "cpu"):
        self._device = str(device)
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.metadata: dict[str, str] = {}
        for file in files:
            with open_safetensors(file) as handle:
                self.metadata.update(handle.metadata() or {})
                for key in handle.keys():
                    self._where[key] = (file, key)
                    self._shapes[key] = tuple(handle.get_slice(key).get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        file, stored = self._where[key]
        with open_safetensors(file, self._device) as handle:
            try:
                return handle.get_tensor(stored)
            except Exception as err:  # the file changed or was cut after its header was read
                raise damaged_file_error(file, f"{stored}: {err}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def renamed(self, mapping: Mapping[str, str]) -> LazyStateDict:
        """A view with keys renamed by ``mapping`` (our key -> stored key); unmapped keys are dropped."""
        view = object.__new__(LazyStateDict)
        view._device, view.metadata = self._device, self.metadata
        view._where = {new: self._where[old] for new, old in mapping.items()}
        view._shapes = {new: self._shapes[old] for new, old in mapping.items()}
        return view


StateDict = Mapping[str, torch.Tensor]


def shape_of(state_dict: StateDict, key: str) -> tuple[int, ...]:
    """Shape of ``state_dict[key]`` without loading it when the dict is lazy."""
    if isinstance(state_dict, LazyStateDict):
        return state_dict.shape(key)
    return tuple(state_dict[key].shape)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What a checkpoint path holds: weights (prefixes stripped), config if known, metadata."""

    path: Path
    state_dict: StateDict
    config: dict | None = None  # official constructor kwargs (HF config.json or our metadata)
    class_name: str | None = None  # official class name if the file says so
    metadata: dict[str, str] = field(default_factory=dict)


def trained_score_phrases(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The score phrases a fine-tuned model's captions carried (from a safetensors export's header only);
    None when the file does not say (released checkpoints, folders, pickles)."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    with open_safetensors(path) as handle:
        raw = (handle.metadata() or {}).get(METADATA_TRAIN_SETTINGS)
    return tuple(json.loads(raw).get("score_phrases", ())) if raw else None


def read_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a file or folder into a :class:`Checkpoint` (see module docstring for formats)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_folder(path, device)
    if path.suffix == ".safetensors":
        state = LazyStateDict([path], device)
        metadata = dict(state.metadata)
    elif path.suffix in PICKLE_SUFFIXES:
        state, metadata = _read_pickle(path, device), {}
    else:
        raise CheckpointError(
            f"{path.name}: unsupported checkpoint type; expected one of {', '.join(WEIGHT_SUFFIXES)} or a folder"
        )
    config, class_name = _config_from_metadata(metadata)
    if config is None and _is_folder_weights(path):  # a released folder's weights file, picked on its own
        config, class_name = read_hf_config(path.parent / "config.json")
    return Checkpoint(path, strip_prefixes(state), config, class_name, metadata)


def _is_folder_weights(path: Path) -> bool:
    """``path`` is the weights file of a Hugging Face / diffusers folder with its ``config.json`` (what the
    folder itself would read), e.g. ``any93x640x640/diffusion_pytorch_model.safetensors`` chosen in a file list."""
    return (path.parent / "config.json").is_file() and _folder_weight_files(path.parent) == [path]


def _read_folder(path: Path, device) -> Checkpoint:
    files = _folder_weight_files(path)
    if files is None:
        for sub in ("model", "ema.pt"):
            if (path / sub).exists():
                return read_checkpoint(path / sub, device=device)
        raise CheckpointError(
            f"{path}: no weights found; expected model.safetensors, a *.safetensors.index.json, "
            "a model/ subfolder or ema.pt"
        )
    if files[0].suffix == ".safetensors":
        state = LazyStateDict(files, device)
        metadata = dict(state.metadata)
    else:
        state, metadata = _read_pickle(files[0], device), {}
    config, class_name = _config_from_metadata(metadata)
    if (path / "config.json").is_file():
        config, class_name = read_hf_config(path / "config.json")
    return Checkpoint(path, strip_prefixes(state), config, class_name, metadata)


def _folder_weight_files(path: Path) -> list[Path] | None:
    for index in sorted(path.glob("*.safetensors.index.json")):
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return [path / shard for shard in shards]
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    found = sorted(path.glob("*.safetensors"))
    return found[:1] if len(found) == 1 else None


def read_json(path: Path) -> dict:
    """A JSON object file (config, shard index); a damaged one raises :class:`CheckpointError` naming it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged_file_error(path, str(err), "JSON file") from None
    if not isinstance(raw, dict):
        raise damaged_file_error(path, f"holds a {type(raw).__name__}, not an object", "JSON file")
    return raw


def read_hf_config(path: Path) -> tuple[dict, str | None]:
    """Constructor kwargs and class name from a Hugging Face ``config.json``."""
    raw = read_json(path)
    class_name = (raw.get("architectures") or [None])[0] or raw.get("_class_name") or raw.get("model_type")
    config = {k: v for k, v in raw.items() if k not in HF_BOOKKEEPING_KEYS}
    return config, class_name


def _config_from_metadata(metadata: Mapping[str, str]) -> tuple[dict | None, str | None]:
    config = metadata.get(METADATA_CONFIG)
    return (json.loads(config) if config else None), metadata.get(METADATA_CLASS)


def _read_pickle(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others for unsafe content
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        if not isinstance(err, pickle.UnpicklingError):  # cut off, empty or not a torch file at all
            raise damaged_file_error(path, reason, "PyTorch checkpoint") from None
        raise CheckpointError(
            f"{path.name}: cannot be read safely ({reason}). "
            "Only plain tensor state dicts are loaded from pickle files (weights_only=True); "
            "convert the file to .safetensors"
        ) from None
    return unwrap_nested(obj, path.name)


def unwrap_nested(obj, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``{"ema": {...}}``-style wrappers."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{name}: no state dict of tensors found (top-level keys: {list(obj)[:8]})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefixes(state_dict: StateDict) -> StateDict:
    """Remove wrapper prefixes shared by every key (repeatedly: ``module.model.`` too)."""
    keys = list(state_dict)
    mapping = {k: k for k in keys}
    changed = True
    while changed and mapping:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in mapping):
                mapping = {k[len(prefix):]: old for k, old in mapping.items()}
                changed = True
                break
    if all(k == old for k, old in mapping.items()):
        return state_dict
    if isinstance(state_dict, LazyStateDict):
        return state_dict.renamed(mapping)
    return {new: state_dict[old] for new, old in mapping.items()}


# ---------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------


def model_state_entries(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of ``module`` by state-dict name (no copies)."""
    return dict(module.state_dict(keep_vars=True))


@dataclass(frozen=True)
class Mismatch:
    """How a state dict differs from a module: sorted key names and (key, file shape, model shape)."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)


Hint = Callable[[Mismatch], "str | None"]  # the likely cause of a mismatch, in the caller's words


def compare_state_dict(module: nn.Module, state_dict: StateDict, *, optional: tuple[str, ...] = ()) -> Mismatch:
    """Names and shapes of ``state_dict`` against ``module`` (``optional``: entries a file may omit)."""
    ours = model_state_entries(module)
    return Mismatch(
        missing=sorted(k for k in set(ours) - set(state_dict) if k not in optional),
        unexpected=sorted(set(state_dict) - set(ours)),
        misshaped=sorted(
            (k, shape_of(state_dict, k), tuple(ours[k].shape))
            for k in set(ours) & set(state_dict)
            if shape_of(state_dict, k) != tuple(ours[k].shape)
        ),
    )


def check_state_dict(module: nn.Module, state_dict: StateDict, *, source: str, optional: tuple[str, ...] = (),
                     hint: Hint | None = None) -> None:
    """Raise :class:`CheckpointMismatchError` unless names and shapes match exactly.

    ``optional`` names model entries a file may omit (fixed tables the model computes); ``hint`` gives
    the likely cause for the message.
    """
    mismatch = compare_state_dict(module, state_dict, optional=optional)
    if mismatch:
        raise CheckpointMismatchError(_mismatch_message(type(module).__name__, source, mismatch, hint))


def _mismatch_message(target: str, source: str, mismatch: Mismatch, hint: Hint | None) -> str:
    lines = [f"{source}: does not match {target}."]
    cause = hint(mismatch) if hint is not None else None
    if cause:
        lines.append(f"  {cause}")

    def show(title, items):
        if items:
            shown = ", ".join(map(str, items[:8])) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {title} ({len(items)}): {shown}")

    show("missing keys", mismatch.missing)
    show("unexpected keys", mismatch.unexpected)
    show("mis-shaped (key, file, model)", mismatch.misshaped)
    return "\n".join(lines)


def load_into(
    module: nn.Module, state_dict: StateDict, *, source: str = "checkpoint", optional: tuple[str, ...] = (),
    hint: Hint | None = None,
) -> None:
    """Copy ``state_dict`` into ``module`` strictly, one tensor at a time (casting to the module's dtype).

    A module built on the meta device takes the file's tensors as they are instead (``assign``), so
    the weights are never held twice; it must then get every entry (no ``optional`` ones).
    """
    check_state_dict(module, state_dict, source=source, optional=optional, hint=hint)
    entries = model_state_entries(module)
    if any(t.is_meta for t in entries.values()):
        if any(name not in state_dict for name in entries):
            raise CheckpointError(f"{source}: a module on the meta device needs every entry from the file")
        module.load_state_dict({name: state_dict[name] for name in entries}, strict=True, assign=True)
        return
    with torch.no_grad():
        for name, target in entries.items():
            if name in state_dict:
                target.copy_(state_dict[name])


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    class_name: str | None = None,
    config: dict | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file atomically (temp file + rename) with class/config in its metadata."""
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    if class_name is not None:
        meta[METADATA_CLASS] = class_name
    if config is not None:
        meta[METADATA_CONFIG] = json.dumps(config)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    check_finite(tensors, f"refusing to write {path}")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def check_finite(tensors: Mapping[str, torch.Tensor], context: str) -> None:
    """Raise :class:`CheckpointError` if a floating tensor holds NaN or inf (weights that would be garbage)."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{context}: {len(bad)} tensor(s) hold NaN or inf values (e.g. {', '.join(bad[:3])}); "
            "the weights diverged or the source is damaged"
        )
