"""Measure the bundled demo model: is its output real video, not noise?

    python -m opensora_train.demo_eval          # prints the four figures (demo/README.md quotes them)

The demo tests (``tests/test_demo.py``) assert thresholds on the same functions:

a. ``vae_psnr``: VAE v1.2 round trip of held-out clips (seeds never used in training);
b. ``i2v_first_frame_psnr``: image-to-video keeps the given image as frame 0;
c. ``t2v_directions``: the shape moves in the captioned direction (centroid track);
d. ``loop_continuation``: an extension loop continues the motion across the seam.

Everything runs the public path (``opensora_core.pipeline.generate`` with the demo's settings).
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass

import torch

from opensora_core import demo as demo_files
from opensora_core import media
from opensora_core.pipeline import Components, generate

from . import synthetic
from .demo import SEEDS, SIZE, VOCABULARY

HELD_OUT_SEED = 999  # training used SEEDS (0, 1)
assert HELD_OUT_SEED not in SEEDS.values()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in 0..1."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def held_out_clips(count: int, num_frames: int = 17, seed: int = HELD_OUT_SEED) -> list[synthetic.ShapeClip]:
    rng = random.Random(seed)
    return [synthetic.random_clip(rng, num_frames, **VOCABULARY) for _ in range(count)]


@torch.no_grad()
def vae_psnr(components: Components, count: int = 8) -> list[float]:
    """(a) PSNR of each held-out 17-frame clip after encode (posterior mean) + decode."""
    vae = components.vae
    scores = []
    for clip in held_out_clips(count):
        frames = synthetic.render(clip, 17, SIZE, SIZE)  # (T, H, W, 3) in 0..1
        x = media.to_model_range(frames)[None]  # (1, 3, T, H, W) in -1..1 (the demo runs in fp32)
        decoded = vae.decode(vae.encode(x, sample=False), 17)
        scores.append(psnr(media.from_model_range(decoded[0].float()), frames))
    return scores


@torch.no_grad()
def i2v_first_frame_psnr(components: Components, count: int = 4) -> list[float]:
    """(b) PSNR between the given image and frame 0 of the image-to-video result."""
    scores = []
    for index, clip in enumerate(held_out_clips(count, seed=HELD_OUT_SEED + 1)):
        image = synthetic.render(clip, 1, SIZE, SIZE)
        spec = demo_files.demo_spec(prompts=[clip.caption], mask_strategy="0", seed=index)
        result = generate(components, spec, [image])
        scores.append(psnr(result.frames[0, 0], image[0]))
    return scores


@dataclass
class DirectionCheck:
    prompt: str
    wanted: str
    got: str | None
    travel: tuple[float, float]  # centroid displacement, first to last frame (pixels)


DIRECTION_PROMPTS = [
    synthetic.ShapeClip(shape, color, background, direction, (0.5, 0.5), 0.15, 0.0).caption
    for shape, color, background, direction in [
        ("circle", "red", "black", "right"), ("square", "green", "gray", "left"),
        ("circle", "blue", "gray", "up"), ("square", "yellow", "black", "down"),
        ("square", "red", "gray", "up"), ("circle", "yellow", "black", "left"),
        ("square", "blue", "black", "right"), ("circle", "green", "gray", "down"),
    ]
]


def captioned_direction(prompt: str) -> str:
    return next(d for d in synthetic.DIRECTIONS if f" {d} " in f" {prompt} ")


@torch.no_grad()
def t2v_directions(components: Components, prompts: list[str] = DIRECTION_PROMPTS, seed: int = 1) -> list[DirectionCheck]:
    """(c) Text-to-video: the direction the blob's centroid moves, per prompt (one batch)."""
    result = generate(components, demo_files.demo_spec(prompts=list(prompts), seed=seed))
    checks = []
    for prompt, frames in zip(prompts, result.frames, strict=True):
        track = synthetic.track_shape(frames)
        travel = torch.nan_to_num(track[-1] - track[0]).tolist()
        checks.append(DirectionCheck(prompt, captioned_direction(prompt), synthetic.motion_direction(track),
                                     (round(travel[0], 1), round(travel[1], 1))))
    return checks


