"""Loading an Open-Sora-Plan VAE (CausalVideoVAE v1.0-v1.2, WF-VAE v1.3): detect the layout, build, load strictly.

The layouts and the diffusion-side wrapper live in :mod:`opensora_core.vae.osp`; this module reads the
file (:mod:`opensora_core.checkpoints`), names what a wrong file holds (the Open-Sora-Plan layouts, else
the family registry) and loads with the models' own strict ``load_state_dict`` (their pre-hooks drop the
CausalVAE ``loss.*`` training entries and rebuild the WF-VAE Haar constants, so released files load
unchanged). Until the Open-Sora-Plan family registers its VAE kinds, this is the loader for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints import read_checkpoint
from ..families import describe, detect
from ..vae.osp import LAYOUTS, OSP_DIT_MARKERS, OpenSoraPlanVAE, detect_osp_vae, osp_vae_class

log = logging.getLogger("opensora")

StateDict = Mapping[str, Tensor]


def describe_state_dict(state_dict: StateDict) -> str:
    """What a state dict holds, in words (Open-Sora-Plan VAEs and transformer, else the registered kinds)."""
    layout = detect_osp_vae(state_dict)
    if layout is not None:
        return LAYOUTS[layout][2]
    if all(k in state_dict for k in OSP_DIT_MARKERS):
        return "an Open-Sora-Plan v1.3 diffusion transformer (OpenSoraT2V_v1_3), not a VAE"
    return describe(detect(state_dict))


def expect_osp_vae(state_dict: StateDict, expect: str | Sequence[str] | None, source: str) -> str:
    """The detected layout, or a ``ValueError`` naming what the file holds and what was asked for."""
    layout = detect_osp_vae(state_dict)
    wanted = [expect] if isinstance(expect, str) else list(expect or LAYOUTS)
    unknown = [w for w in wanted if w not in LAYOUTS]
    if unknown:
        raise ValueError(f"unknown Open-Sora-Plan VAE layout(s) {unknown}; choose from {', '.join(LAYOUTS)}")
    if layout in wanted:
        return layout
    asked = " or ".join(LAYOUTS[w][2] for w in wanted)
    raise ValueError(f"{source}: expected {asked}, but this file holds {describe_state_dict(state_dict)}; "
                     "pick the VAE file that belongs to the model")


def load_osp_vae(source: StateDict | str | os.PathLike, *, expect: str | Sequence[str] | None = None,
                 class_name: str | None = None, config: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> OpenSoraPlanVAE:
    """Detect, build and strictly load an Open-Sora-Plan VAE; returns the wrapper (eval mode, no grads).

    ``source``: a state dict, a weights file or a released folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``). The architecture comes from ``config`` (official kwargs),
    else the folder's ``config.json``, else the release preset of the detected layout (a file of another
    size then fails strict loading and asks for its config). ``expect`` restricts the layouts accepted.
    CausalVAE ``loss.*`` training entries are dropped and logged (``vae.ignored_training_keys``); the
    WF-VAE Haar constants are rebuilt (``vae.replaced_constants``).
    """
    state_dict, file_config = _read(source)
    where = "state dict" if isinstance(source, Mapping) else str(source)
    layout = expect_osp_vae(state_dict, expect, where)
    official_class, preset, description = LAYOUTS[layout]
    config = config if config is not None else file_config
    named = class_name or (config or {}).get("_class_name")
    if named is not None and named != official_class:
        raise ValueError(f"{where}: holds {description} ({official_class}), not a {named}")
    with torch.device("meta"):
        if config is not None:
            vae = osp_vae_class(official_class).from_official_config(config)
        else:
            log.info("%s: no config given; building the release layout %s", where, preset)
            vae = osp_vae_class(official_class).from_preset(preset)
    _load_strict(vae, state_dict, where)
    vae = vae.to(device=device, dtype=dtype)
    return OpenSoraPlanVAE.wrap(vae).eval().requires_grad_(False)


def _read(source) -> tuple[StateDict, dict | None]:
    """(state dict, config.json kwargs or None) of a state dict, a file or a released folder."""
    if isinstance(source, Mapping):
        return source, None
    checkpoint = read_checkpoint(source)
    return checkpoint.state_dict, checkpoint.config


def _load_strict(vae: nn.Module, state_dict: StateDict, where: str) -> None:
    """``load_state_dict(strict=True)``, taking the tensors as they are on a meta-built model; a mismatch
    raises ``ValueError`` with the first differences and what the file holds."""
    try:
        vae.load_state_dict(dict(state_dict), strict=True, assign=any(p.is_meta for p in vae.parameters()))
    except RuntimeError as err:
        lines = " ".join(line.strip() for line in str(err).splitlines()[:6])[:1500]
        raise ValueError(f"{where}: does not fit {type(vae).__name__} ({describe_state_dict(state_dict)}): {lines}. "
                         "If the file is a non-release size, pass its config.json (config=...)") from None


__all__ = ["describe_state_dict", "expect_osp_vae", "load_osp_vae"]
