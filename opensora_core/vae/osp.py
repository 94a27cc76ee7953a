"""Open-Sora-Plan VAEs on the diffusion side: latent scaling, bounded-memory options, file layouts.

:class:`OpenSoraPlanVAE` is the official ``CausalVAEModelWrapper`` / ``WFVAEModelWrapper``
(opensora/models/causalvideovae/__init__.py @v1.3.1, causal_vae/__init__.py @v1.0.0-v1.2.0) around a
:class:`~.causal_vae.CausalVAEModel` or :class:`~.wfvae.WFVAEModel` (``.vae``):

* ``encode(x)`` = ``(posterior.sample() - shift) * scale`` (a *sample*, as the official wrappers; the
  noise is injectable), ``decode(z)`` = VAE decode of ``z / scale + shift``; CausalVAE: scale 0.18215
  for all channels, shift 0 (the official ``* 0.18215`` / ``/ 0.18215``); WF-VAE: the config's
  per-channel ``scale``/``shift`` (released: 0.18215 and 0).
* It follows the project's video-VAE interface (``geometry``, ``latent_channels``, ``encode``,
  ``decode``, ``get_latent_size``; :class:`~.pipeline.VideoVAE`), except that ``decode`` returns
  (B, 3, T, H, W) where the official wrapper returns (B, T, C, H, W) (``to_official_btchw``).
* ``tiling``: None = the official untiled path; a :class:`~.causal_vae.CausalVAETiling` = the official
  CausalVAE tiling (changes the numbers); a :class:`WFVAEChunking` = the exact chunked WF-VAE path; the
  generic :class:`~.tiling.TilingOptions` (what the VAE Decode node and the out-of-memory retry pass) maps
  to either (see ``_wf_chunking`` / ``_causal_tiling``).

:func:`release_build` is the ``VAEKind.build`` of each released layout (``families/open_sora_plan.py``
declares the kinds and their marker keys; ``opensora_core.loading.load_vae`` detects, builds and loads).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..geometry import SPATIAL_FACTOR, LatentGeometry
from .causal_vae import CAUSAL_VAE_PRESETS, CausalVAEModel, CausalVAETiling
from .causal_vae import loadable_state_dict as causal_loadable
from .memory import backend_bytes
from .posterior import DiagonalGaussian, NoiseFn
from .tiling import TilingOptions
from .wfvae import WFVAE_PRESETS, WFVAEModel
from .wfvae import loadable_state_dict as wfvae_loadable

log = logging.getLogger("opensora")

CAUSAL_VAE_SCALE = 0.18215  # CausalVAEModelWrapper: sample() * 0.18215, decode(z / 0.18215)

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class WFVAEChunking:
    """Chunk sizes of the exact chunked WF-VAE path (the official ``t_chunk_dec`` 4 / ``t_chunk_enc`` 16
    coefficient frames = 32 pixel frames). Any sizes give the untiled result up to float rounding."""

    latent_frames_per_chunk: int = 4
    frames_per_chunk: int = 32

    def __post_init__(self):
        if self.latent_frames_per_chunk < 1 or self.frames_per_chunk < 1:
            raise ValueError(f"WFVAEChunking: chunk sizes must be >= 1, got {self}")


OspTiling = CausalVAETiling | WFVAEChunking | TilingOptions

# Working-memory shape model of the decoders, in units of their widest activation (``_widest_elements``):
# measured live-tensor peaks on tiny configs (tests/test_vae_memory.py) are 5.1-5.2 of it for a CausalVAE and,
# with the output video counted apart, 5.0-5.2 for a WF-VAE; chunked WF-VAE decodes hold one more (the causal
# caches); the tiled and chunked paths keep the decoded parts and their join (two videos).
DECODE_WIDTHS = 5
CHUNK_CACHE_WIDTHS = 1


# ==================================================================================================
# The diffusion-side wrapper
# ==================================================================================================


class OpenSoraPlanVAE(nn.Module):
    """An Open-Sora-Plan VAE with its diffusion-side latent scaling (see the module docstring)."""

    micro_batch_size = None  # VideoVAE interface: the whole clip goes through at once

    def __init__(self, vae: CausalVAEModel | WFVAEModel, scale: Sequence[float], shift: Sequence[float]):
        super().__init__()
        if len(scale) != vae.latent_channels or len(shift) != vae.latent_channels:
            raise ValueError(f"scale and shift need {vae.latent_channels} entries, got {len(scale)} and {len(shift)}")
        self.vae = vae
        device = next(vae.parameters()).device
        device = "cpu" if device.type == "meta" else device  # built on the meta device to load: real buffers
        for name, values in (("scale", scale), ("shift", shift)):  # [1, C, 1, 1, 1], not in the state dict
            self.register_buffer(name, torch.tensor(values, device=device).reshape(1, -1, 1, 1, 1),
                                 persistent=False)

    @classmethod
    def wrap(cls, vae: CausalVAEModel | WFVAEModel) -> OpenSoraPlanVAE:
        """The official wrapper of this model: 0.18215 for a CausalVAE, the config's scale/shift for a WF-VAE."""
        if isinstance(vae, WFVAEModel):
            return cls(vae, vae.config.scale, vae.config.shift)
        return cls(vae, (CAUSAL_VAE_SCALE,) * vae.latent_channels, (0.0,) * vae.latent_channels)

    @classmethod
    def from_official_config(cls, class_name: str, config: dict[str, Any], **factory) -> OpenSoraPlanVAE:
        """Wrap ``CausalVAEModel`` / ``WFVAEModel`` built from official kwargs (``operations``, ``device``, ``dtype``)."""
        return cls.wrap(osp_vae_class(class_name).from_official_config(dict(config), **factory))

    @classmethod
    def from_preset(cls, name: str, **factory) -> OpenSoraPlanVAE:
        """``CausalVAEModel_4x8x8-v1.0`` / ``-v1.1``, ``CausalVAEModel_D4_4x8x8``, ``WFVAEModel_D8_4x8x8``."""
        if name in WFVAE_PRESETS:
            return cls.wrap(WFVAEModel.from_preset(name, **factory))
        if name in CAUSAL_VAE_PRESETS:
            return cls.wrap(CausalVAEModel.from_preset(name, **factory))
        raise ValueError(f"unknown Open-Sora-Plan VAE preset {name!r}; known: {', '.join(presets())}")

    @property
    def geometry(self) -> LatentGeometry:
        return self.vae.geometry

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    # -- latent scaling ------------------------------------------------------------------------------

    def to_diffusion(self, z: Tensor) -> Tensor:
        """VAE latent -> diffusion latent: (z - shift) * scale."""
        return (z - self.shift.to(z)) * self.scale.to(z)

    def from_diffusion(self, latent: Tensor) -> Tensor:
        """Diffusion latent -> VAE latent: latent / scale + shift."""
        return latent / self.scale.to(latent) + self.shift.to(latent)

    # -- encode / decode -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_posterior(self, x: Tensor, *, tiling: OspTiling | None = None) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) or images (B, 3, H, W) in [-1, 1] -> the VAE posterior (unscaled)."""
        x = self._video(x)
        if tiling is None:
            return self.vae.encode(x)
        if isinstance(self.vae, WFVAEModel):
            return self.vae.chunked_encode(x, _wf_chunking(tiling).frames_per_chunk)
        return self.vae.tiled_encode(x, _causal_tiling(tiling))

    @torch.no_grad()
    def encode(self, x: Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: Tensor | NoiseFn | None = None, tiling: OspTiling | None = None) -> Tensor:
        """Video (B, 3, T, H, W) (or images (B, 3, H, W)) in [-1, 1] -> diffusion latent (B, C, ceil(T/4), H/8, W/8).

        A posterior sample (the official wrapper behaviour) with ``noise`` = the standard-normal draw
        itself (a tensor of the latent's shape: recorded draws are injected this way) or a
        :data:`~.posterior.NoiseFn`, else drawn from ``generator`` (never the global RNG);
        ``sample=False`` encodes the posterior mean.
        """
        posterior = self.encode_posterior(x, tiling=tiling)
        z = posterior.sample(noise, generator=generator) if sample else posterior.mode()
        return self.to_diffusion(z)

    @torch.no_grad()
    def decode(self, latent: Tensor, num_frames: int | None = None, *, tiling: OspTiling | None = None) -> Tensor:
        """Diffusion latent (B, C, t, h, w) -> video (B, 3, 4t - 3, 8h, 8w) in about [-1, 1], not clamped.

        ``num_frames``, when given, must be ``4t - 3`` (what t latent frames decode to).
        """
        latent = self._latent(latent)
        if num_frames is not None:
            self.geometry.check_decodable(latent.shape[2], num_frames)
        return self.decode_vae_latent(self.from_diffusion(latent), tiling=tiling)

    @torch.no_grad()
    def decode_vae_latent(self, z: Tensor, *, tiling: OspTiling | None = None) -> Tensor:
        """Decode an unscaled VAE latent (untiled, official tiling, or exact chunks)."""
        if tiling is None:
            return self.vae.decode(z)
        if isinstance(self.vae, WFVAEModel):
            return self.vae.chunked_decode(z, _wf_chunking(tiling).latent_frames_per_chunk)
        return self.vae.tiled_decode(z, _causal_tiling(tiling))

    def decode_memory_bytes(self, latent_shape: Sequence[int], num_frames: int | None = None, *,
                            tiling: OspTiling | None = None, dtype: torch.dtype | None = None,
                            backend_workspace: bool = True) -> int:
        """Working memory of :meth:`decode` of a (B, C, t, h, w) latent in bytes, weights excluded (see
        :class:`~.pipeline.VideoVAE`): the widest activations of the piece decoded at once (the whole latent, a
        chunk of latent frames, a tile) and the output video(s), plus the kernels' share."""
        b, _, t, h, w = latent_shape
        dtype = dtype or next(self.vae.parameters()).dtype
        f_t, f_s = self.geometry.time_factor, self.geometry.spatial_factor
        video = b * 3 * (f_t * (t - 1) + 1) * h * w * f_s * f_s
        if tiling is None:
            live = DECODE_WIDTHS * self._widest_elements(b, t, h, w) + video
        elif isinstance(self.vae, WFVAEModel):
            piece = min(t, _wf_chunking(tiling).latent_frames_per_chunk)
            live = (DECODE_WIDTHS + CHUNK_CACHE_WIDTHS) * self._widest_elements(b, piece, h, w) + 2 * video
        else:
            plan = _causal_tiling(tiling)
            piece = (min(t, plan.tile_latent_min_size_t if plan.temporal else t),
                     min(h, plan.tile_latent_min_size), min(w, plan.tile_latent_min_size))
            live = DECODE_WIDTHS * self._widest_elements(b, *piece) + 2 * video
        return live * dtype.itemsize + (backend_bytes(self._widest_conv_weights(), dtype) if backend_workspace else 0)

    def _widest_elements(self, b: int, t: int, h: int, w: int) -> int:
        """The decoder's widest activation for a (t, h, w) latent: a CausalVAE's last level (full size); a
        WF-VAE's second upsampling level (2 x base channels, 2t - 1 frames, a quarter of the pixels)."""
        if isinstance(self.vae, WFVAEModel):
            return b * 2 * self.vae.config.base_channels * (2 * t - 1) * 16 * h * w
        config = self.vae.config
        return b * config.hidden_size * config.hidden_size_mult[0] * (4 * t - 3) * 64 * h * w

    def _widest_conv_weights(self) -> int:
        """Weights of the decoder's largest 3x3x3 convolution."""
        if isinstance(self.vae, WFVAEModel):
            return (4 * self.vae.config.base_channels) ** 2 * 27
        config = self.vae.config
        return (config.hidden_size * max(config.hidden_size_mult)) ** 2 * 27

    def get_latent_size(self, input_size: Sequence[int | None]) -> list[int | None]:
        """[T, H, W] -> [t, h, w] (None passes through)."""
        return self.geometry.get_latent_size(input_size)

    # -- checks ----------------------------------------------------------------------------------------

    def _video(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)  # images: (B, 3, H, W) -> one-frame videos
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected a video [B, 3, T, H, W] or images [B, 3, H, W] in [-1, 1], "
                             f"got shape {tuple(x.shape)}")
        self.geometry.check_whole_hw(x.shape[3], x.shape[4])
        param = next(self.vae.parameters())
        return x.to(device=param.device, dtype=param.dtype)

    def _latent(self, z: Tensor) -> Tensor:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected a latent [B, {self.latent_channels}, t, h, w], got shape {tuple(z.shape)}")
        param = next(self.vae.parameters())
        return z.to(device=param.device, dtype=param.dtype)


