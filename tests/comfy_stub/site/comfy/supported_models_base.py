"""Test stand-in for ``comfy.supported_models_base``: the model-config base class."""

from __future__ import annotations

import torch

from . import latent_formats


class BASE:
    unet_config: dict = {}
    sampling_settings: dict = {}
    latent_format = latent_formats.LatentFormat
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0
    manual_cast_dtype = None
    custom_operations = None

    def __init__(self, unet_config):
        self.unet_config = dict(unet_config)
        self.sampling_settings = dict(self.sampling_settings)
        self.latent_format = self.latent_format() if isinstance(self.latent_format, type) else self.latent_format

    def set_inference_dtype(self, dtype, manual_cast_dtype):
        self.unet_config["dtype"] = dtype
        self.manual_cast_dtype = manual_cast_dtype
