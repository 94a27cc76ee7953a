"""LoRA fine-tuning of the Open-Sora 2.0 MMDiT as a task of the config trainer (``opensora-train train``).

What the official 2.0 trainer does (``scripts/diffusion/train.py``, ``configs/diffusion/train/*.py`` of the 2.0
code), on the shared data pipeline of the other tasks:

* data: the ``prepare`` CSV, buckets with the 2.0 tables and draws (4k+1 frames, the 256px / 768px sizes of
  :mod:`opensora_core.geometry.opensora_v2`), captions with the training suffix " <fps> FPS.";
* caches (:mod:`.cache`): the Hunyuan VAE's posterior sample of every clip (and, for image-to-video conditions,
  its first and last frame encoded alone), T5 (all 512 positions) + pooled CLIP-L of every caption and of the
  empty caption; the encoders are freed before the MMDiT is loaded;
* model: the released MMDiT frozen in fp32/bf16 or fp8, rank-r adapters (:mod:`.mmdit_lora`), activation
  checkpointing, block swap;
* loss: the 2.0 flow loss (:class:`opensora_core.sampling.v2_losses.V2FlowObjective`) with the condition type
  of each sample drawn from ``condition_config`` and each encoder's caption replaced by the null caption with
  the ``dropout_ratio`` probability (T5 and CLIP drawn separately, as the official ``dropout_condition``);
* export: ``export/<run>-lora.safetensors`` with ComfyUI's LoRA keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from opensora_core.conditioning.v2 import ConditionV2, build_condition
from opensora_core.dtypes import DTYPES
from opensora_core.families import TextFile, for_class
from opensora_core.loading import load_dit, load_vae
from opensora_core.lora import comfy_lora_from_state, save_lora
from opensora_core.sampling.v2_losses import V2FlowObjective, sample_times, training_alpha

from .buckets import BucketTable, bucket_summary
from .cache import (CacheDir, cache_captions_v2, cache_latents, caption_key, file_fingerprint, free_memory, latent_key,
                    progress_bar, shard)
from .config import TrainConfig
from .data import Clip, plan_epoch
from .datasets import read_datasets
from .mmdit_lora import I2V_TYPES, add_adapters, place_model
from .rng import StepRandomness
from .sampler import BucketBatchSampler
from .task import TaskData
from .validate import model_class_name

log = logging.getLogger("opensora")

NULL_CAPTION = ""  # the official null caption: the encoders' output for the empty text


class V2ClipDataset(torch.utils.data.Dataset):
    """Item i: the cached latent x0 (C, T, H, W) (+ ``head``/``tail`` (C, 1, H, W)), T5 states ``txt`` (L, C)
    and pooled CLIP ``y_vec`` (C') of clip i."""

    def __init__(self, clips: Sequence[Clip], latents: Sequence[Path], captions: Sequence[Path]) -> None:
        self.clips, self.latents, self.captions = list(clips), list(latents), list(captions)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        latent = {("x0" if k == "latent" else k): v.float() for k, v in load_file(str(self.latents[i])).items()}
        return latent | {k: v.float() for k, v in load_file(str(self.captions[i])).items()}


class MMDiTLoRATask:
    """The :class:`~.task.Task` of LoRA on the Open-Sora 2.0 MMDiT (module docstring)."""

    places_model = True  # build_model puts the model on the device (block swap): accelerate must not move it

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.class_name = model_class_name(cfg)
        self.family = for_class(self.class_name)
        self.objective = V2FlowObjective()
        self.cache = CacheDir(cfg.cache_dir)
        self.max_length = self.family.caption_length
        self.text_id = _text_fingerprint(cfg)
        self.conditions = {k: float(v) for k, v in (cfg.condition_config or {"t2v": 1}).items()}
        self.dropout = {k: float(v) for k, v in (cfg.dropout_ratio or dict(self.family.training.caption_dropout)).items()}
        self.device = torch.device("cpu")  # the accelerator's, from prepare_data
        self.dtype = DTYPES[cfg.model.dtype]
        self.null_path: Path | None = None
        self._null: dict[str, torch.Tensor] | None = None
        self.lora_paths: list[str] = []

    @property
    def needs_ends(self) -> bool:
        """Whether clips cache their first and last frame encoded alone (image-to-video conditions)."""
        return any(self.conditions.get(k, 0) > 0 for k in I2V_TYPES)

    # -- data -------------------------------------------------------------------

    def prepare_data(self, accelerator) -> TaskData:
        cfg = self.cfg
        self.device = accelerator.device
        entries = read_datasets(cfg.data)
        table = BucketTable(cfg.data.buckets, cfg.data.resolutions, training=self.family.training)
        plans = [plan_epoch(entries, table, cfg.data.frame_interval, cfg.run.seed, v)
                 for v in range(cfg.data.epoch_variants)]
        summary = bucket_summary(table, [c.bucket if c else None for c in plans[0]], [str(e.path) for e in entries])
        clips = [c for plan in plans for c in plan if c is not None]
        texts = [self.caption_text(c) for c in clips]
        captions = self._cache_captions(accelerator, [*texts, NULL_CAPTION])
        self.null_path = captions[NULL_CAPTION]
        latents = self._cache_latents(accelerator, clips)
        kept = [i for i, c in enumerate(clips) if latents[i].exists()]
        if len(kept) < len(clips):
            log.warning("%d clip(s) could not be read and are left out", len(clips) - len(kept))
        dataset = V2ClipDataset([clips[i] for i in kept], [latents[i] for i in kept],
                                [captions[texts[i]] for i in kept])
        sampler = BucketBatchSampler(_epoch_groups(dataset.clips, cfg.data.epoch_variants), table.batch_size,
                                     seed=cfg.run.seed, shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
        return TaskData(dataset, sampler, summary)

    def _fps(self, clip: Clip) -> int | None:
        """The frame rate a clip is trained at (None: unknown or an image, no FPS text, as officially)."""
        if clip.is_image or not clip.entry.fps:
            return None
        return int(clip.entry.fps // self.cfg.data.frame_interval)

    def caption_text(self, clip: Clip) -> str:
        """The training caption: the text with " <fps> FPS." (the 2.0 dataset's suffix; no motion score, which
        needs the official VMAF column)."""
        return self.family.training.caption_suffix(clip.entry.text, self._fps(clip), None)

    def _cache_captions(self, accelerator, texts: list[str]) -> dict[str, Path]:
        cfg = self.cfg
        wanted = list(dict.fromkeys(texts))
        paths = {t: self.cache.caption(caption_key(t, self.text_id, self.max_length)) for t in wanted}
        todo = [t for t in wanted if not paths[t].exists()]
        if todo:
            enc = cfg.text_encoder
            encoder = self.family.load_text([TextFile(enc.path, enc.tokenizer or None),
                                             TextFile(enc.clip, enc.clip_tokenizer or None)],
                                            max_length=self.max_length, dtype=DTYPES[enc.dtype],
                                            device=accelerator.device)
            mine = shard(todo, accelerator.process_index, accelerator.num_processes)
            with progress_bar(accelerator, len(mine), "caching T5 + CLIP outputs") as bar:
                cache_captions_v2(mine, [paths[t] for t in mine], encoder, batch_size=enc.batch_size,
                                  dtype=DTYPES[cfg.cache.dtype], progress=bar.update)
            del encoder
            free_memory()
        accelerator.wait_for_everyone()
        return paths

    def _cache_latents(self, accelerator, clips: list[Clip]) -> list[Path]:
        cfg = self.cfg
        vae_id = f"{file_fingerprint(cfg.vae.path)}:{cfg.vae.dtype}"
        paths = [self.cache.latent(latent_key(c, vae_id, cfg.cache.posterior, cfg.run.seed, ends=self.needs_ends))
                 for c in clips]
        todo = [i for i, p in enumerate(paths) if not p.exists()]
        if todo:
            vae = load_vae(cfg.vae.path, expect=self.family.vae, dtype=DTYPES[cfg.vae.dtype],
                           device=accelerator.device)
            mine = shard(todo, accelerator.process_index, accelerator.num_processes)
            with progress_bar(accelerator, len(mine), "caching VAE latents") as bar:
                cache_latents([clips[i] for i in mine], [paths[i] for i in mine], vae, posterior=cfg.cache.posterior,
                              seed=cfg.run.seed, dtype=DTYPES[cfg.cache.dtype], progress=bar.update,
                              ends=self.needs_ends)
            del vae
            free_memory()
        accelerator.wait_for_everyone()
        return paths

    # -- model ------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The released MMDiT, frozen (``model.dtype``, ``model.fp8``), with adapters, placed on the device
        (block-swapped with ``model.blocks_on_device``): the trainer leaves its placement alone."""
        cfg = self.cfg
        loaded = load_dit(cfg.model.checkpoint, dtype=self.dtype, device="cpu", fp8=cfg.model.fp8)
        model = loaded.model
        self.lora_paths = add_adapters(model, cfg.lora.rank, cfg.lora.alpha, targets=cfg.lora.targets,
                                       seed=cfg.run.seed)
        place_model(model, self.device, blocks_on_device=cfg.model.blocks_on_device,
                    gradient_checkpointing=cfg.model.gradient_checkpointing)
        model.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: LoRA rank %d on %d layers, %.2fM trainable weights; base %s%s", self.class_name,
                 cfg.lora.rank, len(self.lora_paths), trainable / 1e6, "fp8" if cfg.model.fp8 else cfg.model.dtype,
                 f", {cfg.model.blocks_on_device} blocks on the device" if cfg.model.blocks_on_device else "")
        return model

    # -- loss -------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, batch: dict, rng: StepRandomness) -> dict[str, torch.Tensor]:
        x0 = batch["x0"].to(self.device, self.dtype)  # (B, C, T, H, W)
        B = x0.shape[0]
        condition = self.draw_condition(batch, rng)
        txt, y_vec = self.drop_captions(batch["txt"], batch["y_vec"], rng)  # (B, L, C), (B, C')
        t = sample_times(B, training_alpha(tuple(x0.shape), self.objective.patch_size), rng.torch)
        noise = torch.randn(x0.shape, generator=rng.torch, device=rng.torch.device)
        loss = self.objective.loss(model, x0, txt.to(self.device, self.dtype), y_vec.to(self.device, self.dtype),
                                   condition=condition, t=t, noise=noise)
        return {"loss": loss}

    def draw_condition(self, batch: dict, rng: StepRandomness) -> ConditionV2 | None:
        """Per sample a condition type drawn with the ``condition_config`` weights (``random.choices``, as the
        official ``prepare_visual_condition_causal``); None when every sample is text-to-video."""
        x0 = batch["x0"]
        if x0.shape[2] == 1 or set(self.conditions) == {"t2v"}:
            return None  # images and text-to-video runs: zero condition channels
        kinds = rng.python.choices(list(self.conditions), weights=list(self.conditions.values()), k=x0.shape[0])
        masks, masked = [], []
        for b, kind in enumerate(kinds):
            refs = {"t2v": None, "i2v_head": [batch["head"][b]], "i2v_tail": [batch["tail"][b]],
                    "i2v_loop": [batch["head"][b], batch["tail"][b]]}[kind]
            one = build_condition(x0[b : b + 1], kind, None if refs is None else [refs])
            masks.append(one.masks)  # (1, 1, T, H, W)
            masked.append(one.masked_ref)  # (1, C, T, H, W)
        return ConditionV2("training", torch.cat(masks).to(self.device, self.dtype),
                           torch.cat(masked).to(self.device, self.dtype), [None] * len(kinds))

    def drop_captions(self, txt: torch.Tensor, y_vec: torch.Tensor,
                      rng: StepRandomness) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's T5 states, then its CLIP vector, replaced by the null caption's with the ``dropout_ratio``
        probability (two draws, T5 first)."""
        null = self.null_caption()
        out = []
        for name, value in (("t5", txt), ("clip", y_vec)):
            p = self.dropout.get(name, 0.0)
            drop = torch.rand(value.shape[0], generator=rng.torch, device=rng.torch.device) < p  # (B,)
            key = "txt" if name == "t5" else "y_vec"
            drop = drop.to(value.device).view(-1, *[1] * (value.ndim - 1))
            out.append(torch.where(drop, null[key].to(value), value))
        return out[0], out[1]

    def null_caption(self) -> dict[str, torch.Tensor]:
        if self._null is None:
            if self.null_path is None:
                raise RuntimeError("the null caption is cached by prepare_data; call it first")
            self._null = {k: v.float() for k, v in load_file(str(self.null_path)).items()}  # txt (L, C), y_vec (C')
        return self._null

    # -- validation / export ------------------------------------------------------

    def validate(self, model: nn.Module, step: int, accelerator, tracker) -> list[Path]:
        raise ValueError("validation.every: samples during Open-Sora 2.0 training are not implemented; set "
                         "validation.every = 0 and sample the export with opensora-generate --lora")

    def export(self, model: nn.Module, step: int, state: dict[str, torch.Tensor]) -> list[Path]:
        """``<output_dir>/export/<run>-lora.safetensors``: ComfyUI's LoRA keys (``diffusion_model.<path>.lora_A``
        / ``lora_B`` / ``alpha``), which ComfyUI's LoRA loaders and the Open-Sora LoRA Loader read."""
        cfg = self.cfg
        name = cfg.output_dir.resolve().name
        info = {"class": self.class_name, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha,
                "targets": list(cfg.lora.targets), "base": Path(cfg.model.checkpoint).name, "step": step}
        lora = {k: v.float().cpu() for k, v in comfy_lora_from_state(state, cfg.lora.alpha).items()}
        path = save_lora(lora, cfg.output_dir / "export" / f"{name}-lora.safetensors",
                         dtype=DTYPES[cfg.export.dtype], info=info)
        log.info("exported %s", path)
        return [path]


def _epoch_groups(clips: Sequence[Clip], variants: int):
    """epoch -> {bucket: dataset indices} (epoch e uses the clips of variant e % variants)."""
    def groups(epoch: int) -> dict:
        found: dict = {}
        for i, clip in enumerate(clips):
            if clip.epoch == epoch % variants:
                found.setdefault(clip.bucket, []).append(i)
        return found

    return groups


def _text_fingerprint(cfg: TrainConfig) -> str:
    enc = cfg.text_encoder
    files = [p for p in (enc.path, enc.tokenizer, enc.clip, enc.clip_tokenizer) if p]
    return ":".join([*(file_fingerprint(p) for p in files), enc.dtype, "v2"])


__all__ = ["MMDiTLoRATask", "V2ClipDataset"]
