"""How a VAE maps a pixel video [T, H, W] to a latent grid [t, h, w]: one :class:`LatentGeometry` type and
one constant per released VAE.

* spatial: every VAE here compresses height and width by 8 (floor; the Hunyuan VAE rounds up);
* temporal, per frame: the SD-VAE (Open-Sora v1.0/v1.1) keeps every frame (:data:`PER_FRAME`);
* temporal, chunked: the Open-Sora VAE v1.2 cuts the video into chunks of 17 pixel frames, front-pads each
  chunk to a multiple of 4 and compresses time by 4 (17 -> 5, 20 -> 5 + 1, 51 -> 15; Open-Sora v1.2
  ``VideoAutoencoderPipeline.get_latent_size``; :data:`VAE_V1_2`);
* temporal, causal: the Open-Sora-Plan CausalVideoVAE (v1.0-v1.2, 4 channels, :data:`OSP_CAUSAL_VAE`) and
  WF-VAE (v1.3, 8 channels, :data:`OSP_WF_VAE`) and the Open-Sora 2.0 Hunyuan VAE (16 channels,
  :data:`HUNYUAN_VAE`) encode the first frame alone and then groups of 4: T pixel frames -> ceil(T / 4)
  = (T - 1) // 4 + 1 latent frames, t latent frames -> 4 (t - 1) + 1 decoded frames, so only 4k + 1
  frames survive a round trip (6 -> 2 -> 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .opensora_v1 import official_sizes

SPATIAL_FACTOR = 8  # every Open-Sora VAE: height and width / 8
V1_2_MICRO_FRAMES = 17  # VAE v1.2 encodes 17-frame chunks (opensora/models/vae/vae.py micro_frame_size)


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

    time_factor: temporal compression (1 = per-frame SD-VAE, 4 = VAE v1.2 and the causal VAEs).
    micro_frame_size: pixel frames per independently encoded chunk (17 for VAE
        v1.2; None = the whole clip is one chunk).
    spatial_factor: spatial compression (8 for every VAE here).
    latent_channels: channels of the latent (4: SD-VAE, VAE v1.2, CausalVideoVAE; 8: WF-VAE; 16: Hunyuan).
    causal: the first frame is encoded alone, as if ``time_factor - 1`` copies of it
        came first (causal convs with stride-2 stages; ``time_factor`` must be a power of two). Only
        ``time_factor * k + 1`` frames come back from a round trip: ``t`` latent frames always decode
        to ``time_factor * (t - 1) + 1`` frames.
    round_up_hw: a side that is not a multiple of ``spatial_factor`` gives
        ceil(side / factor) latent pixels (the Hunyuan VAE's padded stride-2 convs:
        ``get_latent_size`` uses (H - 1) // 8 + 1) instead of floor (the other VAEs).
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
        if self.causal and (self.time_factor < 1 or self.time_factor & (self.time_factor - 1)):
            raise ValueError(f"LatentGeometry: a causal time_factor must be a power of two, got {self.time_factor}")

    # -- frame counts ---------------------------------------------------------

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

    def encode_chunks(self, num_frames: int) -> list[EncodeChunk]:
        """Temporal chunks the encoder processes, in order (any count >= 1; see :meth:`check_num_frames`)."""
        check_frame_count(num_frames)
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

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames the decoder of a causal (or per-frame) VAE makes of ``latent_frames`` latent frames;
        a chunked VAE (v1.2) decodes to the count it is asked for (:meth:`pixel_frame_range`)."""
        if int(latent_frames) != latent_frames or latent_frames < 1:
            raise ValueError(f"latent_frames must be a positive integer, got {latent_frames!r}")
        if self.causal:
            return self.time_factor * (latent_frames - 1) + 1
        if self.time_factor == 1:
            return latent_frames
        lo, hi = self.pixel_frame_range(latent_frames)
        raise ValueError(f"this VAE decodes {latent_frames} latent frames to any of {lo}..{hi} frames; "
                         "the caller says how many (num_frames)")

    def accepts_frames(self, num_frames: int) -> bool:
        """Whether ``num_frames`` pixel frames come back from a round trip (causal VAEs: 1 + k * time_factor)."""
        check_frame_count(num_frames)
        return not self.causal or (num_frames - 1) % self.time_factor == 0

    def nearest_frame_counts(self, num_frames: int) -> tuple[int, ...]:
        """The accepted frame counts next to ``num_frames`` (itself if accepted), smallest first."""
        if self.accepts_frames(num_frames):
            return (num_frames,)
        below = num_frames - (num_frames - 1) % self.time_factor
        return below, below + self.time_factor

    def check_num_frames(self, num_frames: int) -> None:
        """Raise unless ``num_frames`` frames come back from a round trip, naming the nearest counts that do."""
        if not self.accepts_frames(num_frames):
            below, above = self.nearest_frame_counts(num_frames)
            f = self.time_factor
            raise ValueError(
                f"num_frames={num_frames} does not fit this causal VAE: it encodes the first frame alone and then "
                f"groups of {f}, so it takes 1 + {f}k frames ({num_frames} frames would decode to {below}); "
                f"use {below} or {above} frames"
            )

    def check_decodable(self, latent_frames: int, num_frames: int) -> None:
        """Raise if ``latent_frames`` cannot decode to exactly ``num_frames`` frames."""
        check_frame_count(num_frames)
        if self.causal:
            decoded = self.decoded_frames(latent_frames)
            if num_frames != decoded:
                raise ValueError(f"num_frames={num_frames} cannot be decoded from {latent_frames} latent frames: "
                                 f"they always decode to {decoded} frames; pass num_frames={decoded}")
            return
        if self.latent_frames(num_frames) != latent_frames:
            lo, hi = self.pixel_frame_range(latent_frames)
            raise ValueError(
                f"num_frames={num_frames} cannot be decoded from {latent_frames} latent frames "
                f"(this VAE turns {num_frames} frames into {self.latent_frames(num_frames)} latent frames). "
                f"Pick num_frames between {lo} and {hi}."
            )

    def pixel_frame_range(self, latent_frames: int) -> tuple[int, int]:
        """Smallest and largest pixel frame count that encode to ``latent_frames``."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        counts = [n for n in range(1, latent_frames * self.time_factor + 1) if self.latent_frames(n) == latent_frames]
        if not counts:
            raise ValueError(f"no pixel frame count encodes to {latent_frames} latent frames with {self}")
        return counts[0], counts[-1]

    # -- frame positions ------------------------------------------------------

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
        """Latent pixels of one side (floor division, or ceil with ``round_up_hw``)."""
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
        """Raise unless the VAE can encode frames of this size: at least 8 pixels a side.

        Any size works as in the official VAEs: the stride-2 convolutions floor, so a 240x426 frame
        gives a 30x53 latent and its last ``426 % 8`` columns only reach the edge of the last latent column.
        """
        f = self.spatial_factor
        if height < f or width < f:
            raise ValueError(f"frame size {height}x{width} (HxW) is too small for the VAE; use at least {f}x{f} pixels")

    def check_output_hw(self, height: int, width: int) -> None:
        """Raise unless a generation of ``height`` x ``width`` decodes to exactly that size.

        The decoded video is ``8 * floor(size / 8)`` pixels, so other sizes are refused with the nearest
        valid ones, except the official preset sizes (e.g. 240p 9:16 = 240x426): the official code
        conditions the model on them and decodes to the multiple of 8 below (240x424), and so do we.
        """
        if (height, width) in official_sizes():
            return
        f = self.spatial_factor
        for name, value in (("height", height), ("width", width)):
            if value % f:
                lower, upper = value // f * f, (value // f + 1) * f
                raise ValueError(
                    f"{name} {value} is not a multiple of {f}: the VAE would give {lower} pixels; use {name} "
                    f"{lower} or {upper} (or an official preset size, e.g. 240x426 from 240p 9:16)"
                )

    def check_whole_hw(self, height: int, width: int) -> None:
        """Raise unless frames of this size encode without dropping pixels (sides a multiple of 8).

        For VAE wrappers that refuse to floor silently (Open-Sora-Plan, Open-Sora 2.0); the raw official
        models floor (:meth:`check_encodable_hw`).
        """
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

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """The official VAEs' ``get_latent_size``: [T, H, W] -> [t, h, w], a None entry passing through."""
        t, h, w = input_size
        return [
            None if t is None else self.latent_frames(t),
            None if h is None else self.latent_side(h),
            None if w is None else self.latent_side(w),
        ]


