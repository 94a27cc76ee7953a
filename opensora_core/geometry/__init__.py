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
* temporal, Open-Sora-Plan (CausalVideoVAE v1.0-v1.2, WF-VAE v1.3): causal, T pixel
  frames -> ceil(T / 4) latent frames -> 4n - 3 decoded frames (:class:`CausalLatentGeometry`);
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

SPATIAL_FACTOR = 8  # every Open-Sora VAE: height and width / 8
V1_2_MICRO_FRAMES = 17  # VAE v1.2 encodes 17-frame chunks (opensora/models/vae/vae.py micro_frame_size)
IMG_FPS = 120  # fps the official code passes to the model for single images


# ---------------------------------------------------------------------------
# Spatial rules (shared by every geometry kind)
# ---------------------------------------------------------------------------


class SpatialRules:
    """Pixel <-> latent height and width; needs ``spatial_factor`` and ``latent_frames`` on the class."""

    spatial_factor: int

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width (floor division, as the official VAEs do)."""
        return height // self.spatial_factor, width // self.spatial_factor

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
                f"resize or crop the video to {h}x{w} before encoding"
            )

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the latent for a pixel clip (``get_latent_size`` of the official VAEs)."""
        return (self.latent_frames(num_frames), *self.latent_hw(height, width))


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
class LatentGeometry(SpatialRules):
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
VAE_V1_2 = LatentGeometry(time_factor=4, micro_frame_size=V1_2_MICRO_FRAMES)  # Open-Sora VAE v1.2
# Open-Sora 2.0's Hunyuan causal 3D VAE (hunyuan_vae.safetensors): 16 channels, 4x8x8, 4k+1 -> k+1 frames
HUNYUAN_VAE = LatentGeometry(time_factor=4, latent_channels=16, causal=True, round_up_hw=True)


def check_frame_count(num_frames: int) -> None:
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")


