"""Checkpoint IO: safe reading, prefix stripping, family detection, strict loading, atomic saving.

Formats read (``read_checkpoint``):

* ``.safetensors`` files (read lazily: tensors are only loaded when used, so a
  4.8 GB checkpoint is never held twice in memory);
* Hugging Face style folders (``config.json`` + ``model.safetensors`` or a sharded
  ``*.safetensors.index.json``), as the v1.1 / v1.2 releases are published, and
  Open-Sora training folders (``<dir>/model/`` or ``<dir>/ema.pt``);
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` through ``torch.load(weights_only=True)``
  only: arbitrary pickled code is never executed.

Wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``, ComfyUI's
``model.diffusion_model.``) and ``{"ema": ...}`` / ``{"state_dict": ...}`` dicts are
unwrapped. ``detect_family`` names what a file holds from marker keys, and
``infer_dit_config`` derives the official constructor kwargs of a diffusion
transformer from its keys and shapes. ``load_into`` copies a state dict into a
module strictly (names and shapes must match exactly) and on mismatch raises
:class:`CheckpointMismatchError` listing missing / unexpected / mis-shaped keys and
the likely cause. ``save_checkpoint`` writes safetensors atomically with the config
in its metadata, so the loader reads back what the trainer writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path

log = logging.getLogger("opensora")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Prefixes added by training wrappers and by tools that re-save checkpoints; stripped
# only when every key carries them (so `spatial_vae.module.` inside VAE keys is kept).
WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "_orig_mod.", "module.", "model.")
# Dict keys under which training scripts nest the weights (first match wins; DiT's find_model takes "ema").
NESTED_KEYS = ("ema", "state_dict", "model", "module")
# Hugging Face bookkeeping in config.json files that is not a constructor argument.
HF_CONFIG_KEYS = ("architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path", "auto_map")

METADATA_CLASS = "opensora.class"
METADATA_CONFIG = "opensora.config"
# written by opensora-train into its DiT exports: JSON {height, width, num_frames, fps, score_phrases}, what the
# model was trained at and which score phrases ("aesthetic score:", ...) its training captions carried
METADATA_TRAIN_SETTINGS = "opensora.train_settings"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit what was asked for."""


class CheckpointMismatchError(CheckpointError):
    """State-dict keys or shapes do not match the model."""


# ---------------------------------------------------------------------------
# State dicts that load tensors on access
# ---------------------------------------------------------------------------