def to_official_btchw(video: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B, T, C, H, W), the layout the official wrappers' ``decode`` returns."""
    return video.transpose(1, 2).contiguous()


def _wf_chunking(tiling: OspTiling | TilingOptions) -> WFVAEChunking:
    """The WF-VAE's own chunks; the generic :class:`~.tiling.TilingOptions` (the VAE Decode node, the
    out-of-memory retry) mean the default chunks: WF-VAE chunks are exact, so no spatial tile is needed."""
    if isinstance(tiling, TilingOptions):
        return WFVAEChunking()
    if not isinstance(tiling, WFVAEChunking):
        raise ValueError(f"a WF-VAE takes tiling=WFVAEChunking(...) (exact chunks), got {type(tiling).__name__}")
    return tiling


def _causal_tiling(tiling: OspTiling | TilingOptions) -> CausalVAETiling:
    """The official CausalVAE tiling; generic :class:`~.tiling.TilingOptions` become square tiles of
    ``tile_size`` latent pixels overlapping by ``tile_overlap`` (overlap factor = overlap / size) with the
    v1.2 temporal chunks (33 pixel / 16 latent frames; our choice for every version: v1.0 itself has none)."""
    if isinstance(tiling, TilingOptions):
        return CausalVAETiling.for_version(
            "v1.2", tile_sample_min_size=tiling.tile_size * SPATIAL_FACTOR, tile_latent_min_size=tiling.tile_size,
            tile_overlap_factor=tiling.tile_overlap / tiling.tile_size)
    if not isinstance(tiling, CausalVAETiling):
        raise ValueError(f"a CausalVAE takes tiling=CausalVAETiling(...) (the official tiling), "
                         f"got {type(tiling).__name__}")
    return tiling


