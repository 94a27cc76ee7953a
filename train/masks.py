"""Training masks over latent frames: which frames are generated and which are given as conditions.

Follows opensora/utils/train_utils.py ``MaskGenerator`` (v1.1.0 names ``mask_*``, v1.2.0 names
without the prefix, both accepted). Per sample one kind is drawn against the cumulative
``mask_ratios`` (in the order given; ``identity`` takes the rest when absent, as v1.2 does):

identity / mask_no       every frame generated
quarter_random           a random run of 1..T//4 frames is a condition
quarter_head / _tail     the first / last 1..T//4 frames
quarter_head_tail        that many frames at both ends
image_random             one random frame
image_head / _tail       the first / last frame (image-to-video / backward extension)
image_head_tail          first and last frame (interpolation between two images)
intepolate               every other frame, from frame 0 or 1 (official spelling; "interpolate" too)
random                   each frame a condition with a probability drawn in [0.1, 0.9]

Masks are bool (T,), True = generated. T <= 1 is never masked. Draws come from a ``random.Random``
(the official code uses Python's global ``random`` in the same order, so a generator seeded like it
reproduces its masks) plus a torch generator for ``random``. Two guards the official code lacks:
quarter kinds on 2-3 frames use length 1 (the official ``randint(1, 0)`` fails), and a mask that
would condition every frame keeps the last one generated (else its loss is 0/0).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping

import torch

from .config import ConfigError

log = logging.getLogger("opensora")

MASK_KINDS = (
    "identity", "quarter_random", "quarter_head", "quarter_tail", "quarter_head_tail",
    "image_random", "image_head", "image_tail", "image_head_tail", "random", "intepolate",
)
_ALIASES = {"mask_no": "identity", "interpolate": "intepolate"}  # v1.1 names take the "mask_" prefix


def canonical_kind(name: str) -> str | None:
    base = name.removeprefix("mask_") if name != "mask_no" else name
    base = _ALIASES.get(base, base)
    return base if base in MASK_KINDS else None


def parse_mask_ratios(ratios: Mapping[str, float], key: str = "mask_ratios") -> dict[str, float]:
    """Checked ``{kind: probability}`` in the given order, ``identity`` appended with the rest if absent."""
    parsed: dict[str, float] = {}
    for name, value in ratios.items():
        kind = canonical_kind(name)
        if kind is None:
            raise ConfigError(f"{key}.{name}", f"unknown mask kind; use one of {', '.join(MASK_KINDS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{key}.{name}", f"a probability in [0, 1] is needed, got {value!r}")
        if kind in parsed:
            raise ConfigError(f"{key}.{name}", f"{kind} is given twice")
        parsed[kind] = float(value)
    if "identity" not in parsed:
        parsed["identity"] = 1.0 - sum(parsed.values())
    total = sum(parsed.values())
    if parsed["identity"] < -1e-6 or not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigError(key, f"probabilities must sum to 1 (identity takes the rest), got {total:.4f}")
    return parsed


class MaskGenerator:
    """Draws training masks with the official rules (see the module docstring)."""

    def __init__(self, ratios: Mapping[str, float]) -> None:
        self.ratios = parse_mask_ratios(ratios)

    def pick_kind(self, rng: random.Random) -> str:
        u = rng.random()
        total = 0.0
        for kind, ratio in self.ratios.items():
            total += ratio
            if u < total:
                return kind
        return "identity"  # rounding left the cumulative sum just below 1

    def mask(self, num_frames: int, rng: random.Random, generator: torch.Generator | None = None) -> torch.Tensor:
        """One (T,) bool mask: True = generated frame, False = condition frame."""
        kind = self.pick_kind(rng)
        mask = torch.ones(num_frames, dtype=torch.bool)
        if num_frames <= 1 or kind == "identity":
            return mask
        _apply_kind(mask, kind, rng, generator)
        if not mask.any():
            mask[-1] = True
        return mask

    def masks(self, batch: int, num_frames: int, rng: random.Random, generator: torch.Generator | None = None):
        """(B, T) bool masks, one draw per sample in order (``get_masks``)."""
        return torch.stack([self.mask(num_frames, rng, generator) for _ in range(batch)])


def _apply_kind(mask: torch.Tensor, kind: str, rng: random.Random, generator: torch.Generator | None) -> None:
    T = mask.shape[0]
    longest = max(1, T // 4)
    if kind == "random":
        ratio = rng.uniform(0.1, 0.9)
        mask.copy_(torch.rand(T, generator=generator) > ratio)
        return
    if kind == "intepolate":
        mask[rng.randint(0, 1) :: 2] = False
        return
    size = rng.randint(1, longest) if kind.startswith("quarter") else 1
    where = kind.split("_", 1)[1]
    if where == "random":
        start = rng.randint(0, T - size)
        mask[start : start + size] = False
    if where in ("head", "head_tail"):
        mask[:size] = False
    if where in ("tail", "head_tail"):
        mask[-size:] = False


__all__ = ["MASK_KINDS", "MaskGenerator", "canonical_kind", "parse_mask_ratios"]
