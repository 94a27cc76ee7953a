"""Video VAEs of Open-Sora: the per-frame SD-VAE wrapper (v1.0/v1.1) and the VAE v1.2 pipeline.

Both implement :class:`VideoVAE` (see the package docstring). Parameter names are the
official ones: ``module.*`` for ``VideoAutoencoderKL``; ``spatial_vae.module.*``,
``temporal_vae.*``, ``scale``, ``shift`` for ``VideoAutoencoderPipeline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..geometry import PER_FRAME, VAE_V1_2, LatentGeometry
from ..models.workspace import retained_state_bytes
from ..official_config import HF_BOOKKEEPING_KEYS
from .autoencoder_kl import TORCH_OPS, AutoencoderKL, AutoencoderKLConfig, autoencoder_config_for
from .memory import (
    backend_bytes,
    per_frame_decode_bytes,
    spatial_conv_weights,
    temporal_conv_weights,
    temporal_decode_peak_elements,
)
from .posterior import NoiseFn, gaussian_noise, sample_posterior
from .temporal import TemporalVAE, TemporalVAEConfig
from .tiling import TilingOptions, tiled_map

# follows opensora/models/vae/vae.py VideoAutoencoderKL: hard-coded, the AutoencoderKL config's own factor is unused
SPATIAL_SCALING_FACTOR = 0.18215

# released VAE v1.2 constants (opensora/models/vae/vae.py OpenSoraVAE_V1_2)
V1_2_SHIFT = (-0.10, 0.34, 0.27, 0.98)
V1_2_SCALE = (3.85, 2.32, 2.33, 3.06)
V1_2_MICRO_FRAME_SIZE = VAE_V1_2.micro_frame_size  # 17 pixel frames per temporal chunk (geometry)
OFFICIAL_MICRO_BATCH_SIZE = 4

# keys of official configs that only concern downloading / training bookkeeping
_LOADING_KEYS = {"type", "from_pretrained", "cache_dir", "local_files_only", "subfolder"}
# Hugging Face bookkeeping and the training switch of the official VAE v1.2 config
_HF_KEYS = HF_BOOKKEEPING_KEYS | {"freeze_vae_2d"}


class VideoVAE(Protocol):
    """What the sampler pipeline, the nodes and the trainer use of a video VAE."""

    geometry: LatentGeometry
    micro_batch_size: int | None

    @property
    def latent_channels(self) -> int: ...

    def encode(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: NoiseFn | None = None, tiling: TilingOptions | None = None) -> Tensor: ...

    def decode(self, z: Tensor, num_frames: int, *, tiling: TilingOptions | None = None) -> Tensor: ...

    def decode_memory_bytes(self, latent_shape: Sequence[int], num_frames: int | None = None, *,
                            tiling: TilingOptions | None = None, dtype: torch.dtype | None = None,
                            backend_workspace: bool = True) -> int:
        """Bytes of working memory (weights excluded) that ``decode`` of a ``latent_shape`` (B, C, t, h, w)
        latent to ``num_frames`` frames (None: the most it can decode to) needs in ``dtype`` (None: the VAE's),
        from shapes only, for a memory manager to make room before it runs. ``backend_workspace`` adds what the
        kernels hold beside the live tensors (:mod:`opensora_core.models.workspace`)."""
        ...

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]: ...


# ---------------------------------------------------------------------------
# v1.0 / v1.1: SD-VAE on every frame
# ---------------------------------------------------------------------------


class VideoAutoencoderKL(nn.Module):
    """SD-VAE applied frame by frame, ``micro_batch_size`` frames at a time (``None``: all at once).

    follows opensora/models/vae/vae.py VideoAutoencoderKL: frames in (b t) order, latent = posterior
    sample * 0.18215, decode(z / 0.18215); time is not compressed.
    """

    geometry = PER_FRAME

    def __init__(self, autoencoder: AutoencoderKLConfig, micro_batch_size: int | None = OFFICIAL_MICRO_BATCH_SIZE, *,
                 operations=TORCH_OPS, device=None, dtype=None):
        super().__init__()
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        self.module = AutoencoderKL(autoencoder, operations=operations, device=device, dtype=dtype)
        self.micro_batch_size = micro_batch_size

    @classmethod
    def from_official_config(cls, config: dict[str, Any], autoencoder_config: dict | None = None,
                             **kwargs) -> VideoAutoencoderKL:
        """From the official kwargs (``from_pretrained`` names the AutoencoderKL; ``micro_batch_size``).

        ``autoencoder_config`` (a diffusers AutoencoderKL config dict) replaces the architecture
        looked up from ``from_pretrained``.
        """
        return cls(*_spatial_arch(config, autoencoder_config), **kwargs)

    @property
    def latent_channels(self) -> int:
        return self.module.latent_channels

    # -- encode -------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: NoiseFn | None = None, tiling: TilingOptions | None = None) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> latent [B, 4, T, H/8, W/8] (posterior sample * 0.18215)."""
        x = _check_video(x, self.module.config.in_channels, self)
        if sample and noise is None:
            noise = gaussian_noise(generator, x.device)
        b, _, t, h, w = x.shape
        lh, lw = self.geometry.latent_hw(h, w)
        out = x.new_empty(b * t, self.latent_channels, lh, lw)  # frames in (b t) order
        for start, stop in _batches(b * t, self._frames_at_once(tiling)):
            frames = _frames(x, start, stop)  # (n, 3, H, W)
            moments = self._moments(frames, (lh, lw), tiling)
            out[start:stop] = sample_posterior(moments, sample=sample, noise=noise, stage="spatial")
        out = out.mul_(SPATIAL_SCALING_FACTOR)
        return out.reshape(b, t, *out.shape[1:]).transpose(1, 2).contiguous()  # (B, 4, T, h, w)

    def _moments(self, frames: Tensor, latent_hw: tuple[int, int], tiling: TilingOptions | None) -> Tensor:
        ae = self.module
        if tiling is None:
            return ae.encode_moments(frames)
        features = tiled_map(ae.encode_head, frames, latent_hw, in_scale=ae.spatial_factor,
                             out_scale=ae.split_factor, options=tiling)  # (n, C, 2h, 2w)
        return ae.encode_tail(features)

    # -- decode -------------------------------------------------------------

    @torch.no_grad()
    def decode(self, z: Tensor, num_frames: int | None = None, *, tiling: TilingOptions | None = None) -> Tensor:
        """Latent [B, 4, T, h, w] -> video [B, 3, T, 8h, 8w] (not clamped).

        The result is a (B, 3, T, H, W) view of a frame-major buffer, so no copy of the video is made.
        """
        z = _check_latent(z, self.latent_channels, self)
        b, _, t, h, w = z.shape
        self.geometry.check_decodable(t, t if num_frames is None else num_frames)
        f = self.module.spatial_factor
        out = z.new_empty(b, t, self.module.config.out_channels, h * f, w * f)
        rows = out.view(b * t, *out.shape[2:])  # (B*T, 3, H, W)
        for start, stop in _batches(b * t, self._frames_at_once(tiling)):
            latents = _frames(z, start, stop) / SPATIAL_SCALING_FACTOR  # (n, 4, h, w)
            rows[start:stop] = self._decode_frames(latents, tiling)
        return out.transpose(1, 2)  # (B, 3, T, H, W)

    def _decode_frames(self, latents: Tensor, tiling: TilingOptions | None) -> Tensor:
        ae = self.module
        if tiling is None:
            return ae.decode(latents)
        features = ae.decode_trunk(latents)  # (n, C, 2h, 2w): whole frame, incl. the global attention
        hw = tuple(latents.shape[-2:])
        return tiled_map(ae.decode_tail, features, hw, in_scale=ae.split_factor, out_scale=ae.spatial_factor,
                         options=tiling)

    # -- sizes --------------------------------------------------------------

    def decode_memory_bytes(self, latent_shape: Sequence[int], num_frames: int | None = None, *,
                            tiling: TilingOptions | None = None, dtype: torch.dtype | None = None,
                            backend_workspace: bool = True) -> int:
        """Working memory of :meth:`decode` of a (B, C, t, h, w) latent in bytes, weights excluded (see
        :class:`VideoVAE`): a micro-batch's decode, its latents and the output video, plus the kernels' share."""
        b, _, t, h, w = latent_shape
        dtype = dtype or _parameter(self).dtype
        live = per_frame_decode_bytes(self.module.config, self.micro_batch_size, b, (t, h, w), dtype.itemsize, tiling)
        return live + (backend_bytes(spatial_conv_weights(self.module.config), dtype, conv_dims=2)
                       if backend_workspace else 0)

    def _frames_at_once(self, tiling: TilingOptions | None) -> int | None:
        return self.micro_batch_size if tiling is None else tiling.frames_per_batch

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] -> [t, h, w] (None passes through), as the official ``get_latent_size``."""
        return self.geometry.get_latent_size(input_size)


# ---------------------------------------------------------------------------
# v1.2: SD-VAE per frame, then the causal temporal VAE per 17-frame chunk
# ---------------------------------------------------------------------------


class VideoAutoencoderPipeline(nn.Module):
    """Open-Sora VAE v1.2: spatial SD-VAE, temporal VAE (4x in time), per-channel normalisation.

    follows opensora/models/vae/vae.py VideoAutoencoderPipeline: encode = spatial encode of every frame,
    temporal encode per ``micro_frame_size`` pixel-frame chunk (front-padded), (z - shift) / scale;
    decode = z * scale + shift, temporal decode per chunk (front frames dropped), spatial decode.
    """

    def __init__(self, spatial: AutoencoderKLConfig, temporal: TemporalVAEConfig, *,
                 micro_batch_size: int | None = OFFICIAL_MICRO_BATCH_SIZE,
                 micro_frame_size: int | None = V1_2_MICRO_FRAME_SIZE,
                 scale: Sequence[float] | float = V1_2_SCALE, shift: Sequence[float] | float = V1_2_SHIFT,
                 operations=TORCH_OPS, device=None, dtype=None):
        super().__init__()
        if spatial.latent_channels != temporal.in_out_channels:
            raise ValueError(
                f"spatial latent_channels {spatial.latent_channels} != "
                f"temporal in_out_channels {temporal.in_out_channels}"
            )
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.spatial_vae = VideoAutoencoderKL(spatial, micro_batch_size, **factory)
        self.temporal_vae = TemporalVAE(temporal, **factory)
        self.micro_frame_size = micro_frame_size
        self.geometry = LatentGeometry(time_factor=temporal.time_factor, micro_frame_size=micro_frame_size)
        self.register_buffer("scale", _channel_buffer(scale, device, dtype))
        self.register_buffer("shift", _channel_buffer(shift, device, dtype))

    @classmethod
    def from_official_config(cls, config: dict[str, Any], autoencoder_config: dict | None = None,
                             **kwargs) -> VideoAutoencoderPipeline:
        """From ``VideoAutoencoderPipelineConfig`` kwargs (the released ``config.json``).

        ``vae_2d.from_pretrained`` names the spatial AutoencoderKL (known hub ids map to their
        architecture, nothing is downloaded); ``autoencoder_config`` (a diffusers AutoencoderKL config
        dict) replaces it. ``vae_temporal`` is ``VAE_Temporal_SD`` or ``VAE_Temporal`` with kwargs.
        """
        config = {k: v for k, v in config.items() if k not in _HF_KEYS and not k.startswith("_")}
        if config.pop("cal_loss", False):
            raise ValueError("VideoAutoencoderPipeline: cal_loss=True (VAE training mode) is not supported")
        if config.pop("from_pretrained", None) is not None:
            raise ValueError(
                "VideoAutoencoderPipeline: from_pretrained is not read here; load the weights with load_vae"
            )
        vae_2d = dict(config.pop("vae_2d"))
        if vae_2d.get("type", "VideoAutoencoderKL") != "VideoAutoencoderKL":
            raise ValueError(f"vae_2d type {vae_2d['type']!r} is not supported (only VideoAutoencoderKL)")
        spatial, micro_batch_size = _spatial_arch(vae_2d, autoencoder_config)
        temporal = TemporalVAEConfig.from_official(config.pop("vae_temporal"))
        unknown = set(config) - {"micro_frame_size", "scale", "shift"}
        if unknown:
            raise ValueError(f"VideoAutoencoderPipeline: unknown option(s) {sorted(unknown)}")
        return cls(spatial, temporal, micro_batch_size=micro_batch_size, **config, **kwargs)

    @property
    def latent_channels(self) -> int:
        return self.temporal_vae.config.embed_dim

    @property
    def micro_batch_size(self) -> int | None:
        return self.spatial_vae.micro_batch_size

    @torch.no_grad()
    def encode(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: NoiseFn | None = None, tiling: TilingOptions | None = None) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalised latent [B, 4, t, H/8, W/8] (t from ``geometry``).

        Draw order as the official code: every spatial draw, then one temporal draw per chunk.
        """
        if sample and noise is None:
            noise = gaussian_noise(generator, x.device)
        x_z = self.spatial_vae.encode(x, sample=sample, noise=noise, tiling=tiling)  # (B, 4, T, h, w)
        b, _, t, h, w = x_z.shape
        z = x_z.new_empty(b, self.latent_channels, self.geometry.latent_frames(t), h, w)
        offset = 0
        for chunk in self.geometry.encode_chunks(t):
            moments = self.temporal_vae.encode_moments(x_z[:, :, chunk.start:chunk.end], chunk.pad)
            z[:, :, offset:offset + chunk.latent_frames] = sample_posterior(
                moments, sample=sample, noise=noise, stage="temporal"
            )  # (B, 4, latent_frames, h, w)
            offset += chunk.latent_frames
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    @torch.no_grad()
    def decode(self, z: Tensor, num_frames: int, *, tiling: TilingOptions | None = None) -> Tensor:
        """Normalised latent [B, 4, t, h, w] -> video [B, 3, num_frames, 8h, 8w] (not clamped).

        ``num_frames`` is the pixel frame count wanted; it must encode to ``t`` latent frames.
        """
        z = _check_latent(z, self.latent_channels, self)
        self.geometry.check_decodable(z.shape[2], num_frames)
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        b, _, _, h, w = z.shape
        x_z = z.new_empty(b, self.temporal_vae.config.in_out_channels, num_frames, h, w)
        frame = 0
        for chunk in self.geometry.decode_chunks(num_frames):
            part = self.temporal_vae.decode(z[:, :, chunk.latent_start:chunk.latent_end], chunk.drop)
            x_z[:, :, frame:frame + chunk.num_frames] = part  # (B, 4, n, h, w)
            frame += chunk.num_frames
        return self.spatial_vae.decode(x_z, num_frames, tiling=tiling)

    def decode_memory_bytes(self, latent_shape: Sequence[int], num_frames: int | None = None, *,
                            tiling: TilingOptions | None = None, dtype: torch.dtype | None = None,
                            backend_workspace: bool = True) -> int:
        """Working memory of :meth:`decode` to ``num_frames`` frames (None: the most ``t`` decodes to) in bytes,
        weights excluded: the normalised latent and the temporal output beside the larger of the two stages'
        peaks (the temporal VAE on a chunk; the image stage, :meth:`VideoAutoencoderKL.decode_memory_bytes`)."""
        b, _, t, h, w = latent_shape
        dtype = dtype or _parameter(self).dtype
        num_frames = num_frames or self.geometry.pixel_frame_range(t)[1]
        spatial = self.spatial_vae.decode_memory_bytes((b, self.latent_channels, num_frames, h, w), tiling=tiling,
                                                       dtype=dtype, backend_workspace=backend_workspace)
        chunk = min(t, self.geometry.latent_chunk or t)  # latent frames the temporal VAE decodes at once
        temporal = temporal_decode_peak_elements(self.temporal_vae.config, b, chunk, h, w) * dtype.itemsize
        if backend_workspace:
            temporal += backend_bytes(temporal_conv_weights(self.temporal_vae.config), dtype)
            # the image stage runs after the temporal one: the 3-D convolutions' backend state is still held
            spatial += retained_state_bytes(dtype, 3) - retained_state_bytes(dtype, 2)
        latents = b * self.latent_channels * (t + num_frames) * h * w * dtype.itemsize  # z, x_z
        return max(spatial, temporal) + latents

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] -> [t, h, w] (None passes through), as the official ``get_latent_size``."""
        return self.geometry.get_latent_size(input_size)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _spatial_arch(config: dict[str, Any], autoencoder_config: dict | None) -> tuple[AutoencoderKLConfig, int | None]:
    """(AutoencoderKL architecture, micro_batch_size) from official ``VideoAutoencoderKL`` kwargs."""
    unknown = set(config) - _LOADING_KEYS - {"micro_batch_size"}
    if unknown:
        raise ValueError(f"VideoAutoencoderKL: unknown option(s) {sorted(unknown)}")
    if autoencoder_config is not None:
        arch = AutoencoderKLConfig.from_diffusers(autoencoder_config)
    else:
        arch = autoencoder_config_for(config.get("from_pretrained"))
    return arch, config.get("micro_batch_size")


def _channel_buffer(values: Sequence[float] | float, device, dtype) -> Tensor:
    """[1, C, 1, 1, 1] per-channel constants (a 0-d tensor for a scalar), as the official buffers."""
    t = torch.tensor(values, dtype=torch.float32, device=device)
    t = t.reshape(1, -1, 1, 1, 1) if t.ndim else t
    return t if dtype is None else t.to(dtype)


def _parameter(module: nn.Module) -> Tensor:
    return next(module.parameters())


def _check_video(x: Tensor, channels: int, module: nn.Module) -> Tensor:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(f"expected a video [B, {channels}, T, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    module.geometry.check_encodable_hw(x.shape[3], x.shape[4])
    p = _parameter(module)
    return x.to(device=p.device, dtype=p.dtype)


def _check_latent(z: Tensor, channels: int, module: nn.Module) -> Tensor:
    if z.ndim != 5 or z.shape[1] != channels:
        raise ValueError(f"expected a latent [B, {channels}, T, h, w], got shape {tuple(z.shape)}")
    p = _parameter(module)
    return z.to(device=p.device, dtype=p.dtype)


def _batches(total: int, size: int | None) -> list[tuple[int, int]]:
    size = size or total
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _frames(video: Tensor, start: int, stop: int) -> Tensor:
    """Frames ``start..stop`` of ``video`` [B, C, T, H, W] in (b t) order -> [n, C, H, W] (only those are copied)."""
    t = video.shape[2]
    return torch.stack([video[n // t, :, n % t] for n in range(start, stop)])


