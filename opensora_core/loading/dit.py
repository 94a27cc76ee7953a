"""Loading a diffusion transformer: read the file, detect its kind, build the model, load it strictly.

The official constructor kwargs come, in this order, from

1. the keys and shapes (``config_from_shapes`` of the model class: widths, depth, patch, caption size, and
   the head count when a q/k norm or RoPE table shows it);
2. the config stored with the weights (``config.json`` of a Hugging Face folder, or the metadata our
   trainer writes);
3. the caller (``preset`` and ``config_overrides``);
4. a preset of the model class: the one the caller or the family's released-file table names, else the
   presets whose shape-read architecture equals the file's, for a value they all agree on;
5. for values no tensor shows (``input_sq_size``, the v1.0 table scales), the class's
   ``UNREADABLE_DEFAULTS`` (what every released config sets).

An architecture value still unknown after that (the heads of a non-released v1.0 size, the latent size of
a renamed v1.0 ``.pth`` file) is an error that names the value and how to give it; nothing is guessed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import (
    Checkpoint,
    CheckpointError,
    Mismatch,
    StateDict,
    load_into,
    model_state_entries,
    read_checkpoint,
    shape_of,
)
from ..families import Family, ModelKind, describe, detect, expect, family_of, fix_for, for_class, kinds
from ..models import find_preset
from ..models.fp8 import Fp8Operations, load_streaming, scale_keys

log = logging.getLogger("opensora")

# Values that decide the model's keys and shapes; loading cannot go on without them (a class may name its own,
# ``REQUIRED_FIELDS``).
REQUIRED_FIELDS = ("num_heads", "input_size")


@dataclass
class LoadedModel:
    model: nn.Module
    class_name: str
    config: dict  # the official constructor kwargs the model was built with
    preset: str | None
    source: Path

    @property
    def family(self) -> Family:
        return family_of(self.model)


def dit_kinds() -> list[ModelKind]:
    return [kind for kind in kinds("diffusion") if isinstance(kind, ModelKind)]


def infer_dit_config(state_dict: StateDict, *, preset: str | None = None, name: str = "",
                     source: str = "checkpoint") -> tuple[str, dict]:
    """(official class name, official constructor kwargs) of a bare state dict: shapes, then presets.

    ``preset`` names the preset to complete from; ``name`` is the file name (looked up in the family's
    table of released files). Raises :class:`CheckpointError` for a value that stays unknown.
    """
    kind = expect(state_dict, dit_kinds(), source).kind
    config = kind.cls.config_from_shapes(set(state_dict), lambda key: shape_of(state_dict, key))
    config = complete_config(kind, config, preset=preset or kind.released_files.get(name), source=source)
    _check_known(kind, config, source)
    return kind.class_name, config


def read_dit_config(ckpt: Checkpoint, *, class_name: str | None = None, preset: str | None = None,
                    overrides: dict | None = None) -> tuple[ModelKind, dict]:
    """The kind and the official constructor kwargs of a read checkpoint (every step of the module docstring)."""
    source = str(ckpt.path)
    kind = expect(ckpt.state_dict, dit_kinds(), source, class_name=ckpt.class_name).kind
    if class_name is not None and class_name != kind.class_name:
        raise CheckpointError(f"{source}: you chose {class_name}, but the file holds {describe(kind)}; {fix_for(kind)}")
    config = kind.cls.config_from_shapes(set(ckpt.state_dict), lambda key: shape_of(ckpt.state_dict, key))
    saved = {k: v for k, v in (ckpt.config or {}).items() if k in config}
    config.update({**saved, **(overrides or {})})
    config = complete_config(kind, config, preset=preset or kind.released_files.get(ckpt.path.name), source=source)
    _check_known(kind, config, source)
    return kind, config


def complete_config(kind: ModelKind, config: dict, *, preset: str | None, source: str) -> dict:
    """Fill the values the shapes left as None (steps 4 and 5 of the module docstring)."""
    cls = kind.cls
    if preset is not None and preset not in cls.PRESETS:
        known = ", ".join(cls.PRESETS)
        raise CheckpointError(f"{source}: {preset!r} is not a {kind.class_name} preset; known: {known}")
    chosen = [cls.PRESETS[preset]] if preset is not None else _presets_like(cls, config)
    for key in [k for k, v in config.items() if v is None]:
        values = [_plain(getattr(p, key)) for p in chosen]
        if values and all(v == values[0] for v in values):
            config[key] = values[0]
        elif key in cls.UNREADABLE_DEFAULTS:
            config[key] = cls.UNREADABLE_DEFAULTS[key]
    return config


def _presets_like(cls, config: dict) -> list:
    """Presets whose architecture equals every value the shapes tell."""
    known = {k: v for k, v in config.items() if k in cls.ARCHITECTURE_FIELDS and v is not None}
    return [p for p in cls.PRESETS.values() if all(_plain(getattr(p, k, None)) == _plain(v) for k, v in known.items())]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _check_known(kind: ModelKind, config: dict, source: str) -> None:
    required = getattr(kind.cls, "REQUIRED_FIELDS", REQUIRED_FIELDS)
    unknown = [k for k in required if k in config and config[k] is None]
    if unknown:
        presets = ", ".join(kind.cls.PRESETS)
        raise CheckpointError(
            f"{source}: this {kind.class_name} file does not store its {' and '.join(unknown)} (its shapes fit several "
            f"configurations and it has no saved config); name the preset it was built with ({presets}: "
            f"load_dit(preset=...), opensora-generate --preset) or pass {', '.join(unknown)} in the config"
        )


def load_dit(
    path: str | os.PathLike,
    *,
    class_name: str | None = None,
    preset: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config_overrides: dict | None = None,
    fp8: bool = False,
    operations=nn,
) -> LoadedModel:
    """Read, detect, build and strictly load a diffusion transformer of any registered family.

    ``fp8``: store the Linear weights as float8 e4m3fn with a per-layer scale and compute in ``dtype``
    (:mod:`opensora_core.models.fp8`; for model kinds that declare ``fp8_weights``); a high-precision file is
    quantised while it loads. A file of fp8 weights with their scales (a kind with ``stores_fp8``) always
    loads that way. A model whose every entry is in the file is built on the meta device and takes the
    file's tensors, so the weights are held once and never in float32 on the way.
    ``operations`` builds the Linear/Conv layers of a high-precision model (default :mod:`torch.nn`; a ComfyUI
    ``comfy.ops`` class for the native MODEL, whose layers cast their weights where used when partially loaded).
    """
    ckpt = read_checkpoint(path, device="cpu")
    kind, config = read_dit_config(ckpt, class_name=class_name, preset=preset, overrides=config_overrides)
    source = str(ckpt.path)
    if kind.stores_fp8 and not fp8:
        log.info("%s holds fp8 weights with their scales: loaded as fp8 weights computing in %s", source, dtype)
    fp8 = fp8 or kind.stores_fp8
    if fp8 and not kind.fp8_weights:
        raise CheckpointError(f"{source}: fp8 weights are not available for {describe(kind)}; load it in bf16/fp16")
    if fp8 and operations is not nn:
        raise ValueError("fp8 weights bring their own layers: load with operations=torch.nn, or without fp8")
    model = _build(kind, config, dtype=dtype, device=device, fp8=fp8, operations=operations)
    if fp8:
        load_streaming(model, ckpt.state_dict, source=source)
    else:
        load_dit_weights(model, ckpt.state_dict, source=source)
    model = model.to(device=device, dtype=dtype) if not fp8 else model
    model.eval().requires_grad_(False)
    return LoadedModel(model, kind.class_name, config, find_preset(kind.class_name, config), ckpt.path)


def _build(kind: ModelKind, config: dict, *, dtype: torch.dtype, device, fp8: bool, operations=nn) -> nn.Module:
    """The model to load into: fp8 layers on ``device``; on the meta device when the file gives every entry
    (no optional keys, no tables the model computes); else built on ``device`` and cast."""
    if fp8:
        with torch.device(device):
            return kind.cls.from_official_config(config, dtype=dtype, operations=Fp8Operations)
    if not kind.cls.OPTIONAL_KEYS:
        with torch.device("meta"):
            model = kind.cls.from_official_config(config, dtype=dtype, operations=operations)
        if len(model_state_entries(model)) == len([*model.parameters(), *model.buffers()]):
            return model
    with torch.device(device):
        return kind.cls.from_official_config(config, operations=operations).to(dtype=dtype)


def load_dit_weights(model: nn.Module, state_dict: StateDict, *, source: str = "checkpoint") -> None:
    """Strict load into a built diffusion model (one with fp8 layers quantises on the way); a mismatch names
    its likely cause."""
    kind = family_of(model).model
    if scale_keys(model):
        load_streaming(model, state_dict, source=source)
        return
    load_into(model, state_dict, source=source, optional=kind.cls.OPTIONAL_KEYS, hint=_hint(state_dict, kind))


def _hint(state_dict: StateDict, kind: ModelKind):
    """The likely cause of a mismatch: another kind of file, another caption length, another size."""

    def hint(mismatch: Mismatch) -> str | None:
        found = detect(state_dict)
        if found is not None and found.kind is not kind:
            return f"This file holds {describe(found)}: {fix_for(found)}."
        if any(key == getattr(kind.cls, "CAPTION_TABLE", None) for key, *_ in mismatch.misshaped):
            return "The caption length (model_max_length) differs: the file was trained for another T5 length."
        if mismatch.misshaped:
            return "Same family, different size: pick the preset/config that matches the file."
        return None

    return hint


def model_family(path: str | os.PathLike) -> Family:
    """The family of a diffusion-model file, from its header (no weights are loaded)."""
    ckpt = read_checkpoint(path)
    kind = expect(ckpt.state_dict, dit_kinds(), str(ckpt.path), class_name=ckpt.class_name).kind
    return for_class(kind.class_name)


__all__ = [
    "LoadedModel",
    "REQUIRED_FIELDS",
    "complete_config",
    "dit_kinds",
    "infer_dit_config",
    "load_dit",
    "load_dit_weights",
    "model_family",
    "read_dit_config",
]
