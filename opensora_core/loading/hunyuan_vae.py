"""Loading the Open-Sora 2.0 Hunyuan VAE (``hunyuan_vae.safetensors``): build on the meta device, load strictly.

The released file has no config and no prefix; its architecture is the ``"hunyuan-vae"`` preset of
:class:`~opensora_core.vae.hunyuan.HunyuanVAE` unless the caller gives another config. Until the
Open-Sora 2.0 family registers its VAE kind, this is the loader for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor

from ..checkpoints import Mismatch, load_into, read_checkpoint
from ..families import describe, detect
from ..vae.hunyuan import PRESETS, HunyuanVAE, HunyuanVAEConfig


def load_hunyuan_vae(source: Mapping[str, Tensor] | str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                     device: torch.device | str = "cpu",
                     config: HunyuanVAEConfig = PRESETS["hunyuan-vae"]) -> HunyuanVAE:
    """The released VAE from ``hunyuan_vae.safetensors`` (a path or a state dict), loaded strictly, eval mode.

    Built on the meta device, so each tensor is held once, in ``dtype`` on ``device`` (the release
    runs the VAE in bfloat16).
    """
    name = "state dict" if isinstance(source, Mapping) else str(source)
    state = source if isinstance(source, Mapping) else read_checkpoint(source).state_dict
    with torch.device("meta"):
        vae = HunyuanVAE(config)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    load_into(vae, state, source=name, hint=lambda mismatch: _hint(state, mismatch))
    return vae.eval().requires_grad_(False)


def _hint(state: Mapping[str, Tensor], mismatch: Mismatch) -> str | None:
    found = detect(state)
    return None if found is None else f"The file holds {describe(found)}, not the Hunyuan VAE."


__all__ = ["load_hunyuan_vae"]
