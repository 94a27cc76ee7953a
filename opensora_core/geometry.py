"""Latent geometry: the one place for sizes, frame counts and resolution tables.

Everything that converts between pixel space and latent space lives here, so the
VAE, the samplers, the mask strategies, the nodes and the trainer agree:

* spatial: every VAE in Open-Sora compresses height and width by 8 (floor);
* temporal: SD-VAE (v1.0/v1.1) keeps every frame; VAE v1.2 cuts the video into
  chunks of 17 pixel frames, front-pads each chunk to a multiple of 4 and
  compresses time by 4 (17 -> 5, 20 -> 5 + 1, 51 -> 15; Open-Sora v1.2
  `VideoAutoencoderPipeline.get_latent_size`); the causal Hunyuan VAE of Open-Sora
  2.0 encodes the first frame alone and then groups of 4, so it takes 4k + 1
  frames to k + 1 latent frames and decodes t latent frames to 4(t - 1) + 1;
* the official resolution / aspect-ratio tables (opensora/datasets/aspect.py)
  and the named durations ("2s" -> 51 frames).

Nothing here touches a file at import; the tables are read on first use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

SPATIAL_FACTOR = 8
IMG_FPS = 120  # fps the official code passes to the model for single images


# ---------------------------------------------------------------------------
# Temporal geometry of a VAE
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeChunk:
    """One temporal chunk of the encoder: pixel frames [start, end), front padding, latent frames."""

    start: int
    end: int
    pad: int
    latent_frames: int


@dataclass(frozen=True)
class DecodeChunk:
    """One temporal chunk of the decoder.

    Latent frames [latent_start, latent_end) decode to ``time_factor * length``
    frames, of which the first ``drop`` are front padding; ``num_frames`` remain.
    """

    latent_start: int
    latent_end: int
    num_frames: int
    drop: int


@dataclass(frozen=True)
class LatentGeometry:
    """How a VAE maps a pixel video [T, H, W] to a latent grid [t, h, w].

    time_factor: temporal compression (1 = per-frame SD-VAE, 4 = VAE v1.2 and Hunyuan).
    micro_frame_size: pixel frames per independently encoded chunk (17 for VAE
    v1.2; None = the whole clip is one chunk).
    spatial_factor: spatial compression (8 for every Open-Sora VAE).
    latent_channels: channels of the latent (4 for SD-VAE and VAE v1.2, 16 for Hunyuan).
    causal: the first frame is encoded alone, as if ``time_factor - 1`` copies of it
        came first (the Hunyuan VAE's replicate-padded causal convs). Only
        ``time_factor * k + 1`` frames encode without losing trailing frames, and
        ``t`` latent frames decode to ``time_factor * (t - 1) + 1`` frames.
    round_up_hw: a side that is not a multiple of ``spatial_factor`` gives
        ceil(side / factor) latent pixels (the Hunyuan VAE's padded stride-2 convs:
        ``get_latent_size`` uses (H - 1) // 8 + 1) instead of floor (SD-VAE, VAE v1.2).
    """

    time_factor: int = 1
    micro_frame_size: int | None = None
    spatial_factor: int = SPATIAL_FACTOR
    latent_channels: int = 4
    causal: bool = False
    round_up_hw: bool = False

    def __post_init__(self) -> None:
        if self.causal and self.micro_frame_size is not None:
            raise ValueError(
                "LatentGeometry: a causal VAE encodes the whole clip at once; micro_frame_size must be None"
            )

    # -- frames -------------------------------------------------------------

    @property
    def latent_chunk(self) -> int | None:
        """Latent frames per full chunk (5 for VAE v1.2), None without chunking."""
        if self.micro_frame_size is None:
            return None
        return math.ceil(self.micro_frame_size / self.time_factor)

    def _front_pad(self, n: int) -> int:
        if self.causal:
            return self.time_factor - 1
        return (self.time_factor - n % self.time_factor) % self.time_factor

    def accepts_frames(self, num_frames: int) -> bool:
        """Whether ``num_frames`` pixel frames encode without losing any (causal VAEs: 1 + k * time_factor)."""
        return num_frames >= 1 and (not self.causal or (num_frames - 1) % self.time_factor == 0)

    def nearest_frame_counts(self, num_frames: int) -> tuple[int, ...]:
        """The accepted frame counts next to ``num_frames`` (itself if accepted), smallest first."""
        check_frame_count(num_frames)
        if self.accepts_frames(num_frames):
            return (num_frames,)
        below = num_frames - (num_frames - 1) % self.time_factor
        return below, below + self.time_factor

    def check_num_frames(self, num_frames: int) -> None:
        """Raise unless the VAE can encode ``num_frames`` frames without dropping the last ones."""
        check_frame_count(num_frames)
        if not self.accepts_frames(num_frames):
            below, above = self.nearest_frame_counts(num_frames)
            f = self.time_factor
            raise ValueError(
                f"num_frames={num_frames} does not fit this causal VAE: it encodes the first frame alone and "
                f"then groups of {f}, so it takes 1 + {f}k frames (the last {num_frames - below} would be lost). "
                f"Use {below} or {above} frames."
            )

    def encode_chunks(self, num_frames: int) -> list[EncodeChunk]:
        """Temporal chunks the encoder processes, in order."""
        self.check_num_frames(num_frames)
        size = self.micro_frame_size or num_frames
        chunks = []
        for start in range(0, num_frames, size):
            end = min(start + size, num_frames)
            n = end - start
            chunks.append(EncodeChunk(start, end, self._front_pad(n), math.ceil(n / self.time_factor)))
        return chunks

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames produced by encoding ``num_frames`` pixel frames."""
        return sum(c.latent_frames for c in self.encode_chunks(num_frames))

    def decode_chunks(self, num_frames: int) -> list[DecodeChunk]:
        """Temporal chunks the decoder processes to return ``num_frames`` pixel frames."""
        chunks, start = [], 0
        for enc in self.encode_chunks(num_frames):
            chunks.append(DecodeChunk(start, start + enc.latent_frames, enc.end - enc.start, enc.pad))
            start += enc.latent_frames
        return chunks

    def check_decodable(self, latent_frames: int, num_frames: int) -> None:
        """Raise if ``latent_frames`` cannot decode to exactly ``num_frames`` frames."""
        check_frame_count(num_frames)
        lo, hi = self.pixel_frame_range(latent_frames)
        if not (lo <= num_frames <= hi and self.accepts_frames(num_frames)):
            pick = f"Pick num_frames={lo}" if lo == hi else f"Pick num_frames between {lo} and {hi}"
            raise ValueError(
                f"num_frames={num_frames} cannot be decoded from {latent_frames} latent frames "
                f"(this VAE decodes {latent_frames} latent frames to {lo}..{hi} frames). {pick}."
            )

    def pixel_frame_range(self, latent_frames: int) -> tuple[int, int]:
        """Smallest and largest accepted pixel frame count that encode to ``latent_frames``.

        For a causal VAE both are ``time_factor * (latent_frames - 1) + 1``, the frames its decoder gives.
        """
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        counts = [
            n for n in range(1, latent_frames * self.time_factor + 1)
            if self.accepts_frames(n) and self.latent_frames(n) == latent_frames
        ]
        if not counts:
            raise ValueError(f"no pixel frame count encodes to {latent_frames} latent frames with {self}")
        return counts[0], counts[-1]

    def pixel_to_latent_frame(self, frame: int, num_frames: int) -> int:
        """Latent frame that holds pixel frame ``frame`` (0-based) of a ``num_frames`` clip."""
        if not 0 <= frame < num_frames:
            raise ValueError(f"pixel frame {frame} is outside a clip of {num_frames} frames")
        offset = 0
        for enc in self.encode_chunks(num_frames):
            if frame < enc.end:
                return offset + (frame - enc.start + enc.pad) // self.time_factor
            offset += enc.latent_frames
        raise AssertionError("unreachable")

    def latent_to_pixel_frames(self, latent_frame: int, num_frames: int) -> range:
        """Pixel frames of a ``num_frames`` clip that latent frame ``latent_frame`` decodes to."""
        frames = [f for f in range(num_frames) if self.pixel_to_latent_frame(f, num_frames) == latent_frame]
        if not frames:
            raise ValueError(
                f"latent frame {latent_frame} is outside the {self.latent_frames(num_frames)} latent frames "
                f"of a {num_frames}-frame clip"
            )
        return range(frames[0], frames[-1] + 1)

    def leading_pixel_frames(self, latent_frames: int, num_frames: int) -> int:
        """Pixel frames covered by the first ``latent_frames`` latent frames of a ``num_frames`` clip.

        For whole VAE v1.2 chunks this is the official ``dframe_to_frame`` (5 -> 17, 10 -> 34); the loop
        mode drops that many frames from the start of every clip after the first.
        """
        if latent_frames == 0:
            return 0
        return self.latent_to_pixel_frames(latent_frames - 1, num_frames).stop

    # -- space --------------------------------------------------------------

    def latent_side(self, pixels: int) -> int:
        """Latent pixels of one side (floor division as SD-VAE / VAE v1.2 do, ceil with ``round_up_hw``)."""
        if self.round_up_hw:
            return -(-pixels // self.spatial_factor)
        return pixels // self.spatial_factor

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width (see :meth:`latent_side`)."""
        return self.latent_side(height), self.latent_side(width)

    def decoded_hw(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size a generation of ``height`` x ``width`` decodes to (multiples of 8)."""
        h, w = self.latent_hw(height, width)
        return h * self.spatial_factor, w * self.spatial_factor

    def check_encodable_hw(self, height: int, width: int) -> None:
        """Raise unless the VAE can encode frames of this size without losing pixels."""
        f = self.spatial_factor
        if height < f or width < f or height % f or width % f:
            h, w = max(f, height // f * f), max(f, width // f * f)
            raise ValueError(
                f"frame size {height}x{width} (HxW) is not a multiple of {f}; "
                f"resize or crop the video to {h}x{w} before encoding (or pad it to "
                f"{-(-height // f) * f}x{-(-width // f) * f})"
            )

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latent for a pixel clip (``get_latent_size`` of the official VAEs)."""
        return (self.latent_frames(num_frames), *self.latent_hw(height, width))


PER_FRAME = LatentGeometry(time_factor=1, micro_frame_size=None)  # SD-VAE (v1.0 / v1.1)
VAE_V1_2 = LatentGeometry(time_factor=4, micro_frame_size=17)  # Open-Sora VAE v1.2
# Open-Sora 2.0's Hunyuan causal 3D VAE (hunyuan_vae.safetensors): 16 channels, 4x8x8, 4k+1 -> k+1 frames
HUNYUAN_VAE = LatentGeometry(time_factor=4, latent_channels=16, causal=True, round_up_hw=True)


def check_frame_count(num_frames: int) -> None:
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")


# ---------------------------------------------------------------------------
# Resolution and aspect-ratio tables (opensora/datasets/aspect.py)
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tables() -> dict:
    text = resources.files(__package__).joinpath("data/aspect_ratios.json").read_text()
    return json.loads(text)


def resolutions() -> list[str]:
    """Resolution names of the official tables, smallest pixel count first."""
    res = _tables()["resolutions"]
    return sorted(res, key=lambda r: res[r]["num_pixels"])


def named_aspect_ratios() -> dict[str, str]:
    """'H:W' aspect-ratio names -> table keys ("9:16" -> "0.56"). Note H:W, not W:H."""
    return dict(_tables()["named_ratios"])


def resolution_pixels(resolution: str) -> int:
    return _resolution(resolution)["num_pixels"]


def aspect_ratio_table(resolution: str) -> dict[str, tuple[int, int]]:
    """Aspect-ratio key -> (height, width) for one resolution."""
    return {k: tuple(v) for k, v in _resolution(resolution)["sizes"].items()}


def _resolution(resolution: str) -> dict:
    res = _tables()["resolutions"]
    if resolution not in res:
        raise ValueError(f"unknown resolution {resolution!r}; choose one of {', '.join(resolutions())}")
    return res[resolution]


def image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) in pixels for a resolution preset and an 'H:W' aspect ratio (get_image_size)."""
    names = named_aspect_ratios()
    if aspect_ratio not in names:
        raise ValueError(f"unknown aspect ratio {aspect_ratio!r} (H:W); choose one of {', '.join(names)}")
    table = aspect_ratio_table(resolution)
    key = names[aspect_ratio]
    if key not in table:
        usable = [n for n, k in names.items() if k in table]
        raise ValueError(
            f"resolution {resolution!r} has no {aspect_ratio} size; "
            f"usable aspect ratios: {', '.join(usable) or 'none (PixArt-style table)'}"
        )
    return table[key]


def closest_ratio(height: float, width: float, resolution: str) -> str:
    """Table key whose ratio is closest to height/width (get_closest_ratio; ties keep table order)."""
    return closest_ratio_key(height, width, aspect_ratio_table(resolution))


def closest_ratio_key(height: float, width: float, keys) -> str:
    """The key of ``keys`` (aspect-ratio strings such as "0.56") closest to height/width; ties keep order.

    Works for any table with the official key format, e.g. a custom training resolution.
    """
    ratio = height / width
    return min(keys, key=lambda k: abs(float(k) - ratio))


def num_frames_from_duration(value: str | int) -> int:
    """'2s'/'1x' style names -> pixel frames (51, 102, ...); anything else int() (get_num_frames)."""
    durations = _tables()["named_durations"]
    if isinstance(value, str) and value in durations:
        return durations[value]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"unknown duration {value!r}; use a frame count or one of {', '.join(durations)}") from None


def named_durations() -> dict[str, int]:
    return dict(_tables()["named_durations"])