def osp_vae_class(class_name: str) -> type[nn.Module]:
    classes = {"CausalVAEModel": CausalVAEModel, "WFVAEModel": WFVAEModel}
    if class_name not in classes:
        raise ValueError(f"unknown Open-Sora-Plan VAE class {class_name!r}; known: {', '.join(classes)}")
    return classes[class_name]


def presets() -> list[str]:
    return [*CAUSAL_VAE_PRESETS, *WFVAE_PRESETS]


# ==================================================================================================
# Building from a file (the families' VAEKind.build)
# ==================================================================================================

BuildResult = tuple["OpenSoraPlanVAE", nn.Module, dict[str, Tensor]]


def release_build(preset: str):
    """A ``VAEKind.build`` for the files of one release: (state dict, micro batch, norm groups, saved config) ->
    (wrapper on the meta device, the VAE to load strictly, the state dict in its layout).

    The architecture is the file's saved config (a released folder's ``config.json``) when there is one, else
    the release ``preset``; a file of another size then fails strict loading, naming its keys. CausalVAE
    ``loss.*`` training entries are dropped (``vae.ignored_training_keys``); WF-VAE Haar constants are checked
    and rebuilt in either key spelling (``vae.replaced_constants``).
    """
    class_name = "WFVAEModel" if preset in WFVAE_PRESETS else "CausalVAEModel"
    if preset not in WFVAE_PRESETS and preset not in CAUSAL_VAE_PRESETS:
        raise ValueError(f"unknown Open-Sora-Plan VAE preset {preset!r}; known: {', '.join(presets())}")

    def build(state_dict: StateDict, micro_batch_size: int | None, norm_num_groups: int,
              config: Mapping[str, Any] | None = None) -> BuildResult:
        cls = osp_vae_class(class_name)
        with torch.device("meta"):
            vae = cls.from_official_config(dict(config)) if config else cls.from_preset(preset)
        if not config:
            log.info("%s: no config saved with the file; building the release layout %s", class_name, preset)
        loadable = wfvae_loadable if class_name == "WFVAEModel" else causal_loadable
        return OpenSoraPlanVAE.wrap(vae), vae, loadable(vae, state_dict)

    return build


__all__ = [
    "CAUSAL_VAE_SCALE",
    "OpenSoraPlanVAE",
    "WFVAEChunking",
    "osp_vae_class",
    "presets",
    "release_build",
    "to_official_btchw",
]
