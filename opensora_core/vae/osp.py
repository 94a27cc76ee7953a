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
  CausalVAE tiling (changes the numbers); a :class:`WFVAEChunking` = the exact chunked WF-VAE path.

:func:`detect_osp_vae` names the layout of a state dict (``opensora_core.loading.osp_vae.load_osp_vae``
detects, builds and loads strictly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..geometry import LatentGeometry
from .causal_vae import CAUSAL_VAE_PRESETS, CausalVAEModel, CausalVAETiling
from .posterior import DiagonalGaussian, NoiseFn
from .wfvae import WFVAE_PRESETS, WFVAEModel

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


OspTiling = CausalVAETiling | WFVAEChunking


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
        param = next(vae.parameters())
        for name, values in (("scale", scale), ("shift", shift)):  # [1, C, 1, 1, 1], not in the state dict
            self.register_buffer(name, torch.tensor(values, device=param.device).reshape(1, -1, 1, 1, 1),
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


def _wf_chunking(tiling: OspTiling) -> WFVAEChunking:
    if not isinstance(tiling, WFVAEChunking):
        raise ValueError(f"a WF-VAE takes tiling=WFVAEChunking(...) (exact chunks), got {type(tiling).__name__}")
    return tiling


def _causal_tiling(tiling: OspTiling) -> CausalVAETiling:
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
# What does a state dict hold?
# ==================================================================================================

# layout -> (official class, release preset, description)
LAYOUTS: dict[str, tuple[str, str, str]] = {
    "causalvae_v1_0": ("CausalVAEModel", "CausalVAEModel_4x8x8-v1.0",
                       "the Open-Sora-Plan v1.0 CausalVideoVAE (CausalVAEModel_4x8x8, all-3D layout)"),
    "causalvae_v1_1": ("CausalVAEModel", "CausalVAEModel_4x8x8-v1.1",
                       "the Open-Sora-Plan v1.1 CausalVideoVAE (CausalVAEModel_4x8x8, TimeDownsampleRes2x layout)"),
    "causalvae_v1_2": ("CausalVAEModel", "CausalVAEModel_D4_4x8x8",
                       "the Open-Sora-Plan v1.2 CausalVideoVAE (CausalVAEModel_D4_4x8x8)"),
    "wfvae": ("WFVAEModel", "WFVAEModel_D8_4x8x8", "the Open-Sora-Plan v1.3 WF-VAE (WFVAEModel_D8_4x8x8)"),
}
OSP_DIT_MARKERS = ("transformer_blocks.0.attn1.to_q.weight", "adaln_single.linear.weight")


def detect_osp_vae(state_dict: StateDict) -> str | None:
    """The Open-Sora-Plan VAE layout of ``state_dict`` (a key of :data:`LAYOUTS`), or None."""
    keys = set(state_dict)
    if "encoder.down1.0.weight" in keys and any("wavelet_tranform" in k or "wavelet_transform" in k for k in keys):
        return "wfvae"
    if "decoder.conv_in.conv.weight" not in keys or "encoder.down.0.block.0.norm1.weight" not in keys:
        return None
    if "encoder.conv_in.conv.weight" in keys:
        return "causalvae_v1_0"
    if any(k.endswith("time_downsample.mix_factor") for k in keys):
        return "causalvae_v1_1"
    return "causalvae_v1_2"


__all__ = [
    "CAUSAL_VAE_SCALE",
    "LAYOUTS",
    "OpenSoraPlanVAE",
    "WFVAEChunking",
    "OSP_DIT_MARKERS",
    "detect_osp_vae",
    "osp_vae_class",
    "presets",
    "to_official_btchw",
]
