"""Test stand-in for ``comfy.model_patcher``: a ModelPatcher that only remembers its devices."""

from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.full_loads = 0
