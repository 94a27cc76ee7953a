"""Measure the bundled demo model on what a viewer sees, on seeds, positions and images the build never used.

    python -m opensora_train.demo_eval            # every figure demo/README.md quotes (minutes on a CPU)
    python -m opensora_train.demo_eval --quick    # a smaller sample of each check

Every video is made through the public path (``opensora_core.pipeline.generate`` with the demo's settings)
and measured frame by frame with :func:`opensora_train.synthetic.measure_frame`: how many objects stand out
from the background (a second blob, a smear or a colour fringe make a frame "not one object"), the object's
colour (nearest generator colour), its shape (area over bounding box with sub-pixel coverage: a drawn circle
fills ~0.785, a square ~1.0) and its centre, whose least-squares track gives the direction.

1. ``text_to_video``: every colour x shape x direction x background prompt of the vocabulary (three seed sets);
   frames that are not one object are counted by cause (a second blob, a smear, a colour fringe) and by
   colour/background pair (``describe_faults``), here and in every check below;
2. ``image_to_video``: held-out first frames (random colour, shape, size and a position that lets the motion
   fit); frame 0 of the *written MP4* against the image (PSNR), shape kept in every frame, direction; beside
   it ``vae_shapes``: the true clips those frames start through the VAE alone, what the workflow can at best keep;
3. ``extension``: image-to-video + one loop round with its own prompt, every turn (right->down, up->left ...;
   twice per seed set, three seed sets);
   each round's direction, one object throughout, the seam step against the steps inside the rounds;
4. ``stitching`` (first and last image of a held-out clip) and ``video_to_video`` (a held-out source clip,
   the prompt names the other shape: the shape must change, the motion and the colour must stay);
5. ``vae_synthetic`` / ``vae_pairs`` / ``vae_natural``: VAE v1.2 round trips of held-out clips (also per
   colour/background pair: a small VAE can leave one behind) and of natural photographs the VAE never saw
   (64x64 stills and panned pseudo-videos).

``tests/test_demo.py`` asserts what the shipped files reach on smaller samples of the same functions (the issue's targets
that are not reached yet are named there and in demo/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from opensora_core import demo as demo_files
from opensora_core import media
from opensora_core.pipeline import Components, generate

from . import synthetic
from .demo import SEEDS, SIZE, V2V_EDIT_RATIO, VOCABULARY, v2v_edit

HELD_OUT_SEED = 999  # the build uses SEEDS (0, 1); every held-out draw below starts here
# text-to-video's full measure draws every prompt with three held-out seed sets: one set's 64 videos moved by
# +-5 points of direction between sets
T2V_SEEDS = (HELD_OUT_SEED, 5000, 6000)
# the full measure samples extensions with three seed sets too (each: every turn twice, its own draws): one set's
# count of extensions with one object throughout was 15 of 16 in each on the shipped files (10 to 12 before their
# decoder stage)
EXTENSION_SEEDS = (HELD_OUT_SEED, 7000, 8000)
assert not set(T2V_SEEDS + EXTENSION_SEEDS) & set(SEEDS.values())  # never a seed the build used
FRAMES = 17
MIN_TRAVEL = 6.0  # pixels: a round that moves less than this has no direction a viewer would name
TURNS = [(a, b) for a in synthetic.DIRECTIONS for b in synthetic.DIRECTIONS
         if synthetic.DIRECTIONS[a][0] * synthetic.DIRECTIONS[b][0] + synthetic.DIRECTIONS[a][1] * synthetic.DIRECTIONS[b][1] == 0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two tensors in 0..1 (uint8 is scaled)."""
    a = a.float() / 255 if a.dtype == torch.uint8 else a.float()
    b = b.float() / 255 if b.dtype == torch.uint8 else b.float()
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))


def as_png(frames: torch.Tensor) -> torch.Tensor:
    """Frames as a user's PNG holds them: uint8, read back as 0..1 floats."""
    return media.to_uint8(frames).float() / 255


def written_mp4(frames: torch.Tensor, fps: float) -> torch.Tensor:
    """(T, H, W, 3) frames after writing them as the CLI and the nodes do (H.264 yuv420p) and reading back."""
    with tempfile.TemporaryDirectory() as folder:
        path = media.write_video(frames, Path(folder) / "video.mp4", fps)
        decoded, _ = media.read_frames(path)
    return decoded.float() / 255


