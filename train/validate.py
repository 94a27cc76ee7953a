"""Checks of a :class:`~.config.TrainConfig` before any heavy work: values, files, combinations.

Every problem raises :class:`~.config.ConfigError` whose message starts with the key to fix.
Nothing here loads weights: the model family comes from the checkpoint's header/config.json or
from ``model.class_name`` / ``model.preset``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
from pathlib import Path

from opensora_core.checkpoints import CheckpointError, check_safetensors, open_safetensors, read_checkpoint, read_json
from opensora_core.dtypes import DTYPES
from opensora_core.families import describe, detect, families, for_class
from opensora_core.loading import read_dit_config
from opensora_core.models import presets
from opensora_core.sampling.losses import OBJECTIVES, RF_SAMPLE_METHODS
from opensora_core.sampling.rflow import TRANSFORM_CHUNK_FRAMES

from .buckets import BucketTable
from .config import ConfigError, TrainConfig
from .data import REQUIRED_COLUMNS
from .masks import parse_mask_ratios
from .mmdit_lora import I2V_TYPES
from .validation import validation_texts

TRAINABLE_CLASSES = tuple(f.model.class_name for f in families() if f.training is not None)  # STDiT3, STDiT2, ...
VAE_CLASSES = ("VideoAutoencoderPipeline", "VideoAutoencoderKL")


def validate_config(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found."""
    _check_run(cfg)
    _check_data(cfg)
    _check_optimizer(cfg)
    _check_checkpointing(cfg)
    if cfg.run.task == "vae":
        _check_vae_training(cfg)
        return
    class_name = model_class_name(cfg)
    _check_encoders(cfg)
    _check_encoders_fit(cfg, class_name)
    _check_masks(cfg, class_name)
    _check_bucket_sizes(cfg, class_name)
    _check_lora(cfg)
    if for_class(class_name).training.objective == "v2_flow":
        _check_v2(cfg)
        return
    _check_conditions_unused(cfg)
    _check_objective(cfg, class_name)
    _check_validation(cfg, class_name)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _check_run(cfg: TrainConfig) -> None:
    run = cfg.run
    _writable_folder("run.output_dir", run.output_dir)
    if cfg.cache.dir:
        _writable_folder("cache.dir", cfg.cache.dir)
    _one_of("run.task", run.task, ("dit", "vae"))
    _one_of("run.mixed_precision", run.mixed_precision, ("no", "bf16", "fp16"))
    _at_least("run.max_steps", run.max_steps, 1)
    _at_least("run.gradient_accumulation_steps", run.gradient_accumulation_steps, 1)
    _at_least("run.log_every", run.log_every, 1)
    if run.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("run.tensorboard", "needs the tensorboard package: pip install tensorboard (or set false)")


def _check_data(cfg: TrainConfig) -> None:
    data = cfg.data
    from .datasets import dataset_specs

    for i, spec in enumerate(dataset_specs(data)):
        key = "data.csv" if data.csv and i == 0 else f"data.datasets[{i - bool(data.csv)}].csv"
        _check_data_csv(key, spec.csv)
    bucket_table(cfg)  # raises ConfigError naming the bucket key
    _at_least("data.frame_interval", data.frame_interval, 1)
    _at_least("data.num_workers", data.num_workers, 0)
    _at_least("data.epoch_variants", data.epoch_variants, 1)
    _one_of("data.ar", data.ar, ("official", "height/width"))
    _one_of("cache.posterior", cfg.cache.posterior, ("sample", "mean"))
    _one_of("cache.dtype", cfg.cache.dtype, DTYPES)
    _finite("cache.memory_gb", cfg.cache.memory_gb)
    _at_least("cache.memory_gb", cfg.cache.memory_gb, 0)


