"""Test stand-in for ``comfy.model_base``: ``ModelType``, ``model_sampling`` and a ``BaseModel`` to subclass.

The stand-in never builds a unet: a model config must set ``disable_unet_model_creation`` (the native
MODEL assigns its own ``diffusion_model``), as ComfyUI honours that key.
"""

from __future__ import annotations

import enum

from torch import nn

from . import model_sampling as ms


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2
    FLOW = 6


def model_sampling(model_config, model_type):
    base, prediction = {ModelType.EPS: (ms.ModelSamplingDiscrete, ms.EPS),
                        ModelType.FLOW: (ms.ModelSamplingDiscreteFlow, ms.CONST)}[model_type]
    return type("ModelSampling", (base, prediction), {})(model_config)


class BaseModel(nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None):
        super().__init__()
        if not model_config.unet_config.get("disable_unet_model_creation", False):
            raise NotImplementedError("the stand-in builds no unet")
        self.model_config = model_config
        self.latent_format = model_config.latent_format
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.memory_usage_factor = model_config.memory_usage_factor

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return self._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        raise NotImplementedError

    def extra_conds(self, **kwargs):
        return {}

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        return self.model_sampling.noise_scaling(sigma, noise, latent_image)

    def memory_required(self, input_shape, cond_shapes={}):
        return 0

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def get_dtype(self):
        return self.diffusion_model.dtype