def check_frame_count(num_frames: int) -> None:
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")


PER_FRAME = LatentGeometry(time_factor=1, micro_frame_size=None)  # SD-VAE (v1.0 / v1.1)
VAE_V1_2 = LatentGeometry(time_factor=4, micro_frame_size=V1_2_MICRO_FRAMES)  # Open-Sora VAE v1.2
# Open-Sora-Plan CausalVideoVAE (v1.0, v1.1, v1.2 D4; ae_stride_config [4, 8, 8], 4 channels)
OSP_CAUSAL_VAE = LatentGeometry(time_factor=4, latent_channels=4, causal=True)
# Open-Sora-Plan v1.3 WF-VAE (WFVAEModel_D8_4x8x8: 8 channels)
OSP_WF_VAE = LatentGeometry(time_factor=4, latent_channels=8, causal=True)
# Open-Sora 2.0's Hunyuan causal 3D VAE (hunyuan_vae.safetensors): 16 channels, sides rounded up
HUNYUAN_VAE = LatentGeometry(time_factor=4, latent_channels=16, causal=True, round_up_hw=True)


__all__ = [
    "DecodeChunk",
    "EncodeChunk",
    "HUNYUAN_VAE",
    "LatentGeometry",
    "OSP_CAUSAL_VAE",
    "OSP_WF_VAE",
    "PER_FRAME",
    "SPATIAL_FACTOR",
    "V1_2_MICRO_FRAMES",
    "VAE_V1_2",
    "check_frame_count",
]
