"""Training configuration: dataclasses, TOML loading and ``--set key.sub=value`` overrides.

A config file is TOML with one table per dataclass below (``[run]``, ``[model]``, ``[data]`` ...;
see train/README.md and train/configs/). Unknown keys and wrong types raise :class:`ConfigError`
naming the key (``optimizer.lrr: unknown key; did you mean lr?``). :mod:`.validate` checks the
values against each other and the file system before any heavy work.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from opensora_core.text.prompts import AESTHETIC_SCORE_V1_2


class ConfigError(ValueError):
    """A configuration value is missing, unknown or wrong; the message starts with its key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


@dataclass
class RunConfig:
    output_dir: str = "outputs/run"
    task: str = "dit"  # "dit": diffusion transformer; "vae": video VAE (see [vae_training])
    seed: int = 42
    max_steps: int = 1000  # optimizer steps
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate autocast; weights stay fp32)
    gradient_accumulation_steps: int = 1
    log_every: int = 10  # steps between TensorBoard scalars / progress-bar refreshes
    tensorboard: bool = True
    progress_bar: bool = True
    ddp_find_unused_parameters: bool = False


@dataclass
class ModelConfig:
    checkpoint: str = ""  # fine-tune: a file/folder opensora_core.checkpoints.load_dit reads
    class_name: str = ""  # from scratch: "STDiT3" (v1.2) or "STDiT2" (v1.1) ...
    preset: str = ""  # ... or a preset such as "STDiT3-XL/2"
    config: dict = field(default_factory=dict)  # official constructor kwargs (from scratch) or overrides
    gradient_checkpointing: bool = True
    dtype: str = "fp32"  # LoRA: the frozen base's dtype ("bf16" halves its memory; adapters stay float32)
    fp8: bool = False  # LoRA on Open-Sora 2.0: the frozen base in fp8 e4m3fn with per-layer scales
    blocks_on_device: int = 0  # LoRA on Open-Sora 2.0: block swap, frozen blocks kept on the device (0 = all)


@dataclass
class VAEConfig:
    path: str = ""  # a file opensora_core.vae.load_vae reads (VAE v1.2 for STDiT3, SD-VAE for STDiT2)
    micro_batch_size: int = 4
    dtype: str = "fp32"
    norm_num_groups: int = 32  # GroupNorm groups (the weights cannot tell; 32 in every released VAE)


@dataclass
class TextEncoderConfig:
    path: str = ""  # T5 folder or single .safetensors file (opensora_core.text.t5.load_t5_encoder)
    tokenizer: str = ""  # tokenizer folder (needed for a single file)
    dtype: str = "fp32"
    batch_size: int = 16
    clip: str = ""  # Open-Sora 2.0: CLIP-L folder or clip_l.safetensors (the pooled caption)
    clip_tokenizer: str = ""  # its tokenizer folder (needed for a single file)


@dataclass
class DataConfig:
    csv: str = ""  # metadata CSV from `opensora-train prepare` (path,text,num_frames,height,width,...)
    datasets: list = field(default_factory=list)  # more CSVs: [[data.datasets]] csv, repeats, trigger, caption_dropout,
    #                                               shuffle_captions, keep_tokens, score_dropout (train/datasets.py)
    buckets: dict = field(default_factory=dict)  # {resolution: {num_frames: [keep_prob, batch_size]}}
    resolutions: dict = field(default_factory=dict)  # extra tables {name: {pixels = N, sizes = {"0.56" = [H, W]}}}
    frame_interval: int = 1
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    epoch_variants: int = 1  # cached (bucket, frame window, posterior draw) variants; epoch e uses e % n
    ar: str = "official"  # "official": W/H for STDiT2 as its training did, H/W for STDiT3; "height/width"


@dataclass
class CacheConfig:
    dir: str = ""  # default: <output_dir>/cache
    posterior: str = "sample"  # "sample" (a seeded posterior draw, as the official encode) or "mean"
    dtype: str = "fp32"
    memory_gb: float = 1.0  # keep the cached latents and captions in CPU memory once read, up to this many GB
    #                         per data-loading process (0 = read them from disk at every step)


@dataclass
class ObjectiveConfig:
    kind: str = ""  # "" = the model's own ("rflow" for STDiT3, "iddpm" for STDiT2)
    sample_method: str = "logit-normal"  # rflow: "logit-normal" (official) or "uniform"
    loc: float = 0.0
    scale: float = 1.0
    timestep_transform: bool = True  # rflow: resolution/length shift of t
    transform_scale: float = 1.0


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    eight_bit: bool = False  # bitsandbytes AdamW8bit
    grad_clip: float = 1.0  # 0 = off
    warmup_steps: int = 0
    decay: str = "constant"  # after warm-up: "constant" (official) | "cosine" | "linear" down to min_lr_ratio * lr
    min_lr_ratio: float = 0.0  # at run.max_steps, for cosine/linear decay


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    targets: list = field(default_factory=lambda: [
        "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj", "mlp.fc1", "mlp.fc2",
    ])
    dropout: float = 0.0


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between accelerate states (0 = only at the end)
    keep_last: int = 3
    resume: str = ""  # "" = fresh start, "latest" = newest state under <output_dir>/checkpoints, or a path


@dataclass
class ValidationConfig:
    every: int = 0  # steps between validation samples (0 = off; also run at the end when on)
    prompts: list = field(default_factory=list)
    reference_images: list = field(default_factory=list)  # one path (or "") per prompt: image-to-video
    mask_strategy: str = "0"  # used for prompts with a reference image
    height: int = 240
    width: int = 426
    num_frames: int = 51
    fps: float = 24.0
    steps: int = 0  # 0 = the model family's default (30 rflow / 100 iddpm)
    cfg_scale: float = 7.0
    seed: int = 42
    use_ema: bool = True
    at_start: bool = True  # also sample before the first step (a baseline to compare against)
    prompt_file: str = ""  # one prompt per line with per-prompt options (train/README.md); adds to prompts
    score_phrases: str = "auto"  # "auto": append ' aesthetic score: X.' only when the training captions carry
    #                              it; "always"; "never"
    aesthetic_score: float = AESTHETIC_SCORE_V1_2  # the value appended (v1.2's default, 6.5)


