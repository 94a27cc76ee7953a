"""Official constructor kwargs and Hugging Face ``config.json`` files: what is bookkeeping, what is a switch.

Released ``config.json`` files carry Hugging Face bookkeeping next to the constructor kwargs, and the
official constructors take switches that pick kernels, parallelism or which parameters train. This module
is the one place that names them; :func:`config_from_official` builds a config dataclass from official
kwargs and rejects anything else by name, and :class:`OfficialConstructors` gives every model class (DiTs
and VAEs) the same ``from_official_config`` and ``from_preset``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

# Keys that Hugging Face writes into every config.json; they describe the file, not the model.
HF_BOOKKEEPING_KEYS = frozenset(
    {"architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path", "auto_map"}
)
DIFFUSERS_BOOKKEEPING_PREFIX = "_"  # diffusers' config.json keys (_class_name, _diffusers_version)
# Official switches that pick kernels, parallelism or which parameters train; none changes the maths.
# Each class keeps the ones its official constructor has as config fields and ignores the other spellings.
KERNEL_AND_TRAINING_FLAGS = frozenset(
    {
        "enable_flash_attn",
        "enable_flashattn",
        "enable_layernorm_kernel",
        "enable_sequence_parallelism",
        "only_train_temporal",
        "freeze_y_embedder",
        "skip_y_embedder",
        "freeze",
        "no_temporal_pos_emb",
    }
)

ConfigT = TypeVar("ConfigT")


def is_bookkeeping(key: str) -> bool:
    """A key that describes the file, not the model: Hugging Face's (:data:`HF_BOOKKEEPING_KEYS`) or a diffusers
    ``_``-prefixed one (``_class_name``, ``_diffusers_version``)."""
    return key in HF_BOOKKEEPING_KEYS or key.startswith(DIFFUSERS_BOOKKEEPING_PREFIX)


def config_from_official(config_cls: type[ConfigT], official: Mapping[str, Any], class_name: str, *,
                         ignored: Mapping[str, str] | Collection[str] = ()) -> ConfigT:
    """Build ``config_cls`` from official constructor kwargs; JSON lists become tuples.

    Bookkeeping keys (:func:`is_bookkeeping`), the kernel/training flags and the keys in ``ignored`` (official
    arguments that change no weight and no maths, e.g. training-only ones; a mapping key -> why, or names) are
    accepted and dropped; any other key that is not a field of ``config_cls`` raises ``ValueError`` naming it.
    """
    fields = {f.name for f in dataclasses.fields(config_cls)}
    accepted = fields | KERNEL_AND_TRAINING_FLAGS | set(ignored)
    unknown = sorted(k for k in official if k not in accepted and not is_bookkeeping(k))
    if unknown:
        raise ValueError(
            f"{class_name}: unknown config key(s) {', '.join(map(repr, unknown))}. Pass the official {class_name} "
            f"constructor kwargs ({', '.join(sorted(fields))}); remove or rename the unknown key(s)."
        )
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in official.items() if k in fields})


class OfficialConstructors:
    """``from_official_config`` and ``from_preset`` for a model class with ``CONFIG`` (its config dataclass),
    ``PRESETS`` (name -> config), ``OFFICIAL_NAME`` and a constructor ``cls(config, *, device, dtype,
    operations)``. ``IGNORED_KWARGS`` names official arguments that change nothing (key -> why); a class
    with more rules (a ``type`` key to check, RGB-only channels) extends :meth:`config_from_kwargs`."""

    CONFIG: ClassVar[type]
    PRESETS: ClassVar[Mapping[str, Any]]
    OFFICIAL_NAME: ClassVar[str]
    IGNORED_KWARGS: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def config_from_kwargs(cls, config: Mapping[str, Any]) -> Any:
        """The config dataclass of official constructor kwargs (see :func:`config_from_official`)."""
        return config_from_official(cls.CONFIG, config, cls.OFFICIAL_NAME, ignored=cls.IGNORED_KWARGS)

    @classmethod
    def from_official_config(cls, config: Mapping[str, Any], *, device=None, dtype=None, operations=nn):
        """Build from the official constructor kwargs (a released ``config.json`` or a case's
        ``constructor_kwargs``); an unknown key raises ``ValueError`` naming it."""
        return cls(cls.config_from_kwargs(config), device=device, dtype=dtype, operations=operations)

    @classmethod
    def from_preset(cls, name: str, *, device=None, dtype=None, operations=nn, **overrides):
        """Build a named preset (``PRESETS``), optionally overriding config fields (e.g. ``depth=2``)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.OFFICIAL_NAME} preset {name!r}; known: {', '.join(cls.PRESETS)}")
        config = dataclasses.replace(cls.PRESETS[name], **overrides)
        return cls(config, device=device, dtype=dtype, operations=operations)


__all__ = [
    "DIFFUSERS_BOOKKEEPING_PREFIX",
    "HF_BOOKKEEPING_KEYS",
    "KERNEL_AND_TRAINING_FLAGS",
    "OfficialConstructors",
    "config_from_official",
    "is_bookkeeping",
]
