"""Test stand-in for ``comfy.ops``: layers that mark themselves castable, as ComfyUI's operations do."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn


class Linear(nn.Linear):
    comfy_cast_weights = False


class Conv3d(nn.Conv3d):
    comfy_cast_weights = False


disable_weight_init = SimpleNamespace(Linear=Linear, Conv3d=Conv3d)


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False, fp8_optimizations=False,
                    scaled_fp8=None):
    return disable_weight_init
