"""The native ComfyUI MODEL: our diffusion model as the ``diffusion_model`` of a ComfyUI ``BaseModel``.

The classes subclass ComfyUI's (``comfy_bridge.native_api`` probes and hands them over; this module
imports no ComfyUI), so they are built once, on first use, by :func:`native_classes`:

* ``OpenSoraModelConfig`` (a ``supported_models_base.BASE``): no unet creation by ComfyUI, the family's
  ``sampling_settings``, our latent format, the inference dtypes; never added to ComfyUI's model list,
  so its detection (which takes these files for PixArt) is left alone;
* ``OpenSoraModel`` (a ``model_base.BaseModel``): ``diffusion_model`` is the core model itself, built with
  ComfyUI's operations (partial loading casts Linear/Conv3d weights per call; the tables and buffers
  the model uses directly are cast where used), so LoRA keys ``diffusion_model.<official key>`` map
  onto it; everything family-specific goes through the family's ``NativeAdapter``;
* ``OpenSoraLatentFormat``: model-space latents (scale 1), 3 latent dimensions, the live-preview map of
  the VAE loaded for that latent space (``nodes/preview.py``).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

from ..opensora_core.checkpoints import read_checkpoint, shape_of
from ..opensora_core.families import Family
from ..opensora_core.loading import load_dit, model_family
from . import preview
from .comfy_bridge import NativeAPI, devices
from .native_adapters import adapter_for

log = logging.getLogger("opensora")

SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)  # official inference: bf16; fp16 is cast to one of these


@dataclass(frozen=True)
class NativeClasses:
    config: type
    model: type
    latent_format: type


@functools.cache
def native_classes(api: NativeAPI) -> NativeClasses:
    """The three classes, subclassing the probed ComfyUI ones (built once per ComfyUI API)."""

    class OpenSoraLatentFormat(api.LatentFormat):
        latent_dimensions = 3
        taesd_decoder_name = None  # TAESD previews are 2-D; ours is the fitted linear map

        def __init__(self, geometry, channels: int):
            self.geometry = geometry
            self.latent_channels = channels
            self.scale_factor = 1.0  # LATENTs hold model-space latents (what our VAE nodes give and take)

        @property
        def latent_rgb_factors(self):
            found = preview.active(self.geometry)
            return None if found is None else [list(row) for row in found.weight]

        @property
        def latent_rgb_factors_bias(self):
            found = preview.active(self.geometry)
            return None if found is None else list(found.bias)

    class OpenSoraModelConfig(api.BASE):
        supported_inference_dtypes = list(SUPPORTED_DTYPES)

        def __init__(self, adapter, channels: int):
            self.sampling_settings = dict(adapter.sampling_settings)
            super().__init__({"disable_unet_model_creation": True, "in_channels": channels})
            self.latent_format = OpenSoraLatentFormat(adapter.geometry, channels)
            self.adapter = adapter

    class OpenSoraModel(api.BaseModel):
        def __init__(self, config, diffusion_model, device=None):
            super().__init__(config, model_type=getattr(api.ModelType, config.adapter.model_type), device=device)
            self.diffusion_model = diffusion_model  # the core model itself: LoRA keys are diffusion_model.<key>
            self.adapter = config.adapter

        def extra_conds(self, **kwargs):
            return {k: api.CONDRegular(v) for k, v in self.adapter.conds(self.diffusion_model, **kwargs).items()}

        def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
            sigma = t
            xc = self.model_sampling.calculate_input(sigma, x)  # (B, C, T, h, w)
            timestep = self.model_sampling.timestep(sigma).float()
            out = self.adapter.predict(self.diffusion_model, xc, timestep, sigma, kwargs, transformer_options)
            return self.model_sampling.calculate_denoised(sigma, out, x)

        def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
            return latent_image  # kept frames enter clean; the model sees them with timestep 0 (x_mask)

        def memory_required(self, input_shape, cond_shapes={}):
            return self.adapter.memory_bytes(self.diffusion_model, input_shape)

    return NativeClasses(OpenSoraModelConfig, OpenSoraModel, OpenSoraLatentFormat)


def load_native(api: NativeAPI, path: str, weight_dtype: torch.dtype | None):
    """A ``ModelPatcher`` around our model as a native ComfyUI MODEL; ``weight_dtype`` None lets ComfyUI pick
    (``unet_dtype``; compute is cast where the device lacks that dtype, ``unet_manual_cast``)."""
    family = model_family(path)
    adapter = adapter_for(family)
    where = devices("diffusion")
    supported = list(SUPPORTED_DTYPES)
    dtype = weight_dtype or api.unet_dtype(device=where.load, model_params=parameter_count(path),
                                           supported_dtypes=supported)
    compute = api.unet_manual_cast(dtype, where.load, supported)
    operations = api.pick_operations(dtype, compute, load_device=where.load)
    loaded = load_dit(path, dtype=dtype, device=where.offload, operations=operations)
    if compute is not None:
        loaded.model.compute_dtype = compute
    classes = native_classes(api)
    config = classes.config(adapter, adapter.latent_channels(loaded.model))
    config.set_inference_dtype(dtype, compute)
    model = classes.model(config, loaded.model, device=where.offload)
    patcher = api.ModelPatcher(model, load_device=where.load, offload_device=where.offload)
    install_options(patcher, adapter)
    log.info("loaded %s (%s) as a native MODEL (%s, compute %s)", family.model.class_name, family.title, dtype,
             compute or dtype)
    return patcher


def parameter_count(path: str) -> int:
    """Numbers stored in a weights file, from its header (ComfyUI picks the dtype by model size)."""
    state = read_checkpoint(path).state_dict
    return sum(math.prod(shape_of(state, key)) for key in state)


def install_options(patcher, adapter) -> None:
    """The family's model options: its frame rule as the denoise-mask function (a single slot: a later
    DifferentialDiffusion node would replace it; 2.0 has none) and, for v1.1, channel-limited guidance."""
    rule = adapter.denoise_mask_function()
    if rule is not None:
        patcher.set_model_denoise_mask_function(rule)
    guide = adapter.cfg_function()
    if guide is not None:
        patcher.set_model_sampler_cfg_function(guide)


def family_of_patcher(patcher) -> Family:
    """The family of a native MODEL (raises naming the input when the MODEL is not ours)."""
    adapter = getattr(getattr(patcher, "model", None), "adapter", None)
    if adapter is None:
        raise ValueError("model: not an Open-Sora native MODEL; load it with 'Open-Sora Model Loader (native MODEL)'")
    return adapter.family