# ---------------------------------------------------------------------------
# Causal geometry of the Open-Sora-Plan VAEs (CausalVideoVAE v1.0-v1.2, WF-VAE v1.3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalLatentGeometry(SpatialRules):
    """A causal video VAE that compresses time by ``time_factor`` (a power of two) with stride-2 stages.

    Each stride-2 causal stage maps n frames to ceil(n / 2) and each x2 causal upsampler maps n to
    2n - 1 (the first frame is never duplicated), so T pixel frames encode to ceil(T / time_factor)
    latent frames and n latent frames decode to time_factor * (n - 1) + 1 frames: only
    ``time_factor * n + 1`` frames survive a round trip (6 -> 2 -> 5). Latent frame 0 holds pixel frame
    0 alone, latent frame j > 0 pixel frames time_factor * (j - 1) + 1 ... time_factor * j.
    (FACTS.md section 3 of the Open-Sora-Plan reference; measured on all four released VAEs.)
    """

    time_factor: int = 4
    spatial_factor: int = SPATIAL_FACTOR

    def __post_init__(self):
        if self.time_factor < 1 or self.time_factor & (self.time_factor - 1):
            raise ValueError(f"time_factor must be a power of two, got {self.time_factor}")

    # -- frame counts ---------------------------------------------------------

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames the encoder makes of ``num_frames`` pixel frames (any count >= 1)."""
        check_frame_count(num_frames)
        return -(-num_frames // self.time_factor)

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames the decoder makes of ``latent_frames`` latent frames."""
        if int(latent_frames) != latent_frames or latent_frames < 1:
            raise ValueError(f"latent_frames must be a positive integer, got {latent_frames!r}")
        return self.time_factor * (latent_frames - 1) + 1

    def is_round_trip(self, num_frames: int) -> bool:
        """True when ``num_frames`` decodes back to itself (``time_factor * n + 1``)."""
        check_frame_count(num_frames)
        return (num_frames - 1) % self.time_factor == 0

    def nearest_valid_frames(self, num_frames: int) -> tuple[int, int]:
        """The closest round-trip frame counts at or below and at or above ``num_frames``."""
        check_frame_count(num_frames)
        below = (num_frames - 1) // self.time_factor * self.time_factor + 1
        return below, below if below == num_frames else below + self.time_factor

    def check_num_frames(self, num_frames: int) -> None:
        """Raise unless ``num_frames`` is a round-trip count (the v1.3 pipeline's ``check_inputs`` rule)."""
        if not self.is_round_trip(num_frames):
            below, above = self.nearest_valid_frames(num_frames)
            raise ValueError(
                f"num_frames={num_frames} is not of the form {self.time_factor}n+1, so the VAE cannot give it back "
                f"(it would decode to {self.decoded_frames(self.latent_frames(num_frames))} frames); "
                f"use {below} or {above}"
            )

    def check_decodable(self, latent_frames: int, num_frames: int) -> None:
        """Raise unless ``latent_frames`` decode to exactly ``num_frames`` frames."""
        decoded = self.decoded_frames(latent_frames)
        if num_frames != decoded:
            raise ValueError(
                f"num_frames={num_frames} cannot be decoded from {latent_frames} latent frames: they always "
                f"decode to {decoded} frames; pass num_frames={decoded} (or None)"
            )

    def pixel_frame_range(self, latent_frames: int) -> tuple[int, int]:
        """Smallest and largest pixel frame count that encode to ``latent_frames``."""
        return self.decoded_frames(latent_frames), self.time_factor * latent_frames

    # -- frame positions ------------------------------------------------------

    def pixel_to_latent_frame(self, frame: int, num_frames: int) -> int:
        """Latent frame that holds pixel frame ``frame`` (0-based) of a ``num_frames`` clip."""
        if not 0 <= frame < num_frames:
            raise ValueError(f"pixel frame {frame} is outside a clip of {num_frames} frames")
        return -(-frame // self.time_factor)

    def latent_to_pixel_frames(self, latent_frame: int, num_frames: int) -> range:
        """Pixel frames of a ``num_frames`` clip that latent frame ``latent_frame`` stands for."""
        if not 0 <= latent_frame < self.latent_frames(num_frames):
            raise ValueError(
                f"latent frame {latent_frame} is outside the {self.latent_frames(num_frames)} latent frames "
                f"of a {num_frames}-frame clip"
            )
        if latent_frame == 0:
            return range(0, 1)
        start = self.time_factor * (latent_frame - 1) + 1
        return range(start, min(start + self.time_factor, num_frames))

    def leading_pixel_frames(self, latent_frames: int, num_frames: int) -> int:
        """Pixel frames covered by the first ``latent_frames`` latent frames of a ``num_frames`` clip."""
        if latent_frames == 0:
            return 0
        return self.latent_to_pixel_frames(latent_frames - 1, num_frames).stop


# Open-Sora-Plan CausalVideoVAE (v1.0, v1.1, v1.2 D4) and WF-VAE (v1.3): ae_stride_config [4, 8, 8]
CAUSAL_4X8X8 = CausalLatentGeometry(time_factor=4, spatial_factor=SPATIAL_FACTOR)


# ---------------------------------------------------------------------------
# Resolution and aspect-ratio tables (opensora/datasets/aspect.py)
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _tables() -> dict:
    text = resources.files("opensora_core").joinpath("data/aspect_ratios.json").read_text()
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


# ---------------------------------------------------------------------------
# Open-Sora-Plan v1.3 (WF-VAE 4x8x8 + OpenSoraT2V_v1_3 / OpenSoraInpaint_v1_3, patch 1x2x2)
# ---------------------------------------------------------------------------

OSP_V1_3_VAE = CAUSAL_4X8X8  # WF-VAE D8: T pixel frames -> ceil(T / 4) latent frames; only 4n+1 round-trip
OSP_V1_3_PATCH = 2  # transformer patch over the latent height and width
# Pixel sides must be multiples of 16 (VAE 8 x patch 2; the official patch embedding floors otherwise and the
# pipelines then fail); the release was trained on a 32-pixel grid (--hw_stride 32, README note [3]), so 32 is
# the multiple to prefer.
OSP_V1_3_SIDE_MULTIPLE = SPATIAL_FACTOR * OSP_V1_3_PATCH
OSP_V1_3_TRAINED_SIDE_MULTIPLE = 32


def _nearest_multiples(value: int, multiple: int) -> str:
    below = value // multiple * multiple
    return " or ".join(str(v) for v in (below, below + multiple) if v >= multiple)


def check_osp_v1_3_size(num_frames: int, height: int, width: int,
                        side_multiple: int = OSP_V1_3_SIDE_MULTIPLE) -> None:
    """Raise ``ValueError`` (with the nearest valid values) unless the video size works with Open-Sora-Plan v1.3:
    num_frames = 4n+1 (1, 29, 45, 61, 77, 93, ...; pipeline ``check_inputs``) and height/width multiples of
    ``side_multiple`` (16 required; pass :data:`OSP_V1_3_TRAINED_SIDE_MULTIPLE` to hold to the training grid)."""
    check_frame_count(num_frames)
    if side_multiple % OSP_V1_3_SIDE_MULTIPLE:
        raise ValueError(f"side_multiple must be a multiple of {OSP_V1_3_SIDE_MULTIPLE}, got {side_multiple}")
    problems = []
    if not OSP_V1_3_VAE.is_round_trip(num_frames):
        below, above = OSP_V1_3_VAE.nearest_valid_frames(num_frames)
        problems.append(f"num_frames {num_frames} is not 4n+1 (nearest: {below} or {above})")
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or value < side_multiple or value % side_multiple:
            problems.append(f"{name} {value} is not a multiple of {side_multiple} "
                            f"(nearest: {_nearest_multiples(int(value), side_multiple)})")
    if problems:
        raise ValueError("Open-Sora-Plan v1.3 size: " + "; ".join(problems))


def osp_v1_3_latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T, H, W) of the v1.3 latent after :func:`check_osp_v1_3_size`: ((num_frames - 1) // 4 + 1, height // 8,
    width // 8) (``prepare_latents``)."""
    check_osp_v1_3_size(num_frames, height, width)
    return OSP_V1_3_VAE.latent_size(num_frames, height, width)
