"""Loading a video VAE from a file or state dict: detect the kind and layout, build, load strictly.

``load_vae`` accepts every registered VAE kind (``opensora_core.families``): the Open-Sora VAE v1.2
(``hpcai-tech/OpenSora-VAE-v1.2`` ``model.safetensors``), raw SD-VAE files in the diffusers (incl. legacy
attention names) or LDM / ComfyUI layout, with prefixes such as ``first_stage_model.``, ``vae.`` or
``module.`` (an SD-VAE becomes the per-frame v1.0/v1.1 wrapper, ``VideoAutoencoderKL``), and the
Open-Sora-Plan CausalVideoVAE v1.0-v1.2 and WF-VAE v1.3 (files or released folders with ``config.json``;
:class:`~opensora_core.vae.osp.OpenSoraPlanVAE`). Each kind's ``build`` gets the state dict and the config
saved with it: the Open-Sora VAEs read their architecture from the tensor shapes
(:mod:`opensora_core.vae.shapes`; only the GroupNorm group count cannot be read, and defaults to the
released 32 unless the saved config says otherwise), the Open-Sora-Plan VAEs from the saved config, else
their release preset (:func:`opensora_core.vae.osp.release_build`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..checkpoints import Mismatch, load_into, read_checkpoint
from ..families import VAEKind, describe, detect, families_using, fix_for, kinds, releases_text
from ..vae.pipeline import OFFICIAL_MICRO_BATCH_SIZE, VideoVAE

StateDict = Mapping[str, Tensor]

def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict]:
    """Weights (read lazily) and the config saved with them (``checkpoints.read_checkpoint``)."""
    checkpoint = read_checkpoint(path)
    return checkpoint.state_dict, checkpoint.config or {}


def load_vae(
    state_dict_or_path: StateDict | str | os.PathLike,
    *,
    expect: Sequence[VAEKind] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    micro_batch_size: int | None = OFFICIAL_MICRO_BATCH_SIZE,
    norm_num_groups: int = 32,
) -> VideoVAE:
    """Detect, build and strictly load a video VAE (eval mode, no gradients).

    expect: the VAE kinds that fit (a family's ``vae``), or None (whatever the file holds).
    ``micro_batch_size`` is the number of frames the SD-VAE stage processes at once (official: 4);
    ``norm_num_groups`` is only for non-released sizes (a file saved with
    ``checkpoints.save_checkpoint(..., config={"norm_num_groups": n})`` carries it).
    """
    source = "state dict" if isinstance(state_dict_or_path, Mapping) else str(state_dict_or_path)
    saved: dict = {}
    if isinstance(state_dict_or_path, Mapping):
        state_dict = state_dict_or_path
    else:
        state_dict, saved = read_state_dict(state_dict_or_path)
        norm_num_groups = saved.pop("norm_num_groups", norm_num_groups)  # written by our trainer / tests
    found = _expect_vae(state_dict, expect, source)
    state_dict = {k[len(found.prefix):]: v for k, v in state_dict.items() if k.startswith(found.prefix)}
    model, target, state_dict = found.kind.build(state_dict, micro_batch_size, norm_num_groups, saved or None)
    load_into(target, state_dict, source=source, hint=_hint(state_dict, found.kind))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _expect_vae(state_dict: StateDict, expect: Sequence[VAEKind] | None, source: str):
    found = detect(state_dict, role="vae")
    if found is None:
        sample = ", ".join(list(state_dict)[:3])
        holds = detect(state_dict)
        known = " or ".join(kind.description for kind in kinds("vae"))
        what = f"it holds {describe(holds)}" if holds is not None else f"no keys of {known}"
        raise ValueError(
            f"{source}: not a VAE file ({what}; first keys: {sample}). Pick the VAE file (e.g. OpenSora-VAE-v1.2 "
            "model.safetensors or an SD-VAE .safetensors); diffusion-transformer and text-encoder files go to "
            "their own loaders."
        )
    if expect is not None and not any(found.kind is kind for kind in expect):
        wanted, users, found_users = expect[0], families_using(expect), families_using([found.kind])
        verb = "needs" if len(users) == 1 else "need"
        raise ValueError(
            f"{source}: this file holds {found.kind.description}, but {releases_text(users)} {verb} "
            f"{wanted.short_name} ({wanted.source}); use that file, or this VAE with "
            f"{releases_text(found_users) if found_users else 'another model'}."
        )
    return found


def _hint(state_dict: StateDict, kind: VAEKind):
    """The likely cause of a mismatch: what the keys say the file holds."""

    def hint(mismatch: Mismatch) -> str | None:
        found = detect(state_dict)
        return None if found is None else f"The file holds {describe(found)}: {fix_for(found)}."

    return hint


__all__ = ["load_vae", "read_state_dict"]
