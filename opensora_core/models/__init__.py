"""Diffusion transformers with the official parameter names, built from official configs.

``model_class(class_name)`` gives our class for an official diffusion-model class name (``"STDiT3"``,
``"STDiT2"``, ``"STDiT"``); each class implements ``from_official_config(config)`` (the official
constructor kwargs exactly as the released ``config.json`` files and the reference manifests give
them; kernel switches such as ``enable_flash_attn`` are accepted and do not change the maths), has
``PRESETS`` (preset name -> config dataclass), ``ARCHITECTURE_FIELDS`` (the config fields its presets
differ in, for :func:`find_preset` and the loader) and works under ``with torch.device("meta")``.
``opensora_core.families.build_model`` builds any official class name (this table and the VAEs').

A new diffusion model: add its module here and one line to ``_CLASSES``.
"""

from __future__ import annotations

import importlib

from torch import nn

# official class name -> (module relative to this package, our class)
_CLASSES: dict[str, tuple[str, str]] = {
    "STDiT3": (".stdit3", "STDiT3"),
    "STDiT2": (".stdit2", "STDiT2"),
    "STDiT": (".stdit", "STDiT"),
    "OpenSoraT2V_v1_3": (".osp_v1_3", "OpenSoraT2V_v1_3"),
    "OpenSoraInpaint_v1_3": (".osp_v1_3", "OpenSoraInpaint_v1_3"),
    "MMDiTModel": (".mmdit", "MMDiTModel"),  # Open-Sora 2.0 (registry name "flux")
}


def class_names() -> list[str]:
    """Official class names of the diffusion models in this package."""
    return list(_CLASSES)


def model_class(class_name: str) -> type[nn.Module]:
    """Our class for an official diffusion-model class name."""
    if class_name not in _CLASSES:
        raise ValueError(f"unknown diffusion model class {class_name!r}; known: {', '.join(_CLASSES)}")
    module, attr = _CLASSES[class_name]
    return getattr(importlib.import_module(module, __package__), attr)


def presets() -> dict[str, tuple[str, object]]:
    """Every named preset: name (e.g. ``"STDiT3-XL/2"``) -> (official class name, config dataclass)."""
    table = {}
    for class_name in _CLASSES:
        for name, config in getattr(model_class(class_name), "PRESETS", {}).items():
            table[name] = (class_name, config)
    return table


def build_preset(name: str, *, device=None, dtype=None, operations=nn, **overrides) -> nn.Module:
    """Build a named preset, optionally overriding config fields (e.g. ``depth=2``)."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(table)}")
    class_name, _ = table[name]
    return model_class(class_name).from_preset(name, device=device, dtype=dtype, operations=operations, **overrides)


def architecture_fields(class_name: str) -> tuple[str, ...]:
    """Config fields that decide the architecture of ``class_name`` (its ``ARCHITECTURE_FIELDS``)."""
    cls = model_class(class_name)
    fields = getattr(cls, "ARCHITECTURE_FIELDS", None)
    if not fields:
        raise TypeError(f"{cls.__name__} declares no ARCHITECTURE_FIELDS (the config fields its presets differ in)")
    return fields


def find_preset(class_name: str, config: dict) -> str | None:
    """Name of the preset whose architecture (the class's ``ARCHITECTURE_FIELDS``) equals ``config``, or None."""
    cls, fields = model_class(class_name), architecture_fields(class_name)
    wanted = cls.CONFIG(**{k: v for k, v in config.items() if k in cls.CONFIG.__dataclass_fields__})
    for name, preset in cls.PRESETS.items():
        if all(getattr(preset, f) == getattr(wanted, f) for f in fields):
            return name
    return None


__all__ = ["architecture_fields", "build_preset", "class_names", "find_preset", "model_class", "presets"]
