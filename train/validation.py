"""Validation samples during training, through the one generation path (:func:`opensora_core.pipeline.generate`).

Each prompt (optionally with a reference image, i.e. image-to-video with ``validation.mask_strategy``)
is sampled with a fixed seed every ``validation.every`` steps, saved as MP4 under
``<output_dir>/validation/step-NNNNNNNN/`` and logged to TensorBoard as a strip of frames. Prompts
are encoded into the caption cache before training, so T5 is not loaded while the DiT trains; the
VAE waits on the CPU and visits the training device only while it decodes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from opensora_core import media
from opensora_core.families import Family
from opensora_core.pipeline import Components, GenerationSpec, device_of, generate, plan_generation
from opensora_core.text.prompts import AESTHETIC_PHRASE, SCORE_PHRASES

from .config import ValidationConfig

log = logging.getLogger("opensora")

LOGGED_FRAMES = 4  # frames per sample shown in TensorBoard


@dataclass
class ValidationItem:
    spec: GenerationSpec
    reference: Path | None


def caption_phrases(texts: list[str]) -> frozenset[str]:
    """The score phrases carried by at least half of the captions (official training drops each with p = 0.2)."""
    return frozenset(p for p in SCORE_PHRASES if texts and 2 * sum(p in t for t in texts) >= len(texts))


def validation_aesthetic(cfg: ValidationConfig, carried: frozenset[str] = frozenset()) -> float | None:
    """The aesthetic score appended to validation prompts: ``score_phrases`` "always" / "never", or "auto" =
    only when the training captions carry the phrase (so a model trained without it is not sampled with it)."""
    if cfg.score_phrases == "always" or (cfg.score_phrases == "auto" and AESTHETIC_PHRASE in carried):
        return cfg.aesthetic_score
    return None


def validation_items(cfg: ValidationConfig, carried: frozenset[str] = frozenset()) -> list[ValidationItem]:
    """One item per prompt of ``validation.prompts`` and of ``validation.prompt_file`` (per-prompt options)."""
    aesthetic = validation_aesthetic(cfg, carried)
    items = []
    for i, prompt in enumerate(cfg.prompts):
        ref = cfg.reference_images[i] if i < len(cfg.reference_images) and cfg.reference_images[i] else None
        spec = GenerationSpec(
            prompts=[prompt], height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, fps=cfg.fps,
            steps=cfg.steps or None, cfg_scale=cfg.cfg_scale, seed=cfg.seed + i,
            mask_strategy=cfg.mask_strategy if ref else "", aesthetic_score=aesthetic,
        )
        items.append(ValidationItem(spec, Path(ref) if ref else None))
    if cfg.prompt_file:
        from .prompt_file import read_prompt_file

        items += [ValidationItem(spec, ref) for spec, ref in read_prompt_file(cfg.prompt_file, cfg, aesthetic)]
    return items


def validation_texts(family: Family, cfg: ValidationConfig, carried: frozenset[str] = frozenset()) -> list[str]:
    """The exact texts the pipeline will give the text encoder (cleaned, with the release's suffixes or
    template, and the release's negative prompt), to cache."""
    texts = []
    for item in validation_items(cfg, carried):
        plan = plan_generation(family, item.spec, [1] if item.reference else [])
        texts += [t for prompts in plan.round_prompts for t in prompts]
        texts += plan.negative_prompts or []  # the family's default negative prompt (Open-Sora-Plan)
    return list(dict.fromkeys(texts))


class VisitDevice:
    """Placement for validation: the VAE (or any module but ``resident``) moves to ``device`` while used."""

    def __init__(self, device: torch.device, resident: nn.Module) -> None:
        self.device, self.resident = torch.device(device), resident

    @contextlib.contextmanager
    def use(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        if module is self.resident or not any(True for _ in module.parameters()):
            yield self.device
            return
        home = device_of(module)
        module.to(self.device)
        try:
            yield self.device
        finally:
            module.to(home)


@torch.no_grad()
def run_validation(model: nn.Module, vae: nn.Module, text_encoder, cfg: ValidationConfig, *, step: int,
                   output_dir: Path, device: torch.device, tracker=None, write: bool = True,
                   carried: frozenset[str] = frozenset()) -> list[Path]:
    """Sample every validation item with ``model`` (eval mode for the call) and save/log the videos
    (``write=False``: sample only, for the other processes of a sharded model)."""
    folder = output_dir / "validation" / f"step-{step:08d}"
    components = Components(model, vae, text_encoder, placement=VisitDevice(device, model))
    was_training = model.training
    model.eval()
    saved = []
    try:
        for i, item in enumerate(validation_items(cfg, carried)):
            refs = [media.read_frames(item.reference, max_frames=1)[0]] if item.reference else []
            result = generate(components, item.spec, refs)
            if not write:
                continue
            saved.append(media.save_output(result.frames[0], folder / f"sample-{i}.mp4", result.fps))
            if tracker is not None:
                _log_frames(tracker, f"validation/sample-{i}", result.frames[0], step)
    finally:
        model.train(was_training)
    if saved:
        log.info("validation samples at step %d: %s", step, ", ".join(str(p) for p in saved))
    return saved


def _log_frames(writer, tag: str, frames: torch.Tensor, step: int) -> None:
    """A few evenly spaced frames (T, H, W, 3 in 0..1) as one TensorBoard image batch."""
    count = min(LOGGED_FRAMES, frames.shape[0])
    index = torch.linspace(0, frames.shape[0] - 1, count).round().long()
    writer.add_images(tag, frames[index].clamp(0, 1), step, dataformats="NHWC")


__all__ = ["ValidationItem", "VisitDevice", "caption_phrases", "run_validation",
           "validation_aesthetic", "validation_items", "validation_texts"]
