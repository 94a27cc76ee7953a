"""Model classes with the official parameter names, built from official configs.

``build_model(class_name, config)`` takes the official class name (``"STDiT3"``,
``"STDiT2"``, ``"STDiT"``, ``"VideoAutoencoderPipeline"``, ``"VideoAutoencoderKL"``,
``"diffusers.AutoencoderKL"``) and the official constructor kwargs exactly as the
released ``config.json`` files and the reference manifests give them. Each class
implements ``from_official_config(config)``; kernel switches such as
``enable_flash_attn`` are accepted and do not change the maths. Works under
``with torch.device("meta")``.
"""

from __future__ import annotations

import importlib

from torch import nn

# official class name -> (module relative to this package, our class)
_CLASSES: dict[str, tuple[str, str]] = {
    "STDiT3": (".stdit3", "STDiT3"),
    "STDiT2": (".stdit2", "STDiT2"),
    "STDiT": (".stdit", "STDiT"),
    "VideoAutoencoderPipeline": ("..vae.pipeline", "VideoAutoencoderPipeline"),
    "VideoAutoencoderKL": ("..vae.pipeline", "VideoAutoencoderKL"),
    "diffusers.AutoencoderKL": ("..vae.autoencoder_kl", "AutoencoderKL"),
    "AutoencoderKL": ("..vae.autoencoder_kl", "AutoencoderKL"),
    "MMDiTModel": (".mmdit", "MMDiTModel"),  # Open-Sora 2.0 (registry name "flux")
}


def model_class(class_name: str) -> type[nn.Module]:
    """Our class for an official class name."""
    if class_name not in _CLASSES:
        raise ValueError(f"unknown model class {class_name!r}; known: {', '.join(_CLASSES)}")
    module, attr = _CLASSES[class_name]
    return getattr(importlib.import_module(module, __package__), attr)


def build_model(class_name: str, config: dict) -> nn.Module:
    """Build ``class_name`` from official constructor kwargs (``config``)."""
    return model_class(class_name).from_official_config(dict(config))


# official class names whose modules define a ``PRESETS`` table (preset name -> config dataclass)
_PRESET_CLASSES = ("STDiT3", "STDiT2", "STDiT")


def presets() -> dict[str, tuple[str, object]]:
    """Every named preset: name (e.g. ``"STDiT3-XL/2"``) -> (official class name, config dataclass)."""
    table = {}
    for class_name in _PRESET_CLASSES:
        for name, config in model_class(class_name).PRESETS.items():
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


__all__ = ["ARCHITECTURE_FIELDS", "build_model", "build_preset", "find_preset", "model_class", "presets"]
