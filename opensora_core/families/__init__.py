"""Model families: every released system the pack runs, as typed declarations in one registry.

:mod:`.registry` holds the types (:class:`Family`, :class:`FileKind`, :class:`ModelKind`, :class:`VAEKind`,
:class:`Sampler`, :class:`Defaults`, ...) and the lookups (:func:`detect`, :func:`by_name`,
:func:`family_of`, :func:`build_model`). Each family module builds its declarations and registers
them when imported; importing this package imports every family module, so the registry is complete
for anyone who imports it.

A new family: add ``families/<name>.py`` that builds a :class:`Family` (and its file kinds) and calls
:func:`register`, and import it below. See docs/architecture.md.
"""

# registration order = detection order
from . import common, opensora_v1, open_sora_plan, opensora_v2  # noqa: F401, I001
from .registry import (
    Conditioning,
    Defaults,
    Detected,
    Family,
    FileKind,
    ModelKind,
    PromptSettings,
    Role,
    Sampler,
    TextEncoder,
    TextFile,
    Training,
    VAEKind,
    build_model,
    by_name,
    by_release,
    describe,
    detect,
    expect,
    families,
    families_using,
    families_with_geometry,
    family_of,
    fix_for,
    for_class,
    kinds,
    load_t5_text,
    official_class,
    register,
    register_kind,
    releases_text,
    score_phrase_prompt,
)

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
    "families_with_geometry",
    "family_of",
    "fix_for",
    "for_class",
    "kinds",
    "load_t5_text",
    "official_class",
    "register",
    "register_kind",
    "releases_text",
    "score_phrase_prompt",
]
