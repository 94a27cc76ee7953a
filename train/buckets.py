"""Training buckets: which (frames, height, width) each clip is trained at, and its batch size.

Bucket config, as the official stage configs write it (TOML keys are strings)::

    {resolution: {num_frames: (keep_prob, batch_size)}}      e.g. {"240p": {"51": [0.5, 20], "1": [1.0, 297]}}

``keep_prob`` may be a pair (keep_prob, frame_prob) as in v1.2 (the frame entry itself is only
considered with probability frame_prob); ``batch_size`` 0 (the official ``None``) disables an entry.
Resolution names are those of the official tables (:mod:`opensora_core.geometry`) plus any custom
table from ``[data.resolutions]``.

Assignment follows opensora/datasets/bucket.py (``Bucket.get_bucket_id``, v1.1.0/v1.2.0): resolutions
from the largest pixel count down; a clip qualifies for one if H*W >= 0.8 * its pixel count. An image
(T = 1) takes the resolution's ``1`` entry with probability keep_prob. A video takes the largest frame
count t != 1 with T > t * frame_interval, then is kept with probability keep_prob; otherwise the next
smaller resolution is tried (never a smaller frame count at the same resolution). Each draw is
``numpy.random.default_rng(seed + bucket_id).random()`` with seed = sampler seed + epoch +
row * num_buckets, so assignments are reproducible per seed and epoch. The aspect ratio is the table
key closest to H/W. Each clip thus lands in a bucket no larger than itself (pixels within 0.8, frames
strictly fewer than it has).

A family whose ``Training`` declares its own tables and rule (Open-Sora 2.0: ``bucket_sizes``,
``bucket_rule = "v2"``, 2.0's ``opensora/datasets/bucket.py``) gets its resolutions ("256px", "768px", aspect keys
"W:H") and draws: one ``default_rng(seed)`` stream per clip, the largest t with T // frame_interval >= t, a lost
keep draw tries the next resolution, a (keep_prob, frame_prob) pair skips to the next t with frame_prob.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from opensora_core import geometry
from opensora_core.families import Training
from opensora_core.geometry import opensora_v2

from .config import ConfigError

log = logging.getLogger("opensora")

PIXEL_TOLERANCE = 0.8  # a clip qualifies for a resolution with at least 80 % of its pixels


@dataclass(frozen=True)
class BucketKey:
    resolution: str
    num_frames: int
    aspect: str  # aspect-ratio key of the resolution table (height / width, "0.56")


@dataclass(frozen=True)
class FrameEntry:
    num_frames: int
    keep_prob: float
    frame_prob: float | None  # v1.2 (keep_prob, frame_prob) pairs; None = always considered
    batch_size: int  # 0 = disabled


@dataclass(frozen=True)
class Resolution:
    name: str
    pixels: int
    sizes: dict[str, tuple[int, int]]  # aspect key -> (height, width)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def resolution_tables(custom: Mapping | None = None, key: str = "data.resolutions", *,
                      training: Training | None = None) -> dict[str, Resolution]:
    """The official resolution tables plus custom ones ``{name: {pixels = N, sizes = {"1.00" = [H, W]}}}``.

    The official tables are the model family's training buckets where it declares them (Open-Sora 2.0:
    "256px" / "768px" with "W:H" aspect keys), else the Open-Sora v1 tables of :mod:`opensora_core.geometry`.
    """
    if training is not None and training.bucket_sizes is not None:
        tables = {name: Resolution(name, *training.bucket_sizes(name)) for name in training.bucket_resolutions}
    else:
        tables = {
            name: Resolution(name, geometry.resolution_pixels(name), geometry.aspect_ratio_table(name))
            for name in geometry.resolutions()
        }
    for name, spec in (custom or {}).items():
        tables[name] = _custom_resolution(name, spec, f"{key}.{name}")
    return tables


def _custom_resolution(name: str, spec, key: str) -> Resolution:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("sizes"), Mapping) or not spec["sizes"]:
        raise ConfigError(key, 'expected {pixels = N, sizes = {"1.00" = [height, width], ...}}')
    sizes = {}
    for ratio, hw in spec["sizes"].items():
        try:
            float(ratio)
        except ValueError:
            raise ConfigError(f"{key}.sizes.{ratio}", "aspect keys are height/width numbers such as \"0.56\"") from None
        if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)):
            raise ConfigError(f"{key}.sizes.{ratio}", f"expected [height, width] in pixels, got {hw!r}")
        sizes[ratio] = (hw[0], hw[1])
    pixels = spec.get("pixels", max(h * w for h, w in sizes.values()))
    if not isinstance(pixels, int) or pixels <= 0:
        raise ConfigError(f"{key}.pixels", f"expected a positive pixel count, got {pixels!r}")
    return Resolution(name, pixels, sizes)


def parse_bucket_config(config: Mapping, tables: Mapping[str, Resolution], key: str = "data.buckets") -> dict:
    """{resolution: {frames: FrameEntry}} from the official format; errors name the key."""
    if not isinstance(config, Mapping) or not config:
        raise ConfigError(key, 'no buckets; e.g. [data.buckets] "240p" = { "51" = [1.0, 4] }')
    parsed = {}
    for res, frames in config.items():
        if res not in tables:
            raise ConfigError(
                f"{key}.{res}", f"unknown resolution; use one of {', '.join(tables)} or add it under data.resolutions"
            )
        if not isinstance(frames, Mapping) or not frames:
            raise ConfigError(f"{key}.{res}", 'expected a table {num_frames = [keep_prob, batch_size]}')
        parsed[res] = {}
        for t, value in frames.items():
            entry = _frame_entry(t, value, f"{key}.{res}.{t}")
            parsed[res][entry.num_frames] = entry
    return parsed


def _frame_entry(t, value, key: str) -> FrameEntry:
    try:
        frames = int(t)
    except (TypeError, ValueError):
        raise ConfigError(key, "frame counts must be integers") from None
    if frames < 1:
        raise ConfigError(key, "frame counts must be >= 1")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(key, f"expected [keep_prob, batch_size], got {value!r}")
    prob, batch = value
    frame_prob = None
    if isinstance(prob, (list, tuple)):
        if len(prob) != 2:
            raise ConfigError(key, f"a probability pair is [keep_prob, frame_prob], got {prob!r}")
        prob, frame_prob = prob
        _check_prob(frame_prob, key)
    _check_prob(prob, key)
    batch = 0 if batch in (None, False) else batch
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
        raise ConfigError(key, f"batch_size must be a positive integer (0 disables the entry), got {batch!r}")
    if batch == 0 and prob > 0:
        raise ConfigError(key, "an entry with keep_prob > 0 needs a batch_size (0 only with keep_prob 0)")
    return FrameEntry(frames, float(prob), None if frame_prob is None else float(frame_prob), batch)


def _check_prob(p, key: str) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(key, f"probabilities must be numbers in [0, 1], got {p!r}")


# ---------------------------------------------------------------------------
# Assignment
# ---------------------------------------------------------------------------


class BucketTable:
    """Parsed buckets with the official ordering, ids and assignment rule (see the module docstring)."""

    def __init__(self, config: Mapping, custom_resolutions: Mapping | None = None, *,
                 training: Training | None = None) -> None:
        tables = resolution_tables(custom_resolutions, training=training)
        self.rule = training.bucket_rule if training is not None else "v1"
        parsed = parse_bucket_config(config, tables)
        names = sorted(parsed, key=lambda r: tables[r].pixels, reverse=True)  # stable, as the official sort
        self.resolutions = {r: tables[r] for r in names}
        self.entries = {r: dict(sorted(parsed[r].items(), reverse=True)) for r in names}  # frames descending
        self.bucket_id: dict[str, dict[int, int]] = {}
        counter = 0
        for r in names:
            self.bucket_id[r] = {}
            for t in self.entries[r]:
                self.bucket_id[r][t] = counter
                counter += 1
        self.num_buckets = sum(len(self.resolutions[r].sizes) * len(self.entries[r]) for r in names)

    @property
    def frame_counts(self) -> set[int]:
        return {t for entries in self.entries.values() for t in entries}

    def sample_seed(self, seed: int, epoch: int, row: int) -> int:
        """The per-clip seed of the official sampler: seed + epoch + row * num_buckets."""
        return seed + epoch + row * self.num_buckets

    def assign(self, T: int, H: int, W: int, frame_interval: int = 1, seed: int = 0) -> BucketKey | None:
        """The bucket of a clip with T frames of H x W pixels, or None if it fits none (or draws lose)."""
        if self.rule == "v2":
            return self._assign_v2(T, H, W, frame_interval, seed)
        for res, entries in self.entries.items():
            if H * W < self.resolutions[res].pixels * PIXEL_TOLERANCE:
                continue
            frames = self._pick_frames(res, entries, T, frame_interval, seed)
            if frames is not None:
                aspect = geometry.closest_ratio_key(H, W, self.resolutions[res].sizes)
                return BucketKey(res, frames, aspect)
        return None

    def _pick_frames(self, res: str, entries: dict[int, FrameEntry], T: int, interval: int, seed: int) -> int | None:
        ids = self.bucket_id[res]
        if T == 1:
            entry = entries.get(1)
            if entry is None:
                return None
            return 1 if np.random.default_rng(seed + ids[1]).random() < entry.keep_prob else None
        for t, entry in entries.items():  # largest frame count first
            rng = np.random.default_rng(seed + ids[t])
            if entry.frame_prob is not None and rng.random() > entry.frame_prob:
                continue
            if t != 1 and T > t * interval:
                keep = entry.keep_prob >= 1 or rng.random() < entry.keep_prob
                return t if keep else None
        return None

    def _assign_v2(self, T: int, H: int, W: int, interval: int, seed: int) -> BucketKey | None:
        """Open-Sora 2.0's ``Bucket.get_bucket_id``: one draw stream per clip, a video takes the largest t with
        T // interval >= t; (keep_prob, frame_prob) pairs skip to the next t with frame_prob; a lost keep draw
        tries the next resolution."""
        rng = np.random.default_rng(seed)
        frames = T // interval if T > 1 else T
        for res, entries in self.entries.items():
            if H * W < self.resolutions[res].pixels * PIXEL_TOLERANCE:
                continue
            picked = self._pick_frames_v2(entries, frames, rng)
            if picked is not None:
                return BucketKey(res, picked, _closest_aspect(H, W, self.resolutions[res].sizes))
        return None

    @staticmethod
    def _pick_frames_v2(entries: dict[int, FrameEntry], T: int, rng: np.random.Generator) -> int | None:
        if T == 1:
            entry = entries.get(1)
            return 1 if entry is not None and rng.random() < entry.keep_prob else None
        for t, entry in entries.items():  # largest frame count first
            if t == 1 or T < t:
                continue
            if entry.frame_prob is not None and (entry.frame_prob >= 1 or rng.random() <= entry.frame_prob):
                continue
            return t if entry.keep_prob >= 1 or rng.random() <= entry.keep_prob else None
        return None

    def size(self, key: BucketKey) -> tuple[int, int, int]:
        """(num_frames, height, width) of a bucket."""
        height, width = self.resolutions[key.resolution].sizes[key.aspect]
        return key.num_frames, height, width

    def batch_size(self, key: BucketKey) -> int:
        return self.entries[key.resolution][key.num_frames].batch_size


def _closest_aspect(height: int, width: int, sizes: Mapping[str, tuple[int, int]]) -> str:
    """The aspect key nearest to height/width: "W:H" keys (Open-Sora 2.0 tables) or height/width numbers."""
    if all(":" in key for key in sizes):
        return opensora_v2.closest_aspect_ratio(height, width, sizes)
    return geometry.closest_ratio_key(height, width, sizes)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def bucket_summary(table: BucketTable, keys: Sequence[BucketKey | None], names: Sequence[str] = ()) -> str:
    """A printable table of samples and batches per bucket, with the dropped samples last."""
    counts = Counter(k for k in keys if k is not None)
    header = (f"{'resolution':>10} {'frames':>6} {'aspect':>6} {'size (HxW)':>11} {'batch':>5} "
              f"{'samples':>7} {'batches':>7}")
    lines = [header, "-" * len(header)]
    for key in sorted(counts, key=lambda k: (-table.resolutions[k.resolution].pixels, -k.num_frames, k.aspect)):
        _, h, w = table.size(key)
        bs = table.batch_size(key)
        lines.append(
            f"{key.resolution:>10} {key.num_frames:>6} {key.aspect:>6} {f'{h}x{w}':>11} {bs:>5} "
            f"{counts[key]:>7} {-(-counts[key] // bs):>7}"
        )
    dropped = [i for i, k in enumerate(keys) if k is None]
    lines.append(f"{len(keys) - len(dropped)} of {len(keys)} samples in {len(counts)} buckets; {len(dropped)} dropped")
    if dropped:
        shown = ", ".join(names[i] for i in dropped[:5]) if names else ""
        more = f" (+{len(dropped) - 5} more)" if len(dropped) > 5 else ""
        log.warning(
            "%d sample(s) fit no bucket (too small, too few frames, or not drawn by keep_prob)%s%s",
            len(dropped), f": {shown}" if shown else "", more,
        )
    return "\n".join(lines)


__all__ = ["BucketKey", "BucketTable", "FrameEntry", "Resolution", "bucket_summary", "parse_bucket_config",
           "resolution_tables"]
