"""Video VAEs: SD-VAE (v1.0/v1.1, per frame), the Open-Sora VAE v1.2 (4x in time) and the Hunyuan
causal 3D VAE of Open-Sora 2.0 (4x in time, 16 channels).

Every video VAE here implements :class:`VideoVAE`, the interface the sampler
pipeline, the nodes and the trainer use:

``geometry: LatentGeometry``
    pixel <-> latent sizes and frame counts (:mod:`opensora_core.geometry`):
    ``PER_FRAME`` for the SD-VAE wrapper, 17-frame chunks / 4x time for VAE v1.2.
``latent_channels: int`` (4) and ``micro_batch_size: int | None``
    frames the SD-VAE stage processes at once untiled (official: 4; None = all).
``encode(x, *, sample=True, generator=None, noise=None, tiling=None) -> z``
    ``x`` [B, 3, T, H, W] in [-1, 1], H and W multiples of 8. Returns the latent
    [B, 4, t, H/8, W/8]: a posterior *sample* as the official code does, or the
    posterior mean with ``sample=False``. Noise comes from ``noise`` (a
    :data:`~.posterior.NoiseFn`, e.g. :class:`~.posterior.RecordedNoise`), else from
    ``generator``, else from a fresh OS-seeded generator; never from the global RNG.
``decode(z, num_frames, *, tiling=None) -> x``
    ``num_frames`` is the pixel frame count wanted (it must encode to ``t``; VAE v1.2
    cannot know it from ``z`` alone). Returns [B, 3, num_frames, 8h, 8w], not clamped.
``get_latent_size([T, H, W]) -> [t, h, w]``
    as the official method (None passes through).

Both run without autograd, in the VAE's dtype and on its device (inputs are moved).
``tiling=None`` is the official, exact computation; a :class:`TilingOptions` bounds
memory further (one frame at a time, spatial tiles with linear blending; slightly
approximate). :func:`decode_with_fallback` retries a decode tiled when it runs out of
memory. ``opensora_core.loading.load_vae`` detects a file and builds the right wrapper.

Modules: :mod:`.autoencoder_kl` (SD-VAE), :mod:`.temporal` (VAE v1.2 temporal stage),
:mod:`.pipeline` (the video wrappers), :mod:`.keys` (state-dict layouts), :mod:`.shapes`
(architecture from a state dict), :mod:`.posterior`, :mod:`.tiling`, :mod:`.hunyuan` (Open-Sora 2.0's
``AutoencoderKLCausal3D``: the same interface, but ``tiling`` takes a :class:`HunyuanTiling`, the official
tiling, and ``None`` means the config's own tiling), the Open-Sora-Plan VAEs :mod:`.causal_vae`
(``CausalVAEModel``, v1.0-v1.2) and :mod:`.wfvae` (``WFVAEModel``, v1.3) with their blocks in
:mod:`.osp_blocks` and the diffusion-side wrapper :class:`~.osp.OpenSoraPlanVAE` (:mod:`.osp`).

A new VAE: add its module here and one line to ``_CLASSES`` (official class name -> our class), so
``opensora_core.families.build_model`` builds it from its official config.
"""

from __future__ import annotations

import importlib

from torch import nn

from .autoencoder_kl import AUTOENCODER_KL_PRESETS, AutoencoderKL, AutoencoderKLConfig
from .hunyuan import BOUNDED_TILING, HunyuanTiling, HunyuanVAE, HunyuanVAEConfig
from .keys import to_diffusers_layout, to_ldm_layout
from .pipeline import VideoAutoencoderKL, VideoAutoencoderPipeline, VideoVAE
from .posterior import NoiseFn, RecordedNoise, gaussian_noise
from .temporal import TEMPORAL_VAE_PRESETS, TemporalVAE, TemporalVAEConfig
from .tiling import TilingOptions, decode_with_fallback

# official class name -> (module relative to this package, our class)
_CLASSES: dict[str, tuple[str, str]] = {
    "VideoAutoencoderPipeline": (".pipeline", "VideoAutoencoderPipeline"),
    "VideoAutoencoderKL": (".pipeline", "VideoAutoencoderKL"),
    "diffusers.AutoencoderKL": (".autoencoder_kl", "AutoencoderKL"),
    "AutoencoderKL": (".autoencoder_kl", "AutoencoderKL"),
    "CausalVAEModel": (".causal_vae", "CausalVAEModel"),  # Open-Sora-Plan v1.0-v1.2 CausalVideoVAE
    "WFVAEModel": (".wfvae", "WFVAEModel"),  # Open-Sora-Plan v1.3 WF-VAE
    "AutoencoderKLCausal3D": (".hunyuan", "HunyuanVAE"),  # Open-Sora 2.0 Hunyuan VAE
}


def class_names() -> list[str]:
    """Official class names of the VAEs in this package."""
    return list(_CLASSES)


def vae_class(class_name: str) -> type[nn.Module]:
    """Our class for an official VAE class name."""
    if class_name not in _CLASSES:
        raise ValueError(f"unknown VAE class {class_name!r}; known: {', '.join(_CLASSES)}")
    module, attr = _CLASSES[class_name]
    return getattr(importlib.import_module(module, __package__), attr)


__all__ = [
    "AUTOENCODER_KL_PRESETS",
    "AutoencoderKL",
    "AutoencoderKLConfig",
    "BOUNDED_TILING",
    "HunyuanTiling",
    "HunyuanVAE",
    "HunyuanVAEConfig",
    "NoiseFn",
    "RecordedNoise",
    "TEMPORAL_VAE_PRESETS",
    "TemporalVAE",
    "TemporalVAEConfig",
    "TilingOptions",
    "VideoAutoencoderKL",
    "VideoAutoencoderPipeline",
    "VideoVAE",
    "decode_with_fallback",
    "class_names",
    "gaussian_noise",
    "to_diffusers_layout",
    "to_ldm_layout",
    "vae_class",
]
