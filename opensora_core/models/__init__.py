"""Diffusion transformers with the official parameter names, built from official configs.

``model_class(class_name)`` gives our class for an official diffusion-model class name (``"STDiT3"``,
``"STDiT2"``, ``"STDiT"``); each class implements ``from_official_config(config)`` (the official
constructor kwargs exactly as the released ``config.json`` files and the reference manifests give
them; kernel switches such as ``enable_flash_attn`` are accepted and do not change the maths), has
``PRESETS`` (preset name -> config dataclass) and works under ``with torch.device("meta")``.
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


# Config fields that decide the architecture (keys and shapes); flags and dropout rates do not.
ARCHITECTURE_FIELDS = (
    "input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
    "pred_sigma", "caption_channels", "model_max_length", "qk_norm", "space_scale", "time_scale",
)


def find_preset(class_name: str, config: dict) -> str | None:
    """Name of the preset whose architecture equals ``config`` (official kwargs), or None."""
    cls = model_class(class_name)
    if not hasattr(cls, "PRESETS"):
        return None
    wanted = cls.CONFIG(**{k: v for k, v in config.items() if k in cls.CONFIG.__dataclass_fields__})
    for name, preset in cls.PRESETS.items():
        if all(getattr(preset, f, None) == getattr(wanted, f, None) for f in ARCHITECTURE_FIELDS):
            return name
    return None


__all__ = ["ARCHITECTURE_FIELDS", "build_preset", "class_names", "find_preset", "model_class", "presets"]