class LazyStateDict(Mapping):
    """A read-only ``name -> tensor`` mapping over safetensors files.

    Keys and shapes come from the file headers; a tensor is read from disk only when
    it is accessed. ``rename`` maps our key to the key stored in the file.
    """

    def __init__(self, files: list[Path], device: str | torch.device = "cpu"):
        from safetensors import safe_open

        self._device = str(device)
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.metadata: dict[str, str] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                self.metadata.update(handle.metadata() or {})
                for key in handle.keys():
                    self._where[key] = (file, key)
                    self._shapes[key] = tuple(handle.get_slice(key).get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        file, stored = self._where[key]
        with safe_open(str(file), framework="pt", device=self._device) as handle:
            return handle.get_tensor(stored)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def renamed(self, mapping: Mapping[str, str]) -> LazyStateDict:
        """A view with keys renamed by ``mapping`` (our key -> stored key); unmapped keys are dropped."""
        view = object.__new__(LazyStateDict)
        view._device, view.metadata = self._device, self.metadata
        view._where = {new: self._where[old] for new, old in mapping.items()}
        view._shapes = {new: self._shapes[old] for new, old in mapping.items()}
        return view


StateDict = Mapping[str, torch.Tensor]


def shape_of(state_dict: StateDict, key: str) -> tuple[int, ...]:
    """Shape of ``state_dict[key]`` without loading it when the dict is lazy."""
    if isinstance(state_dict, LazyStateDict):
        return state_dict.shape(key)
    return tuple(state_dict[key].shape)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What a checkpoint path holds: weights (prefixes stripped), config if known, metadata."""

    path: Path
    state_dict: StateDict
    config: dict | None = None  # official constructor kwargs (HF config.json or our metadata)
    class_name: str | None = None  # official class name if the file says so
    metadata: dict[str, str] = field(default_factory=dict)


def trained_score_phrases(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The score phrases a fine-tuned model's captions carried (from a safetensors export's header only);
    None when the file does not say (released checkpoints, folders, pickles)."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(METADATA_TRAIN_SETTINGS)
    return tuple(json.loads(raw).get("score_phrases", ())) if raw else None


def read_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a file or folder into a :class:`Checkpoint` (see module docstring for formats)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        return _read_folder(path, device)
    if path.suffix == ".safetensors":
        state = LazyStateDict([path], device)
        metadata = dict(state.metadata)
    elif path.suffix in PICKLE_SUFFIXES:
        state, metadata = _read_pickle(path, device), {}
    else:
        raise CheckpointError(
            f"{path.name}: unsupported checkpoint type; expected one of {', '.join(WEIGHT_SUFFIXES)} or a folder"
        )
    config, class_name = _config_from_metadata(metadata)
    return Checkpoint(path, strip_prefixes(state), config, class_name, metadata)


def _read_folder(path: Path, device) -> Checkpoint:
    files = _folder_weight_files(path)
    if files is None:
        for sub in ("model", "ema.pt"):
            if (path / sub).exists():
                return read_checkpoint(path / sub, device=device)
        raise CheckpointError(
            f"{path}: no weights found; expected model.safetensors, a *.safetensors.index.json, "
            "a model/ subfolder or ema.pt"
        )
    if files[0].suffix == ".safetensors":
        state = LazyStateDict(files, device)
        metadata = dict(state.metadata)
    else:
        state, metadata = _read_pickle(files[0], device), {}
    config, class_name = _config_from_metadata(metadata)
    if (path / "config.json").is_file():
        config, class_name = read_hf_config(path / "config.json")
    return Checkpoint(path, strip_prefixes(state), config, class_name, metadata)


def _folder_weight_files(path: Path) -> list[Path] | None:
    for index in sorted(path.glob("*.safetensors.index.json")):
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    found = sorted(path.glob("*.safetensors"))
    return found[:1] if len(found) == 1 else None


def read_hf_config(path: Path) -> tuple[dict, str | None]:
    """Constructor kwargs and class name from a Hugging Face ``config.json``."""
    raw = json.loads(Path(path).read_text())
    class_name = (raw.get("architectures") or [None])[0] or raw.get("model_type")
    config = {k: v for k, v in raw.items() if k not in HF_CONFIG_KEYS}
    return config, class_name


def _config_from_metadata(metadata: Mapping[str, str]) -> tuple[dict | None, str | None]:
    config = metadata.get(METADATA_CONFIG)
    return (json.loads(config) if config else None), metadata.get(METADATA_CLASS)


def _read_pickle(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others for unsafe content
        raise CheckpointError(
            f"{path.name}: cannot be read safely ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Only plain tensor state dicts are loaded from pickle files (weights_only=True); "
            "convert the file to .safetensors"
        ) from None
    return unwrap_nested(obj, path.name)


def unwrap_nested(obj, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``{"ema": {...}}``-style wrappers."""
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{name}: no state dict of tensors found (top-level keys: {list(obj)[:8]})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefixes(state_dict: StateDict) -> StateDict:
    """Remove wrapper prefixes shared by every key (repeatedly: ``module.model.`` too)."""
    keys = list(state_dict)
    mapping = {k: k for k in keys}
    changed = True
    while changed and mapping:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in mapping):
                mapping = {k[len(prefix):]: old for k, old in mapping.items()}
                changed = True
                break
    if all(k == old for k, old in mapping.items()):
        return state_dict
    if isinstance(state_dict, LazyStateDict):
        return state_dict.renamed(mapping)
    return {new: state_dict[old] for new, old in mapping.items()}


# ---------------------------------------------------------------------------
# What does a state dict hold?
# ---------------------------------------------------------------------------

# family -> (marker keys that must all be present, description for messages)
_FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "STDiT3": (("spatial_blocks.0.attn.qkv.weight", "temporal_blocks.0.attn.qkv.weight"),
               "an Open-Sora v1.2 STDiT3 diffusion transformer"),
    "STDiT2": (("t_block_temp.1.weight", "blocks.0.attn_temp.qkv.weight"),
               "an Open-Sora v1.1 STDiT2 diffusion transformer"),
    "STDiT": (("blocks.0.attn_temp.qkv.weight", "t_block.1.weight"),
              "an Open-Sora v1.0 STDiT diffusion transformer"),
    "VideoAutoencoderPipeline": (("temporal_vae.encoder.conv_in.conv.weight",),
                                 "the Open-Sora VAE v1.2 (spatial + temporal video VAE)"),
    "AutoencoderKL": (("decoder.conv_in.weight", "encoder.conv_in.weight"),
                      "an SD-VAE (AutoencoderKL) image VAE, as used by Open-Sora v1.0/v1.1"),
    "T5": (("encoder.block.0.layer.0.SelfAttention.q.weight",), "a T5 text encoder"),
}
# order matters: STDiT2 has STDiT's markers too
_DETECTION_ORDER = ("STDiT3", "STDiT2", "STDiT", "VideoAutoencoderPipeline", "AutoencoderKL", "T5")