@dataclass
class LoopCheck:
    directions: tuple[str, str]  # captioned direction of round 1 and round 2
    rounds: list[str | None]  # measured direction of each round's frames
    seam_step: float  # centroid step across the seam (pixels)
    median_step: float  # median centroid step inside the rounds (pixels)
    num_frames: int

    @property
    def continues(self) -> bool:
        """Each round moves as captioned and the seam step is a step like the others (no jump)."""
        return list(self.rounds) == list(self.directions) and self.seam_step <= 3 * max(self.median_step, 0.5)


LOOPS = [("right", "down", (0.15, 0.3)), ("down", "right", (0.3, 0.15)), ("left", "up", (0.85, 0.7))]


@torch.no_grad()
def loop_continuation(components: Components, first: str = "right", second: str = "down",
                      start: tuple[float, float] = (0.15, 0.3), seed: int = 0) -> LoopCheck:
    """(d) Image-to-video, then one extension round (official loop mode) with its own prompt.

    Round 2 starts from round 1's last latent frame; the shape must carry on from where it is,
    without a jump, and move as round 2's caption says. (A second round in the same direction
    would leave the 64-pixel frame, which no training clip shows, so the rounds turn.)
    """
    clip = synthetic.ShapeClip("circle", "red", "black", first, start, 0.12, 0.0)
    then = synthetic.ShapeClip("circle", "red", "black", second, start, 0.12, 0.0)
    spec = demo_files.demo_spec(prompts=[f"|0|{clip.caption}|1|{then.caption}"], mask_strategy="0", loops=2, seed=seed)
    frames = generate(components, spec, [synthetic.render(clip, 1, SIZE, SIZE)]).frames[0]
    track = synthetic.track_shape(frames)  # (T, 2)
    steps = torch.nan_to_num((track[1:] - track[:-1]).norm(dim=-1), nan=float(SIZE))
    seam = spec.num_frames - 1  # steps[seam]: round 1's last frame -> round 2's first (frame num_frames)
    inside = torch.cat([steps[:seam], steps[seam + 1 :]])
    rounds = [synthetic.motion_direction(track[: spec.num_frames]), synthetic.motion_direction(track[spec.num_frames :])]
    return LoopCheck((first, second), rounds, float(steps[seam]), float(inside.median()), frames.shape[0])


@torch.no_grad()
def shipped_i2v_first_frame_psnr(components: Components, seeds=(0, 1, 2)) -> list[float]:
    """(b) for the README command: the shipped reference image against frame 0, per seed."""
    shipped = demo_files.load_demo()
    image = media.read_frames(shipped.reference)[0].float() / 255  # (1, H, W, 3)
    return [psnr(generate(components, demo_files.demo_spec(shipped, mask_strategy="0", seed=seed), [image]).frames[0, 0],
                 image[0]) for seed in seeds]


def report(components: Components | None = None) -> str:
    components = components or demo_files.load_components()
    lines = []
    vae = vae_psnr(components)
    lines.append(f"(a) VAE round trip, {len(vae)} held-out clips: mean {sum(vae) / len(vae):.2f} dB, "
                 f"min {min(vae):.2f} dB")
    shipped = shipped_i2v_first_frame_psnr(components)
    lines.append(f"(b) image-to-video frame 0 vs the shipped reference image, seeds 0-2: "
                 f"{', '.join(f'{p:.2f}' for p in shipped)} dB")
    first = i2v_first_frame_psnr(components, 8)
    lines.append(f"    and vs {len(first)} held-out images: mean {sum(first) / len(first):.2f} dB, min {min(first):.2f} dB, "
                 f"{sum(p >= 25 for p in first)} of {len(first)} at >= 25 dB")
    checks = t2v_directions(components)
    right = sum(c.got == c.wanted for c in checks)
    lines.append(f"(c) text-to-video direction: {right} of {len(checks)} prompts")
    lines += [f"      {c.wanted:>5} -> {c.got or 'none':>5}  travel {c.travel}  '{c.prompt}'" for c in checks]
    for first_, second, start in LOOPS:
        for seed in (0, 1):
            loop = loop_continuation(components, first_, second, start, seed)
            lines.append(f"(d) loop {first_} then {second}, seed {seed}: {loop.num_frames} frames, rounds {loop.rounds}, "
                         f"seam step {loop.seam_step:.2f} px vs median {loop.median_step:.2f} px -> "
                         f"{'continues' if loop.continues else 'BREAKS'}")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.manual_seed(0)
    print(report())
    sys.exit(0)