# ---------------------------------------------------------------------------
# One video, as a viewer would describe it
# ---------------------------------------------------------------------------


@dataclass
class VideoCheck:
    """What one generated video shows against what its prompt asks for."""

    prompt: str
    wanted: dict  # shape, color, direction (and background) asked for
    direction: str | None
    travel: float  # pixels the centre moves (least-squares line, first to last frame)
    colors: list  # per frame (None: nothing there)
    fills: list  # per frame
    faults: list  # per frame: why it is not one object ("" when it is: FrameObjects.fault)
    backgrounds: list  # per frame
    extra: dict = field(default_factory=dict)

    @property
    def single(self) -> list[bool]:
        """Per frame: exactly one object."""
        return [not fault for fault in self.faults]

    @property
    def background(self) -> str | None:
        return max(set(self.backgrounds), key=self.backgrounds.count)

    @property
    def color(self) -> str | None:
        seen = [c for c in self.colors if c]
        return max(set(seen), key=seen.count) if seen else None

    @property
    def fill(self) -> float:
        values = [f for f in self.fills if not math.isnan(f)]
        return statistics.median(values) if values else float("nan")

    @property
    def shape(self) -> str | None:
        return _shape_of(self.fill)

    @property
    def shape_frames(self) -> float:
        """Share of frames whose own fill names the wanted shape (a square that stays a square: 1.0)."""
        return sum(_shape_of(f) == self.wanted["shape"] for f in self.fills) / len(self.fills)

    def right(self, what: str) -> bool:
        return getattr(self, what) == self.wanted[what]

    def summary(self) -> str:
        marks = " ".join(f"{k}{'+' if self.right(k) else '-'}" for k in ("direction", "color", "shape"))
        return (f"{marks} fill {self.fill:.2f} travel {self.travel:4.1f}px one-object {sum(self.single)}/"
                f"{len(self.single)}  '{self.prompt}'")


def _shape_of(fill: float) -> str | None:
    if math.isnan(fill):
        return None
    return "square" if fill >= synthetic.SQUARE_FILL else "circle" if fill <= synthetic.CIRCLE_FILL else None


def check_video(frames: torch.Tensor, prompt: str, wanted: dict, **extra) -> VideoCheck:
    seen = synthetic.measure_video(frames)
    track = torch.tensor([f.centre for f in seen])  # (T, 2), nan where nothing stands out
    return VideoCheck(prompt, wanted, synthetic.motion_direction(track, MIN_TRAVEL), _travel(track),
                      [f.color for f in seen], [f.fill for f in seen], [f.fault for f in seen],
                      [f.background for f in seen], extra)


def _travel(track: torch.Tensor) -> float:
    valid = ~torch.isnan(track).any(1)
    if valid.sum() < 2:
        return 0.0
    t = torch.arange(track.shape[0], dtype=torch.float32)[valid]
    points = track[valid]
    tc = t - t.mean()
    velocity = (tc[:, None] * (points - points.mean(0))).sum(0) / (tc**2).sum()
    return float(velocity.norm() * (t.max() - t.min()))


def _wanted(clip: synthetic.ShapeClip) -> dict:
    return {"shape": clip.shape, "color": clip.color, "direction": clip.direction, "background": clip.background}


# ---------------------------------------------------------------------------
# 1. Text-to-video
# ---------------------------------------------------------------------------


def vocabulary_clips() -> list[synthetic.ShapeClip]:
    """One clip description per prompt of the vocabulary (colour x shape x direction x background)."""
    return [synthetic.ShapeClip(shape, color, background, direction, (0.5, 0.5), 0.15, 0.0)
            for color in VOCABULARY["colors"] for shape in VOCABULARY["shapes"]
            for direction in synthetic.DIRECTIONS for background in VOCABULARY["backgrounds"]]