def detect_family(state_dict: StateDict) -> str | None:
    """Official class name of what ``state_dict`` holds, or None if unrecognised."""
    keys = set(state_dict)
    for family in _DETECTION_ORDER:
        markers, _ = _FAMILIES[family]
        if all(m in keys for m in markers):
            return family
    if "temporal_vae.encoder.conv_in.weight" in keys or any(k.startswith("temporal_vae.") for k in keys):
        return "VideoAutoencoderPipeline"
    if any(k.startswith("encoder.down.0.block.0.") for k in keys):  # LDM / ComfyUI SD-VAE layout
        return "AutoencoderKL"
    return None


def describe_family(family: str | None) -> str:
    if family is None:
        return "something this pack does not recognise"
    return _FAMILIES[family][1]


# Which loader/model choice fits which family (for error messages).
_FIX_FOR_FAMILY = {
    "STDiT3": "load it with the Open-Sora model loader as STDiT3 (v1.2)",
    "STDiT2": "this is a v1.1 checkpoint: pick STDiT2 (v1.1)",
    "STDiT": "this is a v1.0 checkpoint: pick STDiT (v1.0)",
    "VideoAutoencoderPipeline": "this is a VAE file: load it with the VAE loader",
    "AutoencoderKL": "this is an image VAE file: load it with the VAE loader (SD-VAE, for v1.0/v1.1 models)",
    "T5": "this is a text encoder: load it with the T5 loader",
}


def fix_for_family(family: str | None) -> str:
    return _FIX_FOR_FAMILY.get(family, "check that the file is an Open-Sora checkpoint")


def expect_family(state_dict: StateDict, expected: str | tuple[str, ...], source: str) -> str:
    """Return the detected family or raise a :class:`CheckpointError` that names what the file is."""
    expected = (expected,) if isinstance(expected, str) else expected
    found = detect_family(state_dict)
    if found in expected:
        return found
    wanted = " or ".join(describe_family(e) for e in expected)
    raise CheckpointError(
        f"{source}: expected {wanted}, but this file holds {describe_family(found)}; {fix_for_family(found)}"
    )


# ---------------------------------------------------------------------------
# Diffusion-transformer configs from keys and shapes
# ---------------------------------------------------------------------------


def infer_dit_config(state_dict: StateDict) -> tuple[str, dict]:
    """(official class name, official constructor kwargs) derived from keys and shapes.

    Values that shapes cannot tell (input_sq_size, class_dropout_prob, the v1.0
    space/time scales) take the released values.
    """
    family = expect_family(state_dict, ("STDiT3", "STDiT2", "STDiT"), "checkpoint")
    blocks = "spatial_blocks" if family == "STDiT3" else "blocks"
    hidden, in_channels, *patch = shape_of(state_dict, "x_embedder.proj.weight")
    caption_len, caption_channels = shape_of(state_dict, "y_embedder.y_embedding")
    out_features = shape_of(state_dict, "final_layer.linear.weight")[0]
    out_channels = out_features // math.prod(patch)
    config = {
        "in_channels": in_channels,
        "patch_size": list(patch),
        "hidden_size": hidden,
        "depth": _count_blocks(state_dict, blocks),
        "num_heads": _num_heads(state_dict, blocks, hidden),
        "mlp_ratio": shape_of(state_dict, f"{blocks}.0.mlp.fc1.weight")[0] / hidden,
        "pred_sigma": out_channels == 2 * in_channels,
        "caption_channels": caption_channels,
        "model_max_length": caption_len,
        "class_dropout_prob": 0.1,
        "drop_path": 0.0,
    }
    if family in ("STDiT3", "STDiT2"):
        config.update(input_size=[None, None, None], input_sq_size=512,
                      qk_norm=f"{blocks}.0.attn.q_norm.weight" in state_dict)
    else:
        config.update(_stdit_v1_0_size(state_dict, hidden))
    return family, config


def _count_blocks(state_dict: StateDict, prefix: str) -> int:
    indices = {int(k.split(".")[1]) for k in state_dict if k.startswith(prefix + ".")}
    return max(indices) + 1


def _num_heads(state_dict: StateDict, blocks: str, hidden: int) -> int | None:
    """Heads from the q/k-norm or RoPE width; None when the file cannot tell (v1.0 off 72-wide heads)."""
    if f"{blocks}.0.attn.q_norm.weight" in state_dict:
        return hidden // shape_of(state_dict, f"{blocks}.0.attn.q_norm.weight")[0]
    if "rope.freqs" in state_dict:
        return hidden // (2 * shape_of(state_dict, "rope.freqs")[0])
    return hidden // 72 if hidden % 72 == 0 else None  # released models use 72-wide heads (1152 / 16)


