"""Test stand-in for ``comfy.model_patcher``: a ModelPatcher with devices, model options and object patches.

``patched()`` puts the object patches (e.g. a settings node's ``model_sampling``) on the model while a
sampler runs, as ComfyUI does when it loads a patched model.
"""

from __future__ import annotations

import contextlib
import copy


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.full_loads = 0
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}
        self.patches = {}

    def clone(self):
        n = ModelPatcher(self.model, self.load_device, self.offload_device)
        n.model_options = copy.deepcopy(self.model_options)
        n.object_patches = dict(self.object_patches)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        return self.object_patches.get(name, getattr(self.model, name))

    def set_model_denoise_mask_function(self, denoise_mask_function):
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_cfg_function"] = sampler_cfg_function

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for key, patch in patches.items():
            self.patches.setdefault(key, []).append((strength_patch, patch, strength_model))
        return list(patches)

    def model_dtype(self):
        return self.model.get_dtype()

    @contextlib.contextmanager
    def patched(self):
        saved = {name: getattr(self.model, name) for name in self.object_patches}
        for name, obj in self.object_patches.items():
            setattr(self.model, name, obj)
        try:
            yield self.model
        finally:
            for name, obj in saved.items():
                setattr(self.model, name, obj)