def balanced_clips(count: int = 16) -> list[synthetic.ShapeClip]:
    """``count`` (a multiple of 16) prompts in which every colour, shape, direction and background appears
    equally often, and every colour x shape, shape x direction and direction x background pair too."""
    colors, shapes, backgrounds = VOCABULARY["colors"], VOCABULARY["shapes"], VOCABULARY["backgrounds"]
    directions = list(synthetic.DIRECTIONS)
    return [synthetic.ShapeClip(shapes[(i // 4) % 2], colors[i % 4], backgrounds[(i + i // 8) % 2],
                                directions[(i + i // 4) % 4], (0.5, 0.5), 0.15, 0.0) for i in range(count)]


@torch.no_grad()
def text_to_video(components: Components, clips: Sequence[synthetic.ShapeClip] | None = None,
                  seed: int = HELD_OUT_SEED, batch: int = 16) -> list[VideoCheck]:
    """Every prompt once, in batches (each sample its own noise from ``seed``)."""
    clips = list(clips or vocabulary_clips())
    checks = []
    for start in range(0, len(clips), batch):
        part = clips[start : start + batch]
        spec = demo_files.demo_spec(prompts=[c.caption for c in part], seed=seed + start)
        result = generate(components, spec)
        for clip, frames in zip(part, result.frames, strict=True):
            checks.append(check_video(written_mp4(frames, spec.fps), clip.caption, _wanted(clip)))
    return checks


# ---------------------------------------------------------------------------
# 2. Image-to-video
# ---------------------------------------------------------------------------


def held_out_clips(count: int, seed: int = HELD_OUT_SEED, **vocabulary) -> list[synthetic.ShapeClip]:
    """Random clips of the vocabulary (any size, start and speed the generator draws) from a held-out seed."""
    rng = random.Random(seed)
    return [synthetic.random_clip(rng, FRAMES, **{**VOCABULARY, **vocabulary}) for _ in range(count)]


@torch.no_grad()
def image_to_video(components: Components, clips: Sequence[synthetic.ShapeClip], seed: int = HELD_OUT_SEED,
                   batch: int = 8) -> list[VideoCheck]:
    """Each clip's first frame (as a PNG holds it) + its caption; frame 0 of the written MP4 vs the image."""
    checks = []
    for start in range(0, len(clips), batch):
        part = list(clips[start : start + batch])
        images = [as_png(synthetic.render(c, 1, SIZE, SIZE)) for c in part]
        spec = demo_files.demo_spec(prompts=[c.caption for c in part], seed=seed + start,
                                    mask_strategy=[f"0,{i},0,0,1" for i in range(len(part))])
        result = generate(components, spec, images)
        for clip, image, frames in zip(part, images, result.frames, strict=True):
            video = written_mp4(frames, spec.fps)
            checks.append(check_video(video, clip.caption, _wanted(clip), frame0_psnr=psnr(video[0], image[0])))
    return checks


@torch.no_grad()
def shipped_reference(components: Components, seeds: Sequence[int] = (0, 1, 2)) -> list[float]:
    """The README command: the shipped reference image against frame 0 of the written MP4, per seed."""
    shipped = demo_files.load_demo()
    image = media.read_frames(shipped.reference)[0].float() / 255  # (1, H, W, 3)
    scores = []
    for seed in seeds:
        spec = demo_files.demo_spec(shipped, mask_strategy="0", seed=seed)
        scores.append(psnr(written_mp4(generate(components, spec, [image]).frames[0], spec.fps)[0], image[0]))
    return scores


# ---------------------------------------------------------------------------
# 3. Extension (loop rounds with their own prompts)
# ---------------------------------------------------------------------------


@dataclass
class LoopCheck:
    turn: tuple[str, str]
    rounds: list[VideoCheck]  # each round's own frames (round 2 starts at the seam frame)
    seam_step: float  # centre step from round 1's last frame to round 2's first (pixels)
    steps: list[float]  # centre steps inside the rounds
    frame0_psnr: float
    objects: int  # frames with exactly one object, of ...
    num_frames: int
    # round 2 again as a plain image-to-video from round 1's last frame (same prompt and seed): frames with one
    # object, and its frame 0 against that frame (dB); None unless asked for
    plain_objects: int | None = None
    plain_frame0_psnr: float | None = None

    @property
    def second_round_single(self) -> bool:
        return all(self.rounds[1].single)

    @property
    def normal_step(self) -> float:
        return statistics.median(self.steps) if self.steps else float("nan")

    @property
    def seam_ok(self) -> bool:
        """The seam is a step like the others: no larger than the largest step inside the rounds."""
        return self.seam_step <= max(self.steps, default=0.0) + 0.25

    @property
    def continues(self) -> bool:
        return (all(r.right("direction") for r in self.rounds) and self.seam_ok
                and self.objects == self.num_frames)


def loop_start(rng: random.Random, turn: tuple[str, str], radius: float, travel: float = 0.5) -> tuple[float, float]:
    """A start (x, y) from which both legs of ``turn`` fit in the frame, each up to ``travel`` long."""
    position = [0.0, 0.0]
    lo, hi = radius + 0.02, 1 - radius - 0.02
    for axis in (0, 1):
        moves = [synthetic.DIRECTIONS[d][axis] for d in turn if synthetic.DIRECTIONS[d][axis]]
        if not moves:
            position[axis] = rng.uniform(lo, hi)
        elif moves[0] > 0:
            position[axis] = rng.uniform(lo, max(lo, hi - travel))
        else:
            position[axis] = rng.uniform(min(hi, lo + travel), hi)
    return position[0], position[1]


def loop_clips(count_per_turn: int = 1, seed: int = HELD_OUT_SEED + 2) -> list[tuple[synthetic.ShapeClip, str]]:
    """(first round's clip, second direction) for every turn, held-out colours/shapes/sizes/starts."""
    rng = random.Random(seed)
    out = []
    for _ in range(count_per_turn):
        for turn in TURNS:
            radius = rng.uniform(0.13, 0.16)
            clip = synthetic.ShapeClip(rng.choice(VOCABULARY["shapes"]), rng.choice(VOCABULARY["colors"]),
                                       rng.choice(VOCABULARY["backgrounds"]), turn[0],
                                       loop_start(rng, turn, radius), radius, 0.0)
            out.append((clip, turn[1]))
    return out


@torch.no_grad()
def extension(components: Components, cases: Sequence[tuple[synthetic.ShapeClip, str]], seed: int = HELD_OUT_SEED,
              batch: int = 8, compare_image_to_video: bool = False) -> list[LoopCheck]:
    """Image-to-video of each clip's first frame, then one loop round captioned with the second direction.

    ``compare_image_to_video`` also samples each second round as a plain image-to-video from the first round's
    last frame (same prompt and seed): a loop round is given the previous round's last latent frame (four frames),
    image-to-video a single frame's latent, the only kind the demo DiT was trained to continue from.
    """
    checks = []
    for start in range(0, len(cases), batch):
        part = list(cases[start : start + batch])
        prompts, seconds, images = [], [], []
        for clip, second in part:
            then = synthetic.ShapeClip(clip.shape, clip.color, clip.background, second, clip.start, clip.radius, 0.0)
            prompts.append(f"|0|{clip.caption}|1|{then.caption}")
            seconds.append(then.caption)
            images.append(as_png(synthetic.render(clip, 1, SIZE, SIZE)))
        given = [f"0,{i},0,0,1" for i in range(len(part))]
        spec = demo_files.demo_spec(prompts=prompts, loops=2, seed=seed + start, mask_strategy=given)
        result = generate(components, spec, images)
        plain = [None] * len(part)
        if compare_image_to_video:
            lasts = [as_png(frames[FRAMES - 1 : FRAMES]) for frames in result.frames]
            plain_spec = demo_files.demo_spec(prompts=seconds, seed=seed + start, mask_strategy=given)
            plain = [(last, written_mp4(frames, plain_spec.fps))
                     for last, frames in zip(lasts, generate(components, plain_spec, lasts).frames, strict=True)]
        for (clip, second), image, frames, alone in zip(part, images, result.frames, plain, strict=True):
            check = _loop_check(written_mp4(frames, spec.fps), clip, second, image)
            if alone is not None:
                last, video = alone
                check.plain_objects = sum(f.single for f in synthetic.measure_video(video))
                check.plain_frame0_psnr = psnr(video[0], last[0])
            checks.append(check)
    return checks


def extension_sets(components: Components, seeds: Sequence[int] = EXTENSION_SEEDS) -> list[list[LoopCheck]]:
    """The full measure's extensions: per seed, every turn twice from that seed's own draws, sampled with it, each
    second round also as a plain image-to-video."""
    return [extension(components, loop_clips(2, seed=seed + 2), seed=seed, compare_image_to_video=True)
            for seed in seeds]


def _loop_check(video: torch.Tensor, clip: synthetic.ShapeClip, second: str, image: torch.Tensor) -> LoopCheck:
    seen = synthetic.measure_video(video)
    track = torch.tensor([f.centre for f in seen])  # (T, 2)
    steps = torch.nan_to_num((track[1:] - track[:-1]).norm(dim=-1), nan=float(SIZE)).tolist()
    seam = FRAMES - 1  # steps[seam]: round 1's last frame -> round 2's first new frame
    rounds = []
    for index, (direction, frames) in enumerate(((clip.direction, video[:FRAMES]), (second, video[FRAMES - 1 :]))):
        wanted = {**_wanted(clip), "direction": direction}
        rounds.append(check_video(frames, f"round {index + 1}: {direction}", wanted))
    return LoopCheck((clip.direction, second), rounds, steps[seam], steps[:seam] + steps[seam + 1 :],
                     psnr(video[0], image[0]), sum(f.single for f in seen), len(seen))


# ---------------------------------------------------------------------------
# 4. Stitching and video-to-video
# ---------------------------------------------------------------------------


@torch.no_grad()
def stitching(components: Components, clips: Sequence[synthetic.ShapeClip], seed: int = HELD_OUT_SEED) -> list[VideoCheck]:
    """First and last frame of each clip given (the stitching workflow's strategy): both kept, one object between."""
    checks = []
    for index, clip in enumerate(clips):
        frames = as_png(synthetic.render(clip, FRAMES, SIZE, SIZE))
        spec = demo_files.demo_spec(prompts=[clip.caption], seed=seed + index, mask_strategy=STITCH_STRATEGY)
        video = written_mp4(generate(components, spec, [frames[:1], frames[-1:]]).frames[0], spec.fps)
        checks.append(check_video(video, clip.caption, _wanted(clip), first_psnr=psnr(video[0], frames[0]),
                                  last_psnr=psnr(video[-1], frames[-1])))
    return checks


STITCH_STRATEGY = "0;0,1,0,-1,1"  # reference 0 at the first latent frame, reference 1 at the last
EDIT_STRATEGY = "0,0,0,0,5,{ratio}"  # the whole source video, edited with the ratio


@torch.no_grad()
def video_to_video(components: Components, clips: Sequence[synthetic.ShapeClip], edit_ratio: float,
                   seed: int = HELD_OUT_SEED) -> list[VideoCheck]:
    """Each source clip re-captioned by the demo's edit (:func:`~opensora_train.demo.v2v_edit`: the other shape):
    the shape must change, the motion and the colour must stay.

    ``extra``: the source's shape, and the mean distance (pixels) between the output's centre and the source's,
    frame by frame.
    """
    checks = []
    for index, clip in enumerate(clips):
        source = written_mp4(synthetic.render(clip, FRAMES, SIZE, SIZE), 8)  # the source as an MP4 holds it
        edited = v2v_edit(clip)
        spec = demo_files.demo_spec(prompts=[edited.caption], seed=seed + index,
                                    mask_strategy=EDIT_STRATEGY.format(ratio=edit_ratio))
        video = written_mp4(generate(components, spec, [source]).frames[0], spec.fps)
        ours = torch.tensor([f.centre for f in synthetic.measure_video(video)])
        theirs = torch.tensor([f.centre for f in synthetic.measure_video(source)])
        offset = float(torch.nan_to_num((ours - theirs).norm(dim=-1), nan=float(SIZE)).mean())
        checks.append(check_video(video, edited.caption, _wanted(edited), source_shape=clip.shape,
                                  track_offset=offset))
    return checks


# ---------------------------------------------------------------------------
# 5. The VAE: held-out synthetic clips and natural photographs
# ---------------------------------------------------------------------------


@torch.no_grad()
def round_trip(vae, frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) frames in 0..1 after encode (posterior mean) + decode by ``vae``, in the same layout."""
    decoded = vae.decode(vae.encode(media.to_model_range(frames)[None], sample=False), frames.shape[0])
    return media.from_model_range(decoded[0].float())


def vae_round_trip(vae, videos: Sequence[torch.Tensor]) -> list[float]:
    """PSNR of each (T, H, W, 3) video in 0..1 after a round trip through ``vae``."""
    return [psnr(round_trip(vae, frames), frames) for frames in videos]


def vae_shapes(vae, clips: Sequence[synthetic.ShapeClip], fps: float) -> list[VideoCheck]:
    """Each clip's whole true motion after a VAE round trip, written as an MP4 and checked against its caption:
    how well the VAE alone keeps a shape frame by frame (image-to-video decodes through the same VAE)."""
    return [check_video(written_mp4(round_trip(vae, synthetic.render(clip, FRAMES, SIZE, SIZE)), fps), clip.caption,
                        _wanted(clip)) for clip in clips]


def vae_synthetic(components: Components, count: int = 8) -> list[float]:
    return vae_round_trip(components.vae, [synthetic.render(c, FRAMES, SIZE, SIZE) for c in held_out_clips(count)])


WORST_PAIR_DB = 27.0  # a VAE whose worst colour/background pair is below this shows it in image-to-video


def vae_pairs(vae, per_shape: int = 3) -> dict[str, float]:
    """Mean round-trip PSNR per colour/background pair of the vocabulary (``per_shape`` held-out clips of each
    shape): a small VAE can leave one pair behind while its average looks fine."""
    pairs = {}
    for color in VOCABULARY["colors"]:
        for background in VOCABULARY["backgrounds"]:
            clips = [clip for shape in VOCABULARY["shapes"] for clip in held_out_clips(
                per_shape, seed=HELD_OUT_SEED + 5, colors=[color], backgrounds=[background], shapes=[shape])]
            scores = vae_round_trip(vae, [synthetic.render(c, FRAMES, SIZE, SIZE) for c in clips])
            pairs[f"{color} on {background}"] = statistics.mean(scores)
    return pairs


def vae_natural(components: Components) -> dict[str, list[float]]:
    """Held-out natural photographs (never trained on) as 64x64 stills and as 17-frame pan/zoom clips, and the
    same through :func:`latent_grid_reference` (``*_reference``): what the latent grid's resolution keeps."""
    from . import natural

    stills = natural.held_out_stills(SIZE)
    clips = natural.held_out_clips(SIZE, FRAMES)
    factor = components.vae.geometry.spatial_factor
    return {"stills": vae_round_trip(components.vae, stills), "clips": vae_round_trip(components.vae, clips),
            "stills_reference": [psnr(latent_grid_reference(v, factor), v) for v in stills],
            "clips_reference": [psnr(latent_grid_reference(v, factor), v) for v in clips]}


def latent_grid_reference(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """(T, H, W, 3) in 0..1 averaged over ``factor`` x ``factor`` blocks and upsampled again (bicubic).

    Three numbers per block of the VAE's latent grid, per frame; the VAE keeps four per block per four frames.
    A learned decoder does better than bicubic on edges, so this is a yardstick for what footage at this
    latent resolution can come back as, not a bound.
    """
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    small = torch.nn.functional.avg_pool2d(x, factor)
    up = torch.nn.functional.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)
    return up.clamp(0, 1).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def describe_pairs(pairs: dict[str, float]) -> str:
    worst = min(pairs, key=pairs.get)
    line = f"per colour/background pair: worst {worst} {pairs[worst]:.1f} dB, best {max(pairs.values()):.1f} dB"
    if pairs[worst] < WORST_PAIR_DB:
        line += (f" (below {WORST_PAIR_DB:.0f} dB: this VAE keeps {worst} poorly, image-to-video of it will be off; "
                 "demo/README.md, 'Why the rebuilt spatial stage differs')")
    return line


def _share(flags: Sequence[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} ({100 * sum(flags) / max(len(flags), 1):.0f} %)"


def _fills(checks: Sequence[VideoCheck], shape: str) -> str:
    values = sorted(c.fill for c in checks if c.wanted["shape"] == shape and not math.isnan(c.fill))
    if not values:
        return "-"
    q = [values[int(p * (len(values) - 1))] for p in (0.0, 0.1, 0.5, 0.9, 1.0)]
    return "min {:.2f} p10 {:.2f} median {:.2f} p90 {:.2f} max {:.2f}".format(*q)


FAULT_NAMES = {"blobs": "a second blob", "smear": "a faint smear", "fringe": "a colour fringe", "none": "nothing drawn"}


def describe_faults(checks: Sequence[VideoCheck]) -> str:
    """Why frames are not one object, and the colour/background pair that has most of them (the share of its frames)."""
    faults = Counter(f for c in checks for f in c.faults if f)
    causes = ", ".join(f"{FAULT_NAMES[k]} {n}" for k, n in faults.most_common())
    pairs: dict[str, list[bool]] = {}
    for c in checks:
        pairs.setdefault(f"{c.wanted['color']} on {c.wanted['background']}", []).extend(c.single)
    worst = min(pairs, key=lambda k: sum(pairs[k]) / len(pairs[k]))
    bad = pairs[worst].count(False)
    total = sum(faults.values())
    return (f"{total} frame{'' if total == 1 else 's'} ({causes}); most in {worst}: {bad}/{len(pairs[worst])} "
            f"({100 * bad / len(pairs[worst]):.0f} %) of its frames")


def describe_checks(name: str, checks: Sequence[VideoCheck], verbose: bool = False) -> list[str]:
    frames = [s for c in checks for s in c.single]
    lines = [f"{name}: {len(checks)} videos: direction {_share([c.right('direction') for c in checks])}, "
             f"colour {_share([c.right('color') for c in checks])}, shape {_share([c.right('shape') for c in checks])}, "
             f"background {_share([c.right('background') for c in checks])}, one object in {_share(frames)} of frames",
             f"    fill of squares: {_fills(checks, 'square')}",
             f"    fill of circles: {_fills(checks, 'circle')}"]
    if not all(frames):
        lines.append(f"    not one object: {describe_faults(checks)}")
    if verbose:
        lines += [f"      {c.summary()}" for c in checks if not all(c.right(k) for k in ("direction", "color", "shape"))]
    return lines


def report(components: Components | None = None, quick: bool = False, verbose: bool = False,
           out=print) -> dict:
    """Run every check, handing each line to ``out`` as soon as it is measured; returns the figures."""
    components = components or demo_files.load_components()
    figures: dict = {}
    if quick:
        t2v = text_to_video(components, balanced_clips())
        _emit(out, describe_checks("1. text-to-video (16 prompts)", t2v, verbose))
    else:
        sets = [text_to_video(components, vocabulary_clips(), seed=seed) for seed in T2V_SEEDS]
        t2v = [check for checks in sets for check in checks]
        name = f"1. text-to-video (every prompt of the vocabulary, {len(sets)} seed sets)"
        _emit(out, describe_checks(name, t2v, verbose) + [
            describe_checks(f"    seed set {seed}", checks)[0] for seed, checks in zip(T2V_SEEDS, sets, strict=True)])
    i2v_clips = held_out_clips(8 if quick else 32, seed=HELD_OUT_SEED + 1)
    i2v = image_to_video(components, i2v_clips)
    first = [c.extra["frame0_psnr"] for c in i2v]
    through_vae = vae_shapes(components.vae, i2v_clips, demo_files.demo_spec().fps)
    _emit(out, describe_checks("2. image-to-video (held-out first frames)", i2v, verbose) + [
        f"    frame 0 of the MP4 vs the image: mean {statistics.mean(first):.1f} dB, min {min(first):.1f} dB, "
        f">= 25 dB: {_share([p >= 25 for p in first])}; shape kept in every frame: "
        f"{_share([c.shape_frames == 1.0 for c in i2v])} (the VAE alone, on the true clips these frames start: "
        f"{_share([c.shape_frames == 1.0 for c in through_vae])})"])
    shipped = shipped_reference(components)
    _emit(out, [f"    the shipped reference (README command), seeds 0-2: {', '.join(f'{p:.1f}' for p in shipped)} dB"])
    if quick:
        loops = extension(components, loop_clips(1))
        _emit(out, describe_loops(loops, verbose))
    else:
        loop_sets = extension_sets(components)
        loops = [check for checks in loop_sets for check in checks]
        _emit(out, describe_loops(loops, verbose, f"{len(loop_sets)} seed sets") + [
            f"    seed set {seed}: {loop_summary(checks)}"
            for seed, checks in zip(EXTENSION_SEEDS, loop_sets, strict=True)])
    stitch = stitching(components, held_out_clips(4 if quick else 8, seed=HELD_OUT_SEED + 3))
    _emit(out, describe_checks("4a. stitching (first and last frame given)", stitch, verbose) + [
        f"    first frame {statistics.mean(c.extra['first_psnr'] for c in stitch):.1f} dB, last frame "
        f"{statistics.mean(c.extra['last_psnr'] for c in stitch):.1f} dB (means)"])
    v2v = video_to_video(components, held_out_clips(4 if quick else 8, seed=HELD_OUT_SEED + 4), V2V_EDIT_RATIO)
    _emit(out, describe_checks(f"4b. video-to-video (shape edit, ratio {V2V_EDIT_RATIO})", v2v, verbose) + [
        f"    shape changed to the prompt's: {_share([c.right('shape') for c in v2v])}, colour kept "
        f"{_share([c.right('color') for c in v2v])}; motion kept (direction "
        f"{_share([c.right('direction') for c in v2v])}, centre within "
        f"{statistics.mean(c.extra['track_offset'] for c in v2v):.1f} px of the source's on average)"])
    synth = vae_synthetic(components)
    _emit(out, [f"5. VAE round trip: {len(synth)} held-out synthetic clips mean {statistics.mean(synth):.1f} dB "
                f"(min {min(synth):.1f})"])
    pairs = vae_pairs(components.vae, 1 if quick else 3)
    _emit(out, ["   " + describe_pairs(pairs)])
    try:
        nat = vae_natural(components)
    except ImportError as err:
        _emit(out, [f"   natural images: not measured ({err})"])
    else:
        grid = SIZE // components.vae.geometry.spatial_factor
        _emit(out, [f"   natural {key}: {len(nat[key])} held-out, mean {statistics.mean(nat[key]):.1f} dB, "
                    f"min {min(nat[key]):.1f} dB (the latent grid's {grid}x{grid} averages, bicubic: "
                    f"{statistics.mean(nat[key + '_reference']):.1f} dB)" for key in ("stills", "clips")])
        figures["vae_natural"] = nat
    figures.update(t2v=[asdict(c) for c in t2v], i2v=[asdict(c) for c in i2v],
                   i2v_through_vae=[asdict(c) for c in through_vae], shipped=shipped,
                   extension=[asdict(c) for c in loops], vae_synthetic=synth,
                   vae_pairs=pairs)
    return figures


def _emit(out, lines: list[str]) -> None:
    for line in lines:
        out(line)


def loop_summary(loops: Sequence[LoopCheck]) -> str:
    """Rounds as captioned, one object throughout, seams, and all three, over ``loops``."""
    return (f"{len(loops)} videos, every round as captioned "
            f"{_share([all(r.right('direction') for r in c.rounds) for c in loops])}, one object in every frame "
            f"{_share([c.objects == c.num_frames for c in loops])}, seam step <= largest inner step "
            f"{_share([c.seam_ok for c in loops])}, all three {_share([c.continues for c in loops])}")


def describe_loops(loops: Sequence[LoopCheck], verbose: bool = False, sets: str = "") -> list[str]:
    lines = [f"3. extension (i2v + 1 loop round, every turn{', ' + sets if sets else ''}): {loop_summary(loops)}",
             f"    seam step median {statistics.median(c.seam_step for c in loops):.2f} px, normal step median "
             f"{statistics.median(c.normal_step for c in loops):.2f} px; shape kept "
             f"{_share([all(r.right('shape') for r in c.rounds) for c in loops])}"]
    plain = [c for c in loops if c.plain_objects is not None]
    if plain:
        lines.append(f"    second round with one object in every frame: as a loop round "
                     f"{_share([c.second_round_single for c in plain])}, as image-to-video from the first round's "
                     f"last frame {_share([c.plain_objects == FRAMES for c in plain])} (its frame 0: min "
                     f"{min(c.plain_frame0_psnr for c in plain):.1f} dB)")
    if verbose:
        lines += [f"      {c.turn}: rounds {[r.direction for r in c.rounds]} seam {c.seam_step:.2f} max "
                  f"{max(c.steps):.2f} objects {c.objects}/{c.num_frames}" for c in loops if not c.continues]
    return lines



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opensora_train.demo_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller sample of every check")
    p.add_argument("--verbose", action="store_true", help="list every video that fails a check")
    p.add_argument("--json", type=Path, help="also write the per-video figures here")
    args = p.parse_args(argv)
    figures = report(quick=args.quick, verbose=args.verbose, out=lambda line: print(line, flush=True))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