@dataclass
class ExportConfig:
    use_ema: bool = True  # export the EMA weights when EMA is on
    dtype: str = "fp32"
    merge_lora: bool = False  # LoRA runs: also write the base model with the LoRA merged in


@dataclass
class VAETrainingConfig:
    class_name: str = "VideoAutoencoderPipeline"  # or "VideoAutoencoderKL" (SD-VAE per frame)
    checkpoint: str = ""  # fine-tune a file opensora_core.vae.load_vae reads; else from scratch
    spatial_checkpoint: str = ""  # VAE v1.2 from scratch: start the spatial stage from this SD-VAE file
    spatial: dict = field(default_factory=dict)  # AutoencoderKL kwargs (diffusers config names)
    temporal: dict = field(default_factory=dict)  # VAE_Temporal kwargs (or {type = "VAE_Temporal_SD"})
    freeze_spatial: bool = False
    train_only: list = field(default_factory=list)  # parameter-name prefixes to train (others frozen), e.g.
    #                      ["temporal_vae.encoder", "temporal_vae.quant_conv"]; empty = everything not frozen
    recon_loss: str = "l1"  # "l1" | "mse" | "l1+mse"
    mse_weight: float = 1.0  # "l1+mse": the squared term's weight (L1 + mse_weight * MSE)
    pixel_weight: float = 1.0  # reconstruction of the video
    latent_weight: float = 0.0  # VAE v1.2: reconstruction of the spatial latent by the temporal stage
    first_frame_weight: float = 0.0  # VAE v1.2: a clip's first frame encoded alone (as image-to-video encodes its
    #                                  reference) should give the clip's first latent
    kl_weight: float = 1e-6
    encoder_anchor_weight: float = 0.0  # fine-tuning a VAE v1.2 (vae_training.checkpoint): keep the temporal
    #   encoder's clip latents at the starting model's (a frozen copy), so a DiT trained on them stays valid;
    #   the first-frame term then also aims at the starting model's clip latent
    init_logvar: float = 0.0  # from scratch: start every posterior log-variance here (e.g. -6: the decoder sees
    #                           the signal, not unit noise, from the first step); 0 = the layers' own init
    calibrate_batches: int = 8  # VAE v1.2: batches used to set shift/scale at export (0 = keep)
    spatial_cache_gb: float = 1.0  # VAE v1.2 with freeze_spatial: keep each clip's spatial moments (the frozen
    #   encoder's output) in CPU memory, up to this many GB per process, and encode a clip only once (0 = off)


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mask_ratios: dict = field(default_factory=dict)  # {"image_head": 0.22, ...}; identity = the rest
    # Open-Sora 2.0: condition types drawn per sample with these weights (official ``condition_config``,
    # stage1_i2v.py: {t2v = 1, i2v_head = 5, i2v_loop = 1, i2v_tail = 1}); empty = text-to-video only
    condition_config: dict = field(default_factory=dict)
    # Open-Sora 2.0: probability of each encoder's null caption {t5 = p, clip = p}; empty = the official 0.316
    dropout_ratio: dict = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    vae_training: VAETrainingConfig = field(default_factory=VAETrainingConfig)

    # -- derived paths ------------------------------------------------------

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else self.output_dir / "cache"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------
# Building from dicts
# ---------------------------------------------------------------------------


def from_dict(cls: type, data: dict, key: str = "") -> Any:
    """Build dataclass ``cls`` from a (TOML) dict, checking names and types; errors name the key."""
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for name, value in data.items():
        full = f"{key}.{name}" if key else name
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(full, f"unknown key{hint}")
        values[name] = _convert(hints[name], value, full)
    return cls(**values)


def _convert(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, key)
    origin = typing.get_origin(kind) or kind
    if origin in (types.UnionType, typing.Union):
        return value  # not used by the sections above
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,), dict: (dict,)}[origin]
    if isinstance(value, bool) and origin is not bool:
        raise ConfigError(key, f"expected {origin.__name__}, got a boolean ({value})")
    if not isinstance(value, expected):
        raise ConfigError(key, f"expected {origin.__name__}, got {type(value).__name__} ({value!r})")
    return float(value) if origin is float else value


# ---------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=2e-5"`` -> (["optimizer", "lr"], 2e-05). The value is read as TOML
    (numbers, true/false, "strings", [lists], {tables}); anything else is taken as a string."""
    if "=" not in text:
        raise ConfigError("", f"override {text!r} must look like key.sub=value")
    path, raw = text.split("=", 1)
    parts = [p.strip() for p in path.strip().split(".")]
    if not all(parts):
        raise ConfigError(path, "empty key in override")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``key.sub=value`` in a copy of the raw config dict."""
    data = json.loads(json.dumps(data))  # deep copy of plain TOML data
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a table; cannot set a key inside it")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a TOML file (or start from the defaults), apply overrides and build :class:`TrainConfig`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("", f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("", f"{path}: not valid TOML ({err})") from None
    return from_dict(TrainConfig, apply_overrides(data, list(overrides)))


__all__ = [
    "CacheConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EMAConfig",
    "ExportConfig",
    "LoRAConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimizerConfig",
    "RunConfig",
    "TextEncoderConfig",
    "TrainConfig",
    "VAEConfig",
    "VAETrainingConfig",
    "ValidationConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_override",
]