def _check_optimizer(cfg: TrainConfig) -> None:
    opt = cfg.optimizer
    for name in ("lr", "weight_decay", "eps", "grad_clip", "min_lr_ratio"):
        _finite(f"optimizer.{name}", getattr(opt, name))
    if not opt.lr > 0:
        raise ConfigError("optimizer.lr", f"must be positive, got {opt.lr}")
    if len(opt.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in opt.betas):
        raise ConfigError("optimizer.betas", f"expected two numbers in [0, 1), got {opt.betas}")
    _at_least("optimizer.warmup_steps", opt.warmup_steps, 0)
    _one_of("optimizer.decay", opt.decay, ("constant", "cosine", "linear"))
    if not 0 <= opt.min_lr_ratio <= 1:
        raise ConfigError("optimizer.min_lr_ratio", f"must be in [0, 1], got {opt.min_lr_ratio}")
    if opt.grad_clip < 0 or opt.weight_decay < 0 or opt.eps <= 0:
        raise ConfigError("optimizer", "grad_clip and weight_decay must be >= 0 and eps > 0")
    if opt.eight_bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("optimizer.eight_bit", "needs bitsandbytes: pip install bitsandbytes (or set it to false)")
    if cfg.ema.enabled and not 0 <= cfg.ema.decay < 1:
        raise ConfigError("ema.decay", f"must be in [0, 1), got {cfg.ema.decay}")


def _check_data_csv(key: str, csv_path: str) -> None:
    """One metadata CSV: it exists, reads as UTF-8, has the required columns and its rows name files."""
    _existing_file(key, csv_path, "run `opensora-train prepare <folder> --output meta.csv` first")
    try:
        with Path(csv_path).open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(key, f"{csv_path} cannot be read as a UTF-8 CSV ({err}); build it with "
                               "`opensora-train prepare`") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(key, f"{csv_path} lacks column(s) {', '.join(missing)}; build it with "
                               "`opensora-train prepare`")
    _check_data_files(key, csv_path)


def _check_data_files(key: str, csv_path: str) -> None:
    """Every row parses and names an existing file (the clips are decoded only while training)."""
    from .data import read_metadata

    try:
        entries = read_metadata(csv_path)
    except (ValueError, csv.Error) as err:
        raise ConfigError(key, str(err)) from None
    if not entries:
        raise ConfigError(key, f"{csv_path} has no rows; build it with `opensora-train prepare`")
    absent = [e for e in entries if not e.path.is_file()]
    if absent:
        first = absent[0]
        raise ConfigError(key, f"{len(absent)} of {len(entries)} files it lists are missing, e.g. row "
                               f"{first.row + 2}: {first.path}; fix the paths or run `opensora-train prepare` again")


def _check_checkpointing(cfg: TrainConfig) -> None:
    ck = cfg.checkpoint
    _at_least("checkpoint.every", ck.every, 0)
    _at_least("checkpoint.keep_last", ck.keep_last, 1)
    if ck.resume not in ("", "latest") and not Path(ck.resume).is_dir():
        raise ConfigError("checkpoint.resume", f"{ck.resume} is not a checkpoint folder; use 'latest', a folder or ''")
    _one_of("export.dtype", cfg.export.dtype, DTYPES)


def _check_encoders(cfg: TrainConfig) -> None:
    _existing_path("vae.path", cfg.vae.path, "the model's VAE (VAE v1.2 for STDiT3, SD-VAE for STDiT2)")
    _existing_path("text_encoder.path", cfg.text_encoder.path, "a T5 folder or single .safetensors file")
    if cfg.text_encoder.tokenizer:
        _existing_path("text_encoder.tokenizer", cfg.text_encoder.tokenizer, "a tokenizer folder")
    elif Path(cfg.text_encoder.path).is_file():
        raise ConfigError("text_encoder.tokenizer", "a single-file T5 needs a tokenizer folder")
    _one_of("vae.dtype", cfg.vae.dtype, DTYPES)
    _at_least("vae.micro_batch_size", cfg.vae.micro_batch_size, 1)
    _at_least("vae.norm_num_groups", cfg.vae.norm_num_groups, 1)
    _one_of("text_encoder.dtype", cfg.text_encoder.dtype, DTYPES)
    _at_least("text_encoder.batch_size", cfg.text_encoder.batch_size, 1)