def _stdit_v1_0_size(state_dict: StateDict, hidden: int) -> dict:
    """v1.0 has fixed-size position tables; released .pth files omit them (default: 16x512x512)."""
    frames, side = 16, 64
    if "pos_embed_temporal" in state_dict:
        frames = shape_of(state_dict, "pos_embed_temporal")[1]
    if "pos_embed" in state_dict:
        side = 2 * math.isqrt(shape_of(state_dict, "pos_embed")[1])
    return {"input_size": [frames, side, side], "space_scale": side / 64, "time_scale": 1.0}


# ---------------------------------------------------------------------------
# Strict loading
# ---------------------------------------------------------------------------


def model_state_entries(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of ``module`` by state-dict name (no copies)."""
    return dict(module.state_dict(keep_vars=True))


def check_state_dict(module: nn.Module, state_dict: StateDict, *, source: str, optional: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` unless names and shapes match exactly.

    ``optional`` names model entries a file may omit (fixed tables the model computes).
    """
    ours = model_state_entries(module)
    missing = sorted(k for k in set(ours) - set(state_dict) if k not in optional)
    unexpected = sorted(set(state_dict) - set(ours))
    misshaped = sorted(
        (k, shape_of(state_dict, k), tuple(ours[k].shape))
        for k in set(ours) & set(state_dict)
        if shape_of(state_dict, k) != tuple(ours[k].shape)
    )
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(_mismatch_message(module, state_dict, source, missing, unexpected, misshaped))


def _mismatch_message(module, state_dict, source, missing, unexpected, misshaped) -> str:
    found = detect_family(state_dict)
    target = type(module).__name__
    lines = [f"{source}: does not match {target}."]
    if found is not None and found != target and not (found == "AutoencoderKL" and "Autoencoder" in target):
        lines.append(f"  This file holds {describe_family(found)}: {fix_for_family(found)}.")
    elif any(k == "y_embedder.y_embedding" for k, *_ in misshaped):
        lines.append("  The caption length (model_max_length) differs: the file was trained for another T5 length.")
    elif misshaped:
        lines.append("  Same family, different size: pick the preset/config that matches the file.")

    def show(title, items):
        if items:
            shown = ", ".join(map(str, items[:8])) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {title} ({len(items)}): {shown}")

    show("missing keys", missing)
    show("unexpected keys", unexpected)
    show("mis-shaped (key, file, model)", misshaped)
    return "\n".join(lines)


def load_into(
    module: nn.Module, state_dict: StateDict, *, source: str = "checkpoint", optional: tuple[str, ...] = ()
) -> None:
    """Copy ``state_dict`` into ``module`` strictly, one tensor at a time (casting to the module's dtype)."""
    check_state_dict(module, state_dict, source=source, optional=optional)
    with torch.no_grad():
        for name, target in model_state_entries(module).items():
            if name in state_dict:
                target.copy_(state_dict[name])


# ---------------------------------------------------------------------------
# Building + loading a diffusion transformer
# ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: nn.Module
    class_name: str
    config: dict
    preset: str | None
    source: Path


def load_dit(
    path: str | os.PathLike,
    *,
    class_name: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config_overrides: dict | None = None,
) -> LoadedModel:
    """Read, detect, build and strictly load an STDiT / STDiT2 / STDiT3 checkpoint."""
    from .models import build_model, find_preset

    ckpt = read_checkpoint(path, device="cpu")
    family = expect_family(ckpt.state_dict, ("STDiT3", "STDiT2", "STDiT"), str(ckpt.path))
    if class_name is not None and class_name != family:
        raise CheckpointError(
            f"{ckpt.path}: you chose {class_name}, but the file holds {describe_family(family)}; "
            f"{fix_for_family(family)}"
        )
    _, config = infer_dit_config(ckpt.state_dict)
    if family == "STDiT" and "pos_embed" not in ckpt.state_dict and "256x256" in ckpt.path.name:
        config.update(input_size=[16, 32, 32], space_scale=0.5)  # OpenSora-v1(-HQ)-16x256x256.pth
    config.update({k: v for k, v in (ckpt.config or {}).items() if k in config or k in ("input_sq_size",)})
    config.update(config_overrides or {})
    if config["num_heads"] is None:
        raise CheckpointError(f"{ckpt.path}: the number of attention heads cannot be read from this file; pass num_heads")
    with torch.device(device):
        model = build_model(family, config).to(dtype=dtype)
    optional = tuple(k for k in ("pos_embed", "pos_embed_temporal") if family == "STDiT")
    load_into(model, ckpt.state_dict, source=str(ckpt.path), optional=optional)
    model.eval().requires_grad_(False)
    return LoadedModel(model, family, config, find_preset(family, config), ckpt.path)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    class_name: str | None = None,
    config: dict | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file atomically (temp file + rename) with class/config in its metadata."""
    from safetensors.torch import save_file

    meta = dict(metadata or {})
    if class_name is not None:
        meta[METADATA_CLASS] = class_name
    if config is not None:
        meta[METADATA_CONFIG] = json.dumps(config)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)
