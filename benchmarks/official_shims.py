"""Import modules of an official Open-Sora v1.2.0 checkout on a CPU machine, for side-by-side benchmarks.

Nothing of the official code is part of this project: the caller passes the folder of a checkout (the
``v1.2.0`` tag of hpcaitech/Open-Sora). Its modules are imported one by one, without running the package
``__init__`` files (which import every model family). What cannot be installed on a CPU machine, or is
not needed to build a model, is replaced by a minimal stand-in that computes the same values:

* ``xformers.ops.memory_efficient_attention`` (+ ``fmha.BlockDiagonalMask``), which the cross-attention
  calls: each block of the block-diagonal mask runs through ``F.scaled_dot_product_attention``;
* ``timm.models.vision_transformer.Mlp`` / ``timm.models.layers.DropPath`` (timm needs torchvision,
  whose CPU build may not match torch): fc1 -> act -> fc2 with timm's module names, and DropPath;
* ``mmengine.registry.Registry`` (the ``MODELS`` registry): a name -> builder table;
* ``opensora.utils.ckpt_utils`` (colossalai, torchvision): ``load_checkpoint`` is never called here;
* ``flash_attn.flash_attn_func`` (only with ``flash=True``): SDPA, (B, L, H, D) layout.

Installed for real: einops, transformers, rotary-embedding-torch and, for the VAE, diffusers.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PACKAGES = ("opensora", "opensora.models", "opensora.models.stdit", "opensora.models.layers",
            "opensora.models.vae", "opensora.acceleration", "opensora.utils")


def check_checkout(root: Path) -> str | None:
    """None when ``root`` holds the official modules the benchmarks import, else the reason it does not."""
    needed = ["opensora/models/stdit/stdit3.py", "opensora/models/layers/blocks.py", "opensora/models/vae/vae.py"]
    missing = [n for n in needed if not (root / n).is_file()]
    return f"{root} is not an Open-Sora v1.2.0 checkout (missing {', '.join(missing)})" if missing else None


def official_module(root: Path, name: str, flash: bool = False) -> types.ModuleType:
    """Import ``opensora.<name>`` (e.g. ``models.stdit.stdit3``) from the checkout at ``root``."""
    _install_stand_ins(flash)
    for package in PACKAGES:
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(root / package.replace(".", "/"))]
            sys.modules[package] = module
    return importlib.import_module(f"opensora.{name}")


# ---------------------------------------------------------------------------------------------------
# Stand-ins
# ---------------------------------------------------------------------------------------------------


class BlockDiagonalMask:
    """xformers' block-diagonal attention bias: query block i attends to key block i only."""

    def __init__(self, q_lengths: list[int], k_lengths: list[int]) -> None:
        self.q_lengths, self.k_lengths = q_lengths, k_lengths

    @classmethod
    def from_seqlens(cls, q_seqlen: list[int], kv_seqlen: list[int] | None = None) -> BlockDiagonalMask:
        return cls(list(q_seqlen), list(kv_seqlen if kv_seqlen is not None else q_seqlen))


def memory_efficient_attention(q, k, v, p: float = 0.0, attn_bias: BlockDiagonalMask | None = None):
    """(1, Mq, H, D) queries, (1, Mk, H, D) keys/values -> (1, Mq, H, D); scale 1/sqrt(D)."""
    if p:
        raise ValueError("the xformers stand-in runs inference only (dropout p must be 0)")

    def attend(qb, kb, vb):  # (1, L, H, D) each -> (1, Lq, H, D)
        out = F.scaled_dot_product_attention(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2))
        return out.transpose(1, 2)

    if attn_bias is None:
        return attend(q, k, v)
    qs = q.split(attn_bias.q_lengths, dim=1)
    ks, vs = k.split(attn_bias.k_lengths, dim=1), v.split(attn_bias.k_lengths, dim=1)
    return torch.cat([attend(*blocks) for blocks in zip(qs, ks, vs, strict=True)], dim=1)


class Mlp(nn.Module):
    """timm's ``Mlp`` as the official blocks build it: fc1 -> act -> fc2 (dropout 0, no norm)."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


class Registry:
    """mmengine's ``Registry`` as far as the official model files use it."""

    def __init__(self, name: str, locations=None) -> None:
        self.name, self.table = name, {}

    def register_module(self, name: str | None = None, module=None):
        def register(obj):
            self.table[name or obj.__name__] = obj
            return obj

        return register if module is None else register(module)

    def get(self, name: str):
        return self.table[name]

    def build(self, cfg: dict):
        cfg = dict(cfg)
        return self.table[cfg.pop("type")](**cfg)


def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False):
    """flash-attn's (B, L, H, D) call through SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         dropout_p=dropout_p, scale=softmax_scale, is_causal=causal)
    return out.transpose(1, 2)


def _load_checkpoint(*args, **kwargs):
    raise RuntimeError("the benchmark loads the state dict itself")


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)  # probed by find_spec
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _install_stand_ins(flash: bool) -> None:
    if "xformers" in sys.modules:
        return
    fmha = _module("xformers.ops.fmha", BlockDiagonalMask=BlockDiagonalMask)
    ops = _module("xformers.ops", memory_efficient_attention=memory_efficient_attention, fmha=fmha)
    _module("xformers", ops=ops)
    layers = _module("timm.models.layers", DropPath=DropPath)
    vit = _module("timm.models.vision_transformer", Mlp=Mlp)
    _module("timm.models", layers=layers, vision_transformer=vit)
    _module("timm")
    _module("mmengine.registry", Registry=Registry)
    _module("mmengine")
    _module("opensora.utils.ckpt_utils", load_checkpoint=_load_checkpoint)
    if flash:
        _module("flash_attn", flash_attn_func=flash_attn_func)
