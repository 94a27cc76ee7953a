"""Seeds for everything random in training, derived from (run seed, purpose, counters).

Every draw of a training step (timesteps, noise, masks, caption dropout) comes from generators
seeded with :func:`mix_seed` of the run seed, the micro-step and the process index, so a resumed run
repeats an uninterrupted one exactly and no two processes share noise.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch


def mix_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any mix of ints and strings (the same on every machine and run)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class StepRandomness:
    """Generators of one micro-step: ``python`` for masks, ``torch`` (on the compute device) for the rest."""

    seed: int
    python: random.Random
    torch: torch.Generator

    @classmethod
    def for_step(cls, seed: int, micro_step: int, process: int, device: torch.device | str) -> StepRandomness:
        base = mix_seed(seed, "step", micro_step, process)
        generator = torch.Generator(device=device)
        generator.manual_seed(base)
        return cls(base, random.Random(base), generator)

    def seed_global(self) -> None:
        """Seed torch's global RNG (all devices) from this step: the model's caption dropout draws from it."""
        torch.manual_seed(mix_seed(self.seed, "global"))


__all__ = ["StepRandomness", "mix_seed"]
