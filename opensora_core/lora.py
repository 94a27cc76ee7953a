"""LoRA adapters for the STDiT models: training layers, the ComfyUI file format, loading and merging.

A LoRA adds a low-rank update to chosen Linear layers: W' = W + strength * (alpha / rank) * B @ A,
with A (rank, in) and B (out, rank). Files use the keys ComfyUI's LoRA loader maps onto a
``BaseModel`` whose ``diffusion_model`` is our model (comfy/lora.py, ``model_lora_keys_unet``):

    diffusion_model.<official module path>.lora_A.weight   (rank, in)
    diffusion_model.<official module path>.lora_B.weight   (out, rank)
    diffusion_model.<official module path>.alpha           scalar

e.g. ``diffusion_model.spatial_blocks.0.attn.qkv.lora_A.weight``. The fused ``attn.qkv`` and
``cross_attn.kv_linear`` projections are adapted as one matrix, as they are stored.

* :func:`add_lora` swaps the targeted Linears of a model for :class:`LoRALinear` (same weight and
  bias tensors, so base keys do not change; the adapter adds ``.lora_A`` / ``.lora_B``);
* :func:`lora_state_dict` gives the file's tensors, :func:`save_lora` writes them;
* :func:`load_lora` reads a file (also the ``lora_down``/``lora_up`` and ``lora_unet_*`` spellings);
* :func:`merge_lora` adds a LoRA into a model's weights (the loader node and ``opensora-generate``);
* :func:`fuse_lora` turns a model's LoRALinears back into plain Linears with the update merged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import save_checkpoint
from .models.fp8 import Fp8Linear

COMFY_PREFIX = "diffusion_model."
UNET_PREFIX = "lora_unet_"  # kohya spelling: module path with dots as underscores
METADATA_LORA = "opensora.lora"

# Linear layers worth adapting in every STDiT block (module-path suffixes, official names).
DEFAULT_TARGETS = (
    "attn.qkv",
    "attn.proj",
    "cross_attn.q_linear",
    "cross_attn.kv_linear",
    "cross_attn.proj",
    "mlp.fc1",
    "mlp.fc2",
)
# STDiT2 also has a temporal attention per block under another name.
STDIT2_TEMPORAL_TARGETS = ("attn_temp.qkv", "attn_temp.proj")

_SUFFIXES = {  # key suffix -> (role, ...)
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_down.weight": "A",
    ".lora_up.weight": "B",
    ".alpha": "alpha",
}


# ---------------------------------------------------------------------------
# Training layer
# ---------------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """A Linear plus a trainable low-rank branch: ``linear(x) + lora_B(lora_A(dropout(x))) * alpha / rank``.

    It shares ``weight`` and ``bias`` with the Linear it replaces (so the model's state-dict keys for
    them stay the same). ``lora_B`` starts at zero, so a fresh adapter changes nothing.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = int(rank)
        self.alpha = float(rank if alpha is None else alpha)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False, **factory)
        self.lora_B = nn.Linear(self.rank, self.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """(out, in) float32 update the branch adds to ``weight``."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def matches_target(module_path: str, targets: Iterable[str]) -> bool:
    """True if ``module_path`` is one of ``targets`` or ends with ``.<target>``."""
    return any(module_path == t or module_path.endswith("." + t) for t in targets)


def lora_target_paths(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> list[str]:
    """Module paths of the plain Linear layers of ``model`` that ``targets`` select."""
    targets = tuple(targets)
    return [
        name for name, m in model.named_modules()
        if type(m) is nn.Linear and matches_target(name, targets)
    ]


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, *, targets: Iterable[str] = DEFAULT_TARGETS,
             dropout: float = 0.0) -> list[str]:
    """Replace every targeted Linear of ``model`` by a :class:`LoRALinear`; returns their paths.

    Only the new adapters require gradients afterwards if the caller froze the model first.
    """
    targets = tuple(targets)
    paths = lora_target_paths(model, targets)
    if not paths:
        raise ValueError(
            f"no Linear layer of {type(model).__name__} matches the LoRA targets {list(targets)}; "
            f"valid examples: {', '.join(DEFAULT_TARGETS)}"
        )
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return paths


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


# ---------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------


@dataclass
class LoRAWeights:
    """One adapter per module path: ``down`` = A (rank, in), ``up`` = B (out, rank), ``alpha`` (None = rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank


@dataclass
class LoRA:
    """A LoRA file: ``layers`` by official module path (or by ``lora_unet_`` name, resolved at merge)."""

    layers: dict[str, LoRAWeights]
    metadata: dict[str, str] = field(default_factory=dict)


def lora_state_dict(model: nn.Module, *, prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """The adapters of ``model`` under ComfyUI's keys (``diffusion_model.<path>.lora_A.weight`` ...)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers; call add_lora first")
    return comfy_lora_from_state(model.state_dict(), {path: layer.alpha for path, layer in layers.items()},
                                 prefix=prefix)


def adapter_paths(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Module paths with adapters in a model state dict (keys ``<path>.lora_A.weight``)."""
    suffix = ".lora_A.weight"
    return [k[: -len(suffix)] for k in state_dict if k.endswith(suffix)]


def comfy_lora_from_state(state_dict: Mapping[str, torch.Tensor], alpha: float | Mapping[str, float], *,
                          prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """ComfyUI LoRA tensors from a (gathered) state dict of a model with :class:`LoRALinear` layers."""
    tensors = {}
    for path in adapter_paths(state_dict):
        value = alpha[path] if isinstance(alpha, Mapping) else alpha
        tensors[f"{prefix}{path}.lora_A.weight"] = state_dict[f"{path}.lora_A.weight"].detach()
        tensors[f"{prefix}{path}.lora_B.weight"] = state_dict[f"{path}.lora_B.weight"].detach()
        tensors[f"{prefix}{path}.alpha"] = torch.tensor(float(value), dtype=torch.float32)
    if not tensors:
        raise ValueError("the state dict has no LoRA adapters (<path>.lora_A.weight keys)")
    return tensors


@torch.no_grad()
def fuse_lora_state(
    state_dict: Mapping[str, torch.Tensor], alpha: float | Mapping[str, float]
) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged into its weight and the adapter keys removed."""
    fused = {k: v for k, v in state_dict.items() if ".lora_A." not in k and ".lora_B." not in k}
    for path in adapter_paths(state_dict):
        down, up = state_dict[f"{path}.lora_A.weight"].float(), state_dict[f"{path}.lora_B.weight"].float()
        scale = (alpha[path] if isinstance(alpha, Mapping) else alpha) / down.shape[0]
        weight = fused[f"{path}.weight"]
        fused[f"{path}.weight"] = (weight.float() + (up @ down) * scale).to(weight.dtype)
    return fused


def save_lora(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
              dtype: torch.dtype | None = None, info: Mapping | None = None) -> Path:
    """Write the adapters of ``model`` (or ready ComfyUI tensors) as safetensors (atomic; ``info`` -> metadata)."""
    tensors = model if isinstance(model, Mapping) else lora_state_dict(model)
    if dtype is not None:
        tensors = {k: v if k.endswith(".alpha") else v.to(dtype) for k, v in tensors.items()}
    return save_checkpoint(tensors, path, metadata={METADATA_LORA: json.dumps(dict(info or {}))})


def load_lora(path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoRA:
    """Read a LoRA (``.safetensors`` path or state dict) into :class:`LoRA`; unknown keys raise."""
    metadata: dict[str, str] = {}
    if isinstance(path_or_state_dict, Mapping):
        state, source = dict(path_or_state_dict), "LoRA state dict"
    else:
        state, metadata, source = _read_safetensors(Path(path_or_state_dict))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        name, role = _split_key(key)
        if role is None:
            unknown.append(key)
            continue
        parts.setdefault(name, {})[role] = tensor
    if unknown:
        raise ValueError(
            f"{source}: keys this loader does not know ({len(unknown)}): {', '.join(unknown[:5])}; "
            "expected <module>.lora_A.weight / .lora_B.weight / .alpha (or lora_down / lora_up)"
        )
    return LoRA({name: _weights(name, found, source) for name, found in parts.items()}, metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    from .checkpoints import open_safetensors

    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: LoRA files must be .safetensors")
    with open_safetensors(path) as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
        return tensors, dict(handle.metadata() or {}), str(path)


def _split_key(key: str) -> tuple[str, str | None]:
    for suffix, role in _SUFFIXES.items():
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            for prefix in (COMFY_PREFIX, "model." + COMFY_PREFIX):
                name = name.removeprefix(prefix)
            return name, role
    return key, None


def _weights(name: str, found: dict[str, torch.Tensor], source: str) -> LoRAWeights:
    if "A" not in found or "B" not in found:
        raise ValueError(f"{source}: {name} has {sorted(found)} but needs both lora_A (down) and lora_B (up)")
    down, up = found["A"], found["B"]
    if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(f"{source}: {name}: lora_B {tuple(up.shape)} @ lora_A {tuple(down.shape)} is not a product")
    alpha = float(found["alpha"].item()) if "alpha" in found else None
    return LoRAWeights(down, up, alpha)


# ---------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------


def _resolve_names(model: nn.Module, lora: LoRA) -> dict[str, str]:
    """LoRA layer name -> module path in ``model`` (``lora_unet_a_b_c`` -> ``a.b.c``)."""
    by_unet = {UNET_PREFIX + name.replace(".", "_"): name for name, _ in model.named_modules()}
    return {name: by_unet.get(name, name) if name.startswith(UNET_PREFIX) else name for name in lora.layers}


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoRA | str | os.PathLike, strength: float = 1.0) -> list[str]:
    """Add ``strength * alpha / rank * up @ down`` to each adapted Linear weight of ``model``, in place.

    Computed in float32 and cast to the weight's dtype; an fp8-stored layer (:class:`Fp8Linear`, the memory
    loader's fp8 weights) is dequantized, updated and quantized again with a new per-layer scale (one more fp8
    rounding, as ComfyUI patches fp8 weights). Returns the merged module paths; raises ``ValueError`` naming
    any module the model lacks or whose shape differs (a LoRA of another model).
    """
    if not isinstance(lora, LoRA):
        lora = load_lora(lora)
    names = _resolve_names(model, lora)
    modules = dict(model.named_modules())
    missing = [names[n] for n in lora.layers if not isinstance(modules.get(names[n]), (nn.Linear, Fp8Linear))]
    if missing:
        raise ValueError(
            f"this LoRA adapts {len(missing)} layer(s) {type(model).__name__} does not have as a Linear "
            f"(e.g. {', '.join(missing[:3])}): it was trained for another model family or size"
        )
    for name, weights in lora.layers.items():
        layer = modules[names[name]]
        target = layer.weight
        delta = weights.up.float().to(target.device) @ weights.down.float().to(target.device)  # (out, in)
        if delta.shape != target.shape:
            raise ValueError(
                f"LoRA layer {name} gives a {tuple(delta.shape)} update for a {tuple(target.shape)} weight: "
                "it was trained for another model size"
            )
        if isinstance(layer, Fp8Linear):
            layer.set_weight(layer.dequantized() + delta * (weights.scale * strength))  # re-quantized
        else:
            target.add_((delta * (weights.scale * strength)).to(target.dtype))
    return [names[n] for n in lora.layers]


@torch.no_grad()
def fuse_lora(model: nn.Module) -> list[str]:
    """Merge every :class:`LoRALinear` of ``model`` into its weight and put a plain Linear back."""
    fused = []
    for path, layer in lora_layers(model).items():
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=layer.weight.device, dtype=layer.weight.dtype)
        plain.weight.copy_(layer.weight + layer.delta_weight().to(layer.weight.dtype))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
        plain.requires_grad_(layer.weight.requires_grad)
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, plain)
        fused.append(path)
    return fused


__all__ = [
    "COMFY_PREFIX",
    "DEFAULT_TARGETS",
    "STDIT2_TEMPORAL_TARGETS",
    "LoRA",
    "LoRALinear",
    "LoRAWeights",
    "adapter_paths",
    "add_lora",
    "comfy_lora_from_state",
    "fuse_lora",
    "fuse_lora_state",
    "load_lora",
    "lora_layers",
    "lora_state_dict",
    "lora_target_paths",
    "matches_target",
    "merge_lora",
    "save_lora",
]
