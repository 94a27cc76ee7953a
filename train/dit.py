"""Training the diffusion transformer (STDiT3 with rectified flow, STDiT2 with IDDPM, Open-Sora-Plan's
OpenSoraT2V_v1_3 with v-prediction on the zero-SNR schedule) on cached latents.

Data phase: metadata -> clips per epoch variant (buckets, frame windows) -> T5 outputs and VAE latents
cached to disk (T5 and the VAE are loaded, used and freed before the DiT is built). Model phase:
fine-tune a checkpoint (:func:`opensora_core.checkpoints.load_dit`) or build from a config with
``initialize_weights()``; LoRA adapters optional. Loss: the objective of
:mod:`opensora_core.sampling.losses` with the official training masks. Export: the official key
layout + config (``load_dit`` reads it), or a ComfyUI-style LoRA file.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from opensora_core.checkpoints import read_checkpoint, save_checkpoint
from opensora_core.dtypes import DTYPES
from opensora_core.families import build_model, for_class
from opensora_core.loading import load_dit, load_vae, read_dit_config
from opensora_core.lora import add_lora, comfy_lora_from_state, fuse_lora_state, save_lora
from opensora_core.model_args import MODEL_ARG_NAMES
from opensora_core.models import presets
from opensora_core.sampling.losses import build_objective
from opensora_core.text.t5 import load_t5_encoder

from .buckets import BucketTable, bucket_summary
from .cache import (
    CacheDir,
    CachedTextEncoder,
    HeldTensors,
    cache_captions,
    cache_latents,
    caption_key,
    file_fingerprint,
    free_memory,
    latent_key,
    progress_bar,
    read_caption,
    shard,
)
from .config import TrainConfig
from .data import Clip, plan_epoch, size_args
from .datasets import read_datasets
from .masks import MaskGenerator
from .rng import StepRandomness, mix_seed
from .sampler import BucketBatchSampler
from .model_facts import TRAIN_SETTINGS_KEY, TrainedSettings
from .task import TaskData
from .validate import model_class_name
from .validation import caption_phrases, run_validation, validation_texts

log = logging.getLogger("opensora")

STEP_METADATA = "opensora.train_step"


# ---------------------------------------------------------------------------
# Dataset over the caches
# ---------------------------------------------------------------------------


class CachedClipDataset(torch.utils.data.Dataset):
    """Item i: cached latent, caption (padded to L) and size arguments of clip i (the cached tensors kept in
    memory up to ``memory_bytes``: :class:`HeldTensors`)."""

    def __init__(self, clips: Sequence[Clip], latents: Sequence[Path], captions: Sequence[Path], max_length: int,
                 sizes: Sequence[dict[str, float]], memory_bytes: float = 0) -> None:
        self.clips, self.latents, self.captions = list(clips), list(latents), list(captions)
        self.max_length, self.sizes = max_length, list(sizes)
        self.held = HeldTensors(memory_bytes)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        y, mask = read_caption(self.captions[i], self.max_length, self.held.read)  # (1, L, C), (L,)
        item = {"x0": self.held.read(self.latents[i], "latent").float(), "y": y, "mask": mask}  # x0 (C, t, h, w)
        item.update({k: torch.tensor(v, dtype=torch.float32) for k, v in self.sizes[i].items()})
        return item


# ---------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------


class DiTTask:
    places_model = False  # accelerate moves the model to the device

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.class_name = model_class_name(cfg)
        self.family = for_class(self.class_name)
        kind, options = _objective_options(cfg, self.family.training)
        self.objective = build_objective(kind, **options)
        self.masks = MaskGenerator(cfg.mask_ratios) if cfg.mask_ratios else None
        self.cache = CacheDir(cfg.cache_dir)
        self.model_config = self._model_config()
        # STDiT stores its caption length; Open-Sora-Plan's transformer takes any, the family's encoder pads to 512
        self.max_length = int(self.model_config.get("model_max_length", self.family.caption_length))
        self.t5_id = _t5_fingerprint(cfg)
        self.text_encoder = CachedTextEncoder(self.cache, self.t5_id, self.max_length)
        self.vae = None  # kept on the CPU for validation samples
        self.lora_paths: list[str] = []
        self.carried: frozenset[str] = frozenset()  # score phrases the training captions carry
        self.train_settings: TrainedSettings | None = None  # written into the export's metadata

    # -- model config -----------------------------------------------------------

    def _model_config(self) -> dict:
        """Official constructor kwargs of the model to train (read without loading weights)."""
        model = self.cfg.model
        if model.checkpoint:
            ckpt = read_checkpoint(model.checkpoint)
            _, config = read_dit_config(ckpt, overrides=model.config)
            return {**(ckpt.config or {}), **config}
        config = dict(model.config)
        if model.preset:
            config = {**dataclasses.asdict(presets()[model.preset][1]), **config}
        with torch.device("meta"):  # fills in the defaults without allocating weights
            built = build_model(self.class_name, config)
        return _jsonable(dataclasses.asdict(built.config))

    # -- data -------------------------------------------------------------------

    def prepare_data(self, accelerator) -> TaskData:
        cfg = self.cfg
        entries = read_datasets(cfg.data)
        self.carried = caption_phrases([e.text for e in entries])
        table = BucketTable(cfg.data.buckets, cfg.data.resolutions, training=self.family.training)
        plans = [plan_epoch(entries, table, cfg.data.frame_interval, cfg.run.seed, v)
                 for v in range(cfg.data.epoch_variants)]
        summary = bucket_summary(table, [c.bucket if c else None for c in plans[0]], [str(e.path) for e in entries])
        clips = [c for plan in plans for c in plan if c is not None]
        captions = self._cache_captions(accelerator, [c.entry.text for c in clips])
        latents, failed = self._cache_latents(accelerator, clips)
        kept = [i for i, c in enumerate(clips) if latents[i].exists()]
        if failed or len(kept) < len(clips):
            log.warning("%d clip(s) could not be read and are left out", len(clips) - len(kept))
        sizes = [size_args(clips[i], self.family.training, cfg.data.frame_interval, cfg.data.ar) for i in kept]
        self.train_settings = _settings([clips[i] for i in kept], sizes, self.carried)
        dataset = CachedClipDataset([clips[i] for i in kept], [latents[i] for i in kept],
                                    [captions[clips[i].entry.text] for i in kept], self.max_length, sizes,
                                    memory_bytes=cfg.cache.memory_gb * 2**30)
        sampler = BucketBatchSampler(self._groups(dataset), table.batch_size, seed=cfg.run.seed,
                                     shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
        return TaskData(dataset, sampler, summary)

    def _groups(self, dataset: CachedClipDataset):
        variants = self.cfg.data.epoch_variants

        def groups(epoch: int) -> dict:
            found: dict = {}
            for i, clip in enumerate(dataset.clips):
                if clip.epoch == epoch % variants:
                    found.setdefault(clip.bucket, []).append(i)
            return found

        return groups

    def _cache_captions(self, accelerator, texts: list[str]) -> dict[str, Path]:
        """Cache every caption and validation prompt; returns text -> file."""
        cfg = self.cfg
        wanted = list(dict.fromkeys(texts + (validation_texts(self.family, cfg.validation, self.carried)
                                             if cfg.validation.every else [])))
        paths = {t: self.cache.caption(caption_key(t, self.t5_id, self.max_length)) for t in wanted}
        todo = [t for t in wanted if not paths[t].exists()]
        if todo:
            encoder = load_t5_encoder(cfg.text_encoder.path, cfg.text_encoder.tokenizer or None,
                                      max_length=self.max_length, dtype=DTYPES[cfg.text_encoder.dtype],
                                      device=accelerator.device)
            self._check_caption_channels(encoder.output_dim)
            mine = shard(todo, accelerator.process_index, accelerator.num_processes)
            with progress_bar(accelerator, len(mine), "caching T5 outputs") as bar:
                cache_captions(mine, [paths[t] for t in mine], encoder, batch_size=cfg.text_encoder.batch_size,
                               dtype=DTYPES[cfg.cache.dtype], progress=bar.update)
            del encoder
            free_memory()
        accelerator.wait_for_everyone()
        return paths

    def _check_caption_channels(self, channels: int) -> None:
        expected = self.model_config.get("caption_channels", 4096)
        if channels != expected:
            raise ValueError(f"text_encoder.path: the T5 gives {channels}-wide features but the model takes "
                             f"caption_channels = {expected}")

    def _cache_latents(self, accelerator, clips: list[Clip]) -> tuple[list[Path], list]:
        cfg = self.cfg
        vae_id = f"{file_fingerprint(cfg.vae.path)}:{cfg.vae.dtype}"
        paths = [self.cache.latent(latent_key(c, vae_id, cfg.cache.posterior, cfg.run.seed)) for c in clips]
        todo = [i for i, p in enumerate(paths) if not p.exists()]
        failed = []
        if todo or cfg.validation.every:
            self.vae = self._load_vae(accelerator.device)
            mine = shard(todo, accelerator.process_index, accelerator.num_processes)
            with progress_bar(accelerator, len(mine), "caching VAE latents") as bar:
                failed = cache_latents([clips[i] for i in mine], [paths[i] for i in mine], self.vae,
                                       posterior=cfg.cache.posterior, seed=cfg.run.seed,
                                       dtype=DTYPES[cfg.cache.dtype], progress=bar.update)
            self.vae.to("cpu")
            if not cfg.validation.every:
                self.vae = None
            free_memory()
        accelerator.wait_for_everyone()
        return paths, failed

    def _load_vae(self, device):
        cfg = self.cfg.vae
        return load_vae(cfg.path, expect=self.family.vae, dtype=DTYPES[cfg.dtype], device=device,
                        micro_batch_size=cfg.micro_batch_size, norm_num_groups=cfg.norm_num_groups)

    # -- model ------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        if cfg.model.checkpoint:
            loaded = load_dit(cfg.model.checkpoint, class_name=self.class_name, config_overrides=cfg.model.config)
            model, self.model_config = loaded.model, _jsonable(loaded.config)
        else:
            model = build_model(self.class_name, self.model_config)
            _initialize(model)
        model.train()
        if cfg.lora.enabled:
            model.requires_grad_(False)
            self.lora_paths = add_lora(model, cfg.lora.rank, cfg.lora.alpha, targets=cfg.lora.targets,
                                       dropout=cfg.lora.dropout)
            log.info("LoRA rank %d on %d layers", cfg.lora.rank, len(self.lora_paths))
        else:
            model.requires_grad_(True)
            if hasattr(model, "_apply_freeze_flags"):  # STDiT's official freeze_y_embedder / only_train_temporal
                model._apply_freeze_flags()
        model.gradient_checkpointing = cfg.model.gradient_checkpointing
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: %.2fM trainable of %.2fM weights", self.class_name, trainable / 1e6,
                 sum(p.numel() for p in model.parameters()) / 1e6)
        return model

    # -- loss -------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, batch: dict, rng: StepRandomness) -> dict[str, torch.Tensor]:
        x0 = batch["x0"]  # (B, C, T, H, W)
        B, T = x0.shape[0], x0.shape[2]
        frame_mask = None
        if self.masks is not None:
            mask_gen = torch.Generator().manual_seed(mix_seed(rng.seed, "mask"))
            frame_mask = self.masks.masks(B, T, rng.python, mask_gen).to(x0.device)  # (B, T) bool
        sizes = {k: batch[k] for k in MODEL_ARG_NAMES}
        t = self.objective.sample_timesteps(B, rng.torch, height=sizes["height"], width=sizes["width"],
                                            num_frames=sizes["num_frames"])
        noise = torch.randn(x0.shape, generator=rng.torch, device=rng.torch.device).to(x0.device)
        x_t = self.objective.noisy_input(x0, noise, t, frame_mask)
        rng.seed_global()  # caption dropout inside the model draws from the global RNG
        out = self.family.training.forward(model, x_t, t, batch["y"], batch["mask"], frame_mask, sizes)
        terms = self.objective.losses(out, x0, x_t, noise, t, frame_mask)
        return {k: v.mean() for k, v in terms.items()}

    # -- validation / export -------------------------------------------------------

    def validate(self, model: nn.Module, step: int, accelerator, tracker) -> list[Path]:
        return run_validation(model, self.vae, self.text_encoder, self.cfg.validation, step=step,
                              output_dir=self.cfg.output_dir, device=accelerator.device, tracker=tracker,
                              write=accelerator.is_main_process, carried=self.carried)

    def export(self, model: nn.Module, step: int, state: dict[str, torch.Tensor]) -> list[Path]:
        """Official-layout weights + config (``load_dit`` reads them), or the LoRA (and merged weights).

        Files: ``<output_dir>/export/<run>.safetensors`` (``<run>-lora``, ``<run>-merged``), run = the
        output folder's name; a later export overwrites them (the step is in the metadata).
        """
        cfg = self.cfg
        folder = cfg.output_dir / "export"
        name = cfg.output_dir.resolve().name
        dtype = DTYPES[cfg.export.dtype]
        if not cfg.lora.enabled:
            paths = [self._save_model(state, folder / f"{name}.safetensors", dtype, step)]
        else:
            info = {"class": self.class_name, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha,
                    "targets": cfg.lora.targets, "base": str(cfg.model.checkpoint), "step": step}
            lora = comfy_lora_from_state(state, cfg.lora.alpha)
            paths = [save_lora(lora, folder / f"{name}-lora.safetensors", dtype=dtype, info=info)]
            if cfg.export.merge_lora:
                merged = fuse_lora_state(state, cfg.lora.alpha)
                paths.append(self._save_model(merged, folder / f"{name}-merged.safetensors", dtype, step))
        for path in paths:
            log.info("exported %s", path)
        return paths

    def _save_model(self, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype, step: int) -> Path:
        tensors = {k: v.detach().to(dtype) for k, v in state.items()}
        metadata = {STEP_METADATA: str(step)}
        if self.train_settings is not None:  # what check warns about when this export is fine-tuned again
            metadata[TRAIN_SETTINGS_KEY] = self.train_settings.to_json()
        return save_checkpoint(tensors, path, class_name=self.class_name, config=_jsonable(self.model_config),
                               metadata=metadata)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _objective_options(cfg: TrainConfig, training) -> tuple[str, dict]:
    """The objective kind (config, else the family's) and its options."""
    obj = cfg.objective
    kind = obj.kind or training.objective
    if kind == "rflow":
        return kind, dict(sample_method=obj.sample_method, loc=obj.loc, scale=obj.scale,
                          use_timestep_transform=obj.timestep_transform, transform_scale=obj.transform_scale)
    if kind == "vprediction":
        return kind, dict(zero_snr=training.zero_snr, snr_gamma=training.snr_gamma)
    return kind, {}


def _initialize(model: nn.Module) -> None:
    """The official initialisation of a model trained from scratch (STDiT's ``initialize_weights``); a class
    without one keeps its layers' default init, as its official constructor does."""
    if hasattr(model, "initialize_weights"):
        model.initialize_weights()
    else:
        log.info("%s: trained from its constructor's initialisation", type(model).__name__)


def _settings(clips: list[Clip], sizes: list[dict[str, float]], carried: frozenset[str]) -> TrainedSettings | None:
    """The commonest video bucket and the median fps of the clips trained on."""
    videos = [(c, s) for c, s in zip(clips, sizes) if not c.is_image]
    if not videos:
        return None
    (t, h, w), _ = Counter((c.num_frames, c.height, c.width) for c, _ in videos).most_common(1)[0]
    fps = statistics.median(s["fps"] for _, s in videos)
    return TrainedSettings("", h, w, t, float(fps), tuple(sorted(carried)))


def _t5_fingerprint(cfg: TrainConfig) -> str:
    parts = [file_fingerprint(cfg.text_encoder.path), cfg.text_encoder.dtype]
    if cfg.text_encoder.tokenizer:
        parts.append(file_fingerprint(cfg.text_encoder.tokenizer))
    return ":".join(parts)


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


__all__ = ["CachedClipDataset", "DiTTask"]
