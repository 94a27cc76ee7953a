"""Test stand-in for ``comfy.model_management``: CPU devices, a load log and the interrupt flag."""

from __future__ import annotations

import torch

LOADS: list[object] = []  # patchers passed to load_models_gpu, in order
REQUIRED: list[int] = []  # memory_required of each load_models_gpu call
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


text_encoder_device = text_encoder_offload_device = vae_device = vae_offload_device = unet_offload_device
intermediate_device = unet_offload_device


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    REQUIRED.append(memory_required)
    for patcher in models:
        LOADS.append(patcher)
        patcher.model.to(patcher.load_device)
        patcher.full_loads += int(force_full_load)


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float32,), weight_dtype=None):
    return torch.float32  # the stand-in computes on the CPU in float32


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float32,)):
    return None if weight_dtype == torch.float32 else torch.float32
