"""Test stand-in for ``comfy.cli_args``: the two settings the pack reads."""

from __future__ import annotations

import enum
from types import SimpleNamespace


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"


args = SimpleNamespace(preview_method=LatentPreviewMethod.Auto, disable_metadata=False)
