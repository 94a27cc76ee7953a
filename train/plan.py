"""What a run will do, before it runs: ``opensora-train check`` prints this.

* the bucket table of the first epoch (samples per resolution x frames x aspect) and every clip that fits no
  bucket, by name and reason (:func:`drop_reason`);
* the arithmetic of the run: batch size per step (per process x processes x gradient accumulation), optimizer
  steps per epoch, epochs for ``run.max_steps``, and a time estimate from the steps this run already logged;
* warnings where the config disagrees with the model being fine-tuned (:func:`mismatch_warnings`, from
  :mod:`.model_facts`): frame rate (``data.frame_interval``), clip sizes, validation sizes and the score
  phrases of the captions.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass

from opensora_core.text.prompts import AESTHETIC_PHRASE

from .buckets import PIXEL_TOLERANCE, BucketKey, BucketTable, bucket_summary
from .config import TrainConfig
from .data import DEFAULT_FPS, MetadataEntry, plan_epoch
from .datasets import read_datasets
from .model_facts import TrainedSettings
from .sampler import BucketBatchSampler
from .validate import bucket_table
from .validation import caption_phrases, validation_aesthetic

FPS_TOLERANCE = 0.15  # a clip frame rate within 15 % of the model's passes (30 fps // 4 = 7 for an 8 fps model)


@dataclass(frozen=True)
class RunPlan:
    entries: list[MetadataEntry]
    keys: list[BucketKey | None]  # bucket of each entry in epoch 0 (None = dropped)
    table: BucketTable
    batches: int  # batches of epoch 0, all processes together
    processes: int
    accumulation: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.batches / self.processes) // self.accumulation)


def make_plan(cfg: TrainConfig, processes: int = 1) -> RunPlan:
    entries = read_datasets(cfg.data)
    table = bucket_table(cfg)
    clips = plan_epoch(entries, table, cfg.data.frame_interval, cfg.run.seed, 0)
    groups: dict[BucketKey, list[int]] = {}
    for i, clip in enumerate(clips):
        if clip is not None:
            groups.setdefault(clip.bucket, []).append(i)
    sampler = BucketBatchSampler(lambda epoch: groups, table.batch_size, seed=cfg.run.seed,
                                 shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
    return RunPlan(entries, [c.bucket if c else None for c in clips], table, len(sampler), processes,
                   cfg.run.gradient_accumulation_steps)


def drop_reason(entry: MetadataEntry, table: BucketTable, frame_interval: int) -> str:
    """Why a clip fits no bucket: too few pixels, too few frames, an image without a 1-frame bucket, or a
    keep_prob draw (the rule of :meth:`BucketTable.assign`)."""
    pixels = entry.height * entry.width
    fitting = [r for r, res in table.resolutions.items() if pixels >= res.pixels * PIXEL_TOLERANCE]
    if not fitting:
        smallest = min(table.resolutions.values(), key=lambda r: r.pixels)
        return (f"too small: {entry.width}x{entry.height} has fewer than {PIXEL_TOLERANCE:.0%} of the "
                f"{smallest.pixels} pixels of the smallest resolution ({smallest.name})")
    if entry.is_image:
        if not any(1 in table.entries[r] for r in fitting):
            return "an image, and no fitting resolution has a 1-frame bucket"
        return "not drawn this epoch (keep_prob < 1)"
    counts = [t for r in fitting for t in table.entries[r] if t != 1]
    if not counts:
        return "no video bucket at its resolution"
    need, at_least = min(counts) * frame_interval, table.rule == "v2"  # 2.0: T // interval >= t; v1: T > t * interval
    if entry.num_frames < need or (entry.num_frames == need and not at_least):
        return (f"too few frames: {entry.num_frames}; the smallest video bucket needs {'at least' if at_least else 'more than'} "
                f"{min(counts)} x {frame_interval} = {need}")
    return "not drawn this epoch (keep_prob < 1 or frame_prob)"


def plan_text(cfg: TrainConfig, plan: RunPlan) -> str:
    names = [str(e.path) + (f" [{e.start_frame}:]" if e.start_frame else "") for e in plan.entries]
    lines = ["buckets (epoch 0):", bucket_summary(plan.table, plan.keys, names)]
    dropped = [i for i, k in enumerate(plan.keys) if k is None]
    if dropped:
        lines.append(f"dropped ({len(dropped)}):")
        lines += [f"  {names[i]}: {drop_reason(plan.entries[i], plan.table, cfg.data.frame_interval)}"
                  for i in dropped]
    lines += run_arithmetic(cfg, plan)
    return "\n".join(lines)


def run_arithmetic(cfg: TrainConfig, plan: RunPlan) -> list[str]:
    sizes = sorted({plan.table.batch_size(k) for k in plan.keys if k is not None}) or [0]
    scale = plan.processes * plan.accumulation
    span = lambda values: str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"  # noqa: E731
    return [
        f"batch size per step: {span(sizes)} per process x {plan.processes} process(es) x {plan.accumulation} "
        f"accumulation = {span([b * scale for b in sizes])} samples",
        f"steps per epoch: {plan.steps_per_epoch} ({plan.batches} batches)",
        f"run.max_steps = {cfg.run.max_steps}: {cfg.run.max_steps / plan.steps_per_epoch:.1f} epoch(s)",
        time_estimate(cfg),
    ]


def time_estimate(cfg: TrainConfig) -> str:
    """From the seconds per step this run logged (``loss.jsonl``), else how to get one."""
    log = cfg.output_dir / "loss.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    seconds = [r["seconds"] for r in records[1:] if isinstance(r.get("seconds"), (int, float))]  # skip warm-up
    if not seconds:
        return ("time: no step timed yet; `train` shows s/it from the first steps (this estimate then uses "
                f"{log})")
    per_step = statistics.median(seconds)
    done = records[-1]["step"]
    left = max(0, cfg.run.max_steps - done)
    return (f"time: {per_step:.2f} s/step (median of {len(seconds)} logged steps) -> "
            f"{_duration(per_step * cfg.run.max_steps)} for the run, {_duration(per_step * left)} left after "
            f"step {done}")


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def mismatch_warnings(cfg: TrainConfig, entries: list[MetadataEntry], trained: TrainedSettings | None) -> list[str]:
    """Where the data and validation settings differ from what the model was trained at (and the captions'
    score phrases from what validation appends)."""
    warnings = _phrase_warnings(cfg, entries, trained)
    if trained is None:
        return warnings
    source_fps = statistics.median([e.fps or DEFAULT_FPS for e in entries if not e.is_image] or [DEFAULT_FPS])
    fps = source_fps // cfg.data.frame_interval  # as the v1.2 dataset gives it (data.size_args)
    if abs(fps - trained.fps) > FPS_TOLERANCE * trained.fps:
        better = min(range(1, 11), key=lambda k: abs(source_fps // k - trained.fps))
        warnings.append(f"data.frame_interval = {cfg.data.frame_interval}: your clips ({source_fps:g} fps) are "
                        f"trained at {fps:g} fps, but {trained.source} was trained at {trained.fps:g} fps; "
                        f"set data.frame_interval = {better}")
    table = bucket_table(cfg)
    sizes = sorted({(t, *res.sizes[a]) for r, res in table.resolutions.items() for a in res.sizes
                    for t in table.entries[r] if t != 1})
    wanted = (trained.num_frames, trained.height, trained.width)
    if sizes and wanted not in sizes:
        shown = ", ".join(f"{t} frames {h}x{w}" for t, h, w in sizes[:4])
        warnings.append(f"data.buckets: {shown}; {trained.source} was trained at {trained.num_frames} frames "
                        f"{trained.height}x{trained.width}")
    val = cfg.validation
    if val.every and (val.height, val.width, val.num_frames, val.fps) != (trained.height, trained.width,
                                                                         trained.num_frames, trained.fps):
        warnings.append(f"validation: {val.num_frames} frames {val.height}x{val.width} at {val.fps:g} fps; "
                        f"{trained.source} samples {trained.num_frames} frames {trained.height}x{trained.width} at "
                        f"{trained.fps:g} fps (set validation.height/width/num_frames/fps)")
    return warnings


def _phrase_warnings(cfg: TrainConfig, entries: list[MetadataEntry], trained: TrainedSettings | None) -> list[str]:
    carried = caption_phrases([e.text for e in entries])
    warnings = []
    if trained is not None and AESTHETIC_PHRASE in trained.score_phrases and AESTHETIC_PHRASE not in carried:
        warnings.append(f"captions: {trained.source} was trained with '{AESTHETIC_PHRASE} X.' in its captions and "
                        "yours have none; add it with `prepare --caption-scores aesthetic` (needs the aesthetic "
                        "model files) or expect prompts without it to behave differently")
    appended = validation_aesthetic(cfg.validation, carried)
    if cfg.validation.every and appended is not None and AESTHETIC_PHRASE not in carried:
        warnings.append(f"validation.score_phrases = {cfg.validation.score_phrases!r} appends '{AESTHETIC_PHRASE} "
                        f"{appended:.1f}.' to the prompts but the training captions do not carry it")
    return warnings


__all__ = ["RunPlan", "drop_reason", "make_plan", "mismatch_warnings", "plan_text", "time_estimate"]