def _check_encoders_fit(cfg: TrainConfig, class_name: str) -> None:
    """The VAE family and the T5 width against the model, from file headers only."""
    vae = Path(cfg.vae.path)
    family = for_class(class_name)
    if vae.is_file() and vae.suffix == ".safetensors":
        try:
            with open_safetensors(vae) as handle:
                found = detect(handle.keys(), role="vae")
        except CheckpointError as err:
            raise ConfigError("vae.path", str(err)) from None
        if found is None or found.kind not in family.vae:
            raise ConfigError("vae.path", f"{class_name} was trained with {family.vae_name}; {vae.name} holds "
                                          f"{'no VAE' if found is None else describe(found)}")
    _check_weight_files("text_encoder.path", Path(cfg.text_encoder.path))
    t5_config = Path(cfg.text_encoder.path) / "config.json"
    if t5_config.is_file():
        try:
            width = read_json(t5_config).get("d_model")
        except CheckpointError as err:
            raise ConfigError("text_encoder.path", str(err)) from None
        channels = _caption_channels(cfg)
        if width is not None and channels is not None and width != channels:
            raise ConfigError("text_encoder.path", f"the T5 gives {width}-wide features but the model takes "
                                                   f"caption_channels = {channels}")


def _check_weight_files(key: str, path: Path) -> None:
    """safetensors headers of a file or of a folder's files are complete (nothing is loaded)."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
    for file in files:
        if file.suffix == ".safetensors":
            try:
                check_safetensors(file)
            except CheckpointError as err:
                raise ConfigError(key, str(err)) from None


def _caption_channels(cfg: TrainConfig) -> int | None:
    model = cfg.model
    if model.checkpoint:
        try:
            _, config = read_dit_config(read_checkpoint(model.checkpoint))
        except CheckpointError as err:
            raise ConfigError("model.checkpoint", str(err)) from None
        for name in ("caption_channels", "context_in_dim"):  # STDiT / Open-Sora-Plan, the MMDiT
            if name in config:
                return config[name]
        return None
    if "caption_channels" in model.config:
        return model.config["caption_channels"]
    return getattr(presets()[model.preset][1], "caption_channels", None) if model.preset else 4096


def _check_objective(cfg: TrainConfig, class_name: str) -> None:
    obj = cfg.objective
    trained = for_class(class_name).training.objective
    kind = obj.kind or trained
    _one_of("objective.kind", kind, tuple(OBJECTIVES))
    if (kind == "vprediction") != (trained == "vprediction"):  # the output is v, or it is not
        raise ConfigError("objective.kind", f"{class_name} was trained with the '{trained}' objective and its "
                                            f"output does not fit '{kind}'; leave objective.kind empty")
    _one_of("objective.sample_method", obj.sample_method, RF_SAMPLE_METHODS)
    _finite("objective.loc", obj.loc)
    for name in ("scale", "transform_scale"):
        _finite(f"objective.{name}", getattr(obj, name))
        if not getattr(obj, name) > 0:
            raise ConfigError(f"objective.{name}", f"must be positive, got {getattr(obj, name)}")
    if kind == "rflow" and obj.timestep_transform:
        table = bucket_table(cfg)
        bad = sorted(t for t in table.frame_counts if 1 < t < TRANSFORM_CHUNK_FRAMES)
        if bad:
            raise ConfigError(
                "data.buckets",
                f"frame counts {bad} give NaN timesteps with the v1.2 timestep transform (it counts whole "
                f"{TRANSFORM_CHUNK_FRAMES}-frame chunks); use 1 or >= {TRANSFORM_CHUNK_FRAMES} frames, or set "
                "objective.timestep_transform = false",
            )


def _check_masks(cfg: TrainConfig, class_name: str) -> None:
    if cfg.mask_ratios:
        if not for_class(class_name).training.frame_masks:
            raise ConfigError("mask_ratios", f"{class_name} trains without condition-frame masks; remove the section")
        parse_mask_ratios(cfg.mask_ratios)


def _check_bucket_sizes(cfg: TrainConfig, class_name: str) -> None:
    """Every bucket's frame count and size fit the model (Open-Sora-Plan v1.3: 4n+1 frames, sides multiples
    of 32, the training stride ``--hw_stride 32``)."""
    family = for_class(class_name)
    multiple = family.training.side_multiple
    table = BucketTable(cfg.data.buckets, cfg.data.resolutions, training=family.training)
    if family.geometry.causal:  # a causal VAE (Hunyuan, Open-Sora-Plan): 4k+1 frames, else frames are lost
        for name, entries in table.entries.items():
            for frames in entries:
                try:
                    family.geometry.check_num_frames(frames)
                except ValueError as err:
                    raise ConfigError("data.buckets", f"{name} {frames} frames: {err}") from None
    if family.check_size is None and multiple is None:
        return
    for name, resolution in table.resolutions.items():
        for height, width in resolution.sizes.values():
            if multiple is not None and (height % multiple or width % multiple):
                raise ConfigError("data.resolutions", f"{name}: {height}x{width} (HxW): {class_name} trains on sides "
                                                      f"that are multiples of {multiple}")
            for frames in table.entries[name]:
                try:
                    if family.check_size is not None:
                        family.check_size(frames, height, width)
                except ValueError as err:
                    raise ConfigError("data.buckets", f"{name} {frames} frames: {err}") from None


def _check_lora(cfg: TrainConfig) -> None:
    lora = cfg.lora
    if not lora.enabled:
        return
    _at_least("lora.rank", lora.rank, 1)
    _finite("lora.alpha", lora.alpha)
    if not lora.alpha > 0:
        raise ConfigError("lora.alpha", f"must be positive (the update is scaled by alpha / rank), got {lora.alpha}")
    if not lora.targets or not all(isinstance(t, str) and t for t in lora.targets):
        raise ConfigError("lora.targets", "list the module suffixes to adapt, e.g. ['attn.qkv', 'mlp.fc1']")
    if not 0 <= lora.dropout < 1:
        raise ConfigError("lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    if not cfg.model.checkpoint:
        raise ConfigError("lora.enabled", "LoRA adapts pretrained weights: set model.checkpoint")


def _check_validation(cfg: TrainConfig, class_name: str) -> None:
    val = cfg.validation
    _at_least("validation.every", val.every, 0)
    _one_of("validation.score_phrases", val.score_phrases, ("auto", "always", "never"))
    if val.every == 0:
        return
    if not (val.prompts or val.prompt_file) or not all(isinstance(p, str) and p for p in val.prompts):
        raise ConfigError("validation.prompts", "give at least one prompt or a prompt_file (or set "
                                                "validation.every = 0)")
    if len(val.reference_images) > len(val.prompts):
        raise ConfigError("validation.reference_images", "at most one reference image per prompt")
    for i, ref in enumerate(val.reference_images):
        if ref:
            _existing_path(f"validation.reference_images[{i}]", ref, "an image file")
    for name in ("height", "width", "num_frames"):
        _at_least(f"validation.{name}", getattr(val, name), 1)
    try:
        validation_texts(for_class(class_name), val)  # plans every sample: sizes, frame counts, strategies
    except ValueError as err:
        raise ConfigError("validation", str(err)) from None


def _check_vae_training(cfg: TrainConfig) -> None:
    vt = cfg.vae_training
    _one_of("vae_training.class_name", vt.class_name, VAE_CLASSES)
    _one_of("vae_training.recon_loss", vt.recon_loss, ("l1", "mse", "l1+mse"))
    if vt.checkpoint:
        _existing_file("vae_training.checkpoint", vt.checkpoint, "a VAE file load_vae reads")
        _check_weight_files("vae_training.checkpoint", Path(vt.checkpoint))
    if vt.spatial_checkpoint:
        if vt.checkpoint or vt.class_name != "VideoAutoencoderPipeline":
            raise ConfigError("vae_training.spatial_checkpoint", "only for a VideoAutoencoderPipeline trained from "
                              "scratch (without vae_training.checkpoint)")
        _existing_file("vae_training.spatial_checkpoint", vt.spatial_checkpoint, "an SD-VAE file load_vae reads")
        _check_weight_files("vae_training.spatial_checkpoint", Path(vt.spatial_checkpoint))
    if vt.encoder_anchor_weight > 0 and not (vt.checkpoint and vt.class_name == "VideoAutoencoderPipeline"):
        raise ConfigError("vae_training.encoder_anchor_weight", "holds a VAE v1.2 to its starting model: needs "
                          "vae_training.checkpoint and class_name = \"VideoAutoencoderPipeline\"")
    _finite("vae_training.init_logvar", vt.init_logvar)
    for name in ("pixel_weight", "latent_weight", "kl_weight", "first_frame_weight", "encoder_anchor_weight",
                 "mse_weight"):
        _finite(f"vae_training.{name}", getattr(vt, name))
        if getattr(vt, name) < 0:
            raise ConfigError(f"vae_training.{name}", "loss weights must be >= 0")
    for name in ("latent_weight", "first_frame_weight"):
        if getattr(vt, name) > 0 and vt.class_name != "VideoAutoencoderPipeline":
            raise ConfigError(f"vae_training.{name}", "only for the VAE v1.2 pipeline (VideoAutoencoderPipeline)")
    if vt.mse_weight != 1.0 and vt.recon_loss != "l1+mse":
        raise ConfigError("vae_training.mse_weight", f'weighs the squared term of recon_loss = "l1+mse", not of '
                          f'"{vt.recon_loss}": set recon_loss = "l1+mse" or leave mse_weight at 1')
    _at_least("vae_training.calibrate_batches", vt.calibrate_batches, 0)
    _finite("vae_training.spatial_cache_gb", vt.spatial_cache_gb)
    _at_least("vae_training.spatial_cache_gb", vt.spatial_cache_gb, 0)


def _check_v2(cfg: TrainConfig) -> None:
    """LoRA on the Open-Sora 2.0 MMDiT (train/mmdit_task.py): what it takes and what it refuses."""
    model, lora = cfg.model, cfg.lora
    if not lora.enabled:
        raise ConfigError("lora.enabled", "Open-Sora 2.0 trains LoRA adapters on the frozen MMDiT here; set "
                                          "lora.enabled = true")
    if lora.dropout:
        raise ConfigError("lora.dropout", "the Open-Sora 2.0 adapters have no dropout; set lora.dropout = 0")
    _one_of("model.dtype", model.dtype, DTYPES)
    _at_least("model.blocks_on_device", model.blocks_on_device, 0)
    if model.blocks_on_device and not model.gradient_checkpointing:
        raise ConfigError("model.blocks_on_device", "block swap in training needs model.gradient_checkpointing = "
                                                    "true (the backward pass copies each block in again)")
    if not cfg.text_encoder.clip:
        raise ConfigError("text_encoder.clip", "Open-Sora 2.0 takes T5 and CLIP-L: set text_encoder.clip to the "
                                               "CLIP-L folder or clip_l.safetensors")
    _existing_path("text_encoder.clip", cfg.text_encoder.clip, "a CLIP folder or single .safetensors file")
    if not cfg.text_encoder.clip_tokenizer and Path(cfg.text_encoder.clip).is_file():
        raise ConfigError("text_encoder.clip_tokenizer", "a single-file CLIP needs a tokenizer folder")
    _check_condition_config(cfg.condition_config)
    for name, p in cfg.dropout_ratio.items():
        if name not in ("t5", "clip"):
            raise ConfigError(f"dropout_ratio.{name}", "the encoders are t5 and clip")
        _check_probability(f"dropout_ratio.{name}", p)
    if cfg.validation.every:
        raise ConfigError("validation.every", "samples during Open-Sora 2.0 training are not implemented; set "
                                              "validation.every = 0 and sample the export with opensora-generate "
                                              "--lora")


def _check_condition_config(conditions: dict) -> None:
    allowed = ("t2v", *I2V_TYPES)
    for name, weight in conditions.items():
        if name not in allowed:
            raise ConfigError(f"condition_config.{name}", f"unknown or not trained here; use {', '.join(allowed)} "
                                                          "(the v2v conditions are not ported)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"condition_config.{name}", f"weights are numbers >= 0, got {weight!r}")
    if conditions and not sum(conditions.values()) > 0:
        raise ConfigError("condition_config", "at least one weight must be positive")


def _check_conditions_unused(cfg: TrainConfig) -> None:
    for key in ("condition_config", "dropout_ratio"):
        if getattr(cfg, key):
            raise ConfigError(key, "only for Open-Sora 2.0 (the MMDiT); remove the section")
    if cfg.text_encoder.clip:
        raise ConfigError("text_encoder.clip", "only Open-Sora 2.0 takes a CLIP encoder; remove it")
    if cfg.model.fp8 or cfg.model.blocks_on_device or cfg.model.dtype != "fp32":
        raise ConfigError("model", "model.fp8, model.blocks_on_device and model.dtype are for Open-Sora 2.0 LoRA; "
                                   "leave them at their defaults")


def _check_probability(key: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(key, f"a probability in [0, 1], got {p!r}")


def bucket_table(cfg: TrainConfig) -> BucketTable:
    """The run's buckets with its model family's tables and draws (the VAE task: the Open-Sora v1 tables)."""
    training = None if cfg.run.task == "vae" else for_class(model_class_name(cfg)).training
    return BucketTable(cfg.data.buckets, cfg.data.resolutions, training=training)


# ---------------------------------------------------------------------------
# The model family
# ---------------------------------------------------------------------------


def model_class_name(cfg: TrainConfig) -> str:
    """Official class name of the diffusion model to train ("STDiT3" / "STDiT2")."""
    model = cfg.model
    chosen = [k for k in ("checkpoint", "preset", "class_name") if getattr(model, k)]
    if not chosen:
        raise ConfigError("model", "set model.checkpoint (fine-tune) or model.class_name / model.preset (from scratch)")
    if model.checkpoint:
        name = _checkpoint_family(model.checkpoint)
    elif model.preset:
        table = presets()
        if model.preset not in table:
            raise ConfigError("model.preset", f"unknown preset {model.preset!r}; known: {', '.join(table)}")
        name = table[model.preset][0]
    else:
        name = model.class_name
    if model.class_name and model.class_name != name:
        raise ConfigError("model.class_name", f"{model.class_name} disagrees with the model ({name})")
    if name not in TRAINABLE_CLASSES:
        raise ConfigError("model", f"{name} cannot be trained here; trainable: {', '.join(TRAINABLE_CLASSES)}")
    return name


def _checkpoint_family(path: str) -> str:
    _existing_path("model.checkpoint", path, "a DiT file or folder (safetensors, HF folder, .pth)")
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError("model.checkpoint", str(err)) from None
    found = detect(ckpt.state_dict, role="diffusion", class_name=ckpt.class_name)
    if found is None:
        other = detect(ckpt.state_dict, class_name=ckpt.class_name)
        if other is not None:  # a VAE or a T5 in the model's place
            where = "text_encoder.path" if other.kind.role == "text" else "vae.path"
            raise ConfigError("model.checkpoint", f"{path} holds {describe(other)}, not the diffusion model; "
                                                  f"it belongs in {where}; set model.checkpoint to the STDiT file")
        raise ConfigError("model.checkpoint", f"{path} holds no STDiT weights")
    return found.kind.class_name


# ---------------------------------------------------------------------------
# Small checks
# ---------------------------------------------------------------------------


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(repr, allowed))}")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")


def _at_least(key: str, value, minimum) -> None:
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")


def _existing_file(key: str, path: str, what: str) -> None:
    if not path:
        raise ConfigError(key, f"not set; {what}")
    if not Path(path).is_file():
        raise ConfigError(key, f"file not found: {path}; {what}")


def _writable_folder(key: str, path: str) -> None:
    """``path`` is a folder or can be made one: not a file, and its nearest existing parent is writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(key, f"{folder} is a file, not a folder; choose a folder path (it is created if needed)")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(key, f"{folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{folder} cannot be written: no write permission in {existing}")


def _existing_path(key: str, path: str, what: str) -> None:
    if not path:
        raise ConfigError(key, f"not set; expected {what}")
    if not Path(path).exists():
        raise ConfigError(key, f"not found: {path}; expected {what}")


__all__ = ["TRAINABLE_CLASSES", "model_class_name", "validate_config"]
