"""The training engine: ``train(cfg)`` runs one task (DiT or VAE) through accelerate.

``train`` reads as its phases: config, accelerator, data (and caches), model, optimizer, prepare,
resume, loop, export. A *task* (:class:`~.dit.DiTTask`, :class:`~.vae_task.VAETask`) supplies what
differs: the data, the model, the loss of one batch, validation samples and the exported files.
Distribution (DDP / FSDP / DeepSpeed) is accelerate's, chosen by ``accelerate launch``.

Randomness: batches come from the bucket sampler (seeded per epoch); each micro-step seeds its own
generators from (run seed, micro-step, process) (:class:`~.rng.StepRandomness`). With
``save_state``/``load_state`` and ``skip_first_batches`` a resumed run therefore repeats an
uninterrupted one step for step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from torch import nn

from opensora_core.checkpoints import CheckpointError, check_finite
from opensora_core.families import for_class

from .checkpointing import (
    Progress,
    TrainingStopped,
    checkpoint_root,
    latest_checkpoint,
    list_checkpoints,
    load_state_or_older,
    resolve_resume,
    save_training_state,
)
from .config import TrainConfig
from .dit import DiTTask
from .ema import EMA
from .mmdit_task import MMDiTLoRATask
from .rng import StepRandomness, mix_seed
from .task import Task, TaskData
from .vae_task import VAETask
from .validate import model_class_name, validate_config

log = logging.getLogger("opensora")

LOSS_LOG = "loss.jsonl"
# Every process holds a shard of the weights: the forward needs all processes, EMA cannot keep whole weights.
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)
# One whole model per process: training states can keep only the trainable (LoRA) weights.
WHOLE_MODEL = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def make_task(cfg: TrainConfig) -> Task:
    """The VAE task, the Open-Sora 2.0 MMDiT LoRA task (its family's objective is "v2_flow"), or the DiT task."""
    if cfg.run.task == "vae":
        return VAETask(cfg)
    if for_class(model_class_name(cfg)).training.objective == "v2_flow":
        return MMDiTLoRATask(cfg)
    return DiTTask(cfg)


@dataclass
class TrainResult:
    output_dir: Path
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss averaged over processes (this run)
    exports: list[Path] = field(default_factory=list)
    already_finished: bool = False  # resumed at or past run.max_steps: nothing was trained or exported


# ---------------------------------------------------------------------------
# train(): the phases
# ---------------------------------------------------------------------------


def train(cfg: TrainConfig) -> TrainResult:
    """Train as ``cfg`` says; returns the losses of this invocation and the exported files."""
    validate_config(cfg)  # config: before any heavy work
    accelerator = make_accelerator(cfg)  # accelerator
    task = make_task(cfg)
    data = task.prepare_data(accelerator)  # data: metadata, buckets, caches
    if accelerator.is_main_process and data.summary:
        log.info("buckets:\n%s", data.summary)
    torch.manual_seed(mix_seed(cfg.run.seed, "init"))  # from-scratch and LoRA init: the same on every process
    model = task.build_model()  # model
    optimizer = build_optimizer(cfg, model)  # optimizer
    scheduler = warmup_scheduler(optimizer, cfg.optimizer.warmup_steps, decay=cfg.optimizer.decay,
                                 total_steps=cfg.run.max_steps, min_ratio=cfg.optimizer.min_lr_ratio)
    loader = make_loader(data, cfg)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader,  # prepare
                                                   device_placement=[not task.places_model, True, True])
    loop = Loop(cfg, accelerator, task, model, optimizer, scheduler, loader, data.sampler)
    loop.register_state()
    loop.resume()  # resume
    if loop.progress.step >= cfg.run.max_steps:
        log.warning("the run in %s had already finished at step %d (run.max_steps = %d): nothing to do; raise "
                    "run.max_steps to continue, or start over with --fresh", cfg.output_dir, loop.progress.step,
                    cfg.run.max_steps)
        accelerator.end_training()
        return TrainResult(cfg.output_dir, loop.progress.step, already_finished=True)
    loop.run()  # loop
    exports = loop.export()  # export
    accelerator.end_training()
    return TrainResult(cfg.output_dir, loop.progress.step, loop.losses, exports)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    forget_previous_precision()
    accelerator = Accelerator(
        cpu=_cpu_processes(),
        mixed_precision=cfg.run.mixed_precision,
        log_with="tensorboard" if cfg.run.tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(cfg.output_dir), logging_dir=str(cfg.output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.run.ddp_find_unused_parameters)],
        step_scheduler_with_optimizer=False,
    )
    if cfg.run.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not native_bf16():
        log.warning("run.mixed_precision = 'bf16' on a CPU without bf16 instructions (AVX512-BF16 / AMX): emulated "
                    "bf16 is slower than fp32 here (1.6x with AVX-512, 8x with AVX2 on the demo's VAE); set it to 'no'")
    if cfg.ema.enabled and accelerator.distributed_type in SHARDED and cfg.run.task == "dit":
        raise ValueError("ema.enabled: EMA keeps whole weights and is not supported with FSDP/DeepSpeed sharding; "
                         "set ema.enabled = false or train with DDP")
    return accelerator


def forget_previous_precision() -> None:
    """accelerate keeps one AcceleratorState per process and refuses an Accelerator of another mixed precision; a
    process that runs several trainings (the demo build's stages: the temporal VAE stage in bf16, the others in
    fp32) drops the previous run's (the process and device state, PartialState, stays)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # accelerate's own reset (what its test utilities use)


def native_bf16() -> bool:
    """Whether bf16 has its own instructions here (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), so that
    ``run.mixed_precision = "bf16"`` is faster than fp32 rather than emulated."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's (private) feature probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _cpu_processes() -> bool:
    """Several processes (torchrun / accelerate launch) on a machine without CUDA: distributed CPU (gloo).

    accelerate only picks its MULTI_CPU mode when told to run on the CPU (``ACCELERATE_USE_CPU``).
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable weights (bitsandbytes AdamW8bit with ``optimizer.eight_bit``)."""
    opt = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable weights (check lora / freeze settings)")
    kwargs = dict(lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
    if opt.eight_bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("optimizer.eight_bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs, fused=fused_adamw_supported(params))


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW kernel (one kernel over all weights instead of a dozen small ops per tensor: on the
    demo's VAE, 2 instead of 12 ms per step on 2 CPU cores) takes floating-point weights on the CPU or CUDA.

    It computes the same update as the per-tensor loop up to float rounding. Weights that accelerate moves to the
    GPU after this keep the fused kernel (it has a CUDA version too).
    """
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, *, decay: str = "constant",
                     total_steps: int = 0, min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps (official ``LinearWarmupLR``), then constant, or a
    cosine / linear decay that reaches ``min_ratio`` x lr at ``total_steps`` (short from-scratch runs)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if decay == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_loader(data: TaskData, cfg: TrainConfig) -> torch.utils.data.DataLoader:
    if len(data.sampler) == 0:
        raise ValueError("no training batch: every sample was dropped (see the bucket table); check data.buckets")
    return torch.utils.data.DataLoader(
        data.dataset, batch_sampler=data.sampler, num_workers=cfg.data.num_workers, collate_fn=data.collate,
        pin_memory=torch.cuda.is_available(),
    )


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


class Loop:
    """State of a run and the step / checkpoint / validation / export actions on it."""

    def __init__(self, cfg, accelerator, task, model, optimizer, scheduler, loader, sampler) -> None:
        self.cfg, self.accelerator, self.task = cfg, accelerator, task
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loader, self.sampler = loader, sampler
        self.progress = Progress()
        self.ema = EMA(self.unwrapped, cfg.ema.decay) if cfg.ema.enabled else None
        self.losses: dict[int, float] = {}
        self._pending: list[dict[str, torch.Tensor]] = []  # loss terms of the micro-steps of this step
        self._last_saved: int | None = None
        self._step_started = 0.0
        self.tracker = None  # TensorBoard, opened when training starts (no empty runs for finished ones)

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def register_state(self) -> None:
        """Registered in this order: custom_checkpoint_0 = progress, _1 = scheduler, _2 = EMA (see export.py)."""
        self.accelerator.register_for_checkpointing(self.progress, self.scheduler)
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)
        if self.cfg.lora.enabled and self.accelerator.distributed_type in WHOLE_MODEL:
            install_trainable_only_hooks(self.accelerator)

    def start_tracking(self) -> None:
        if self.cfg.run.tensorboard:
            self.accelerator.init_trackers("opensora")
            if self.accelerator.is_main_process:
                self.tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)

    def resume(self) -> None:
        path = resolve_resume(self.cfg.checkpoint.resume, self.cfg.output_dir)
        if path is None:
            earlier = list_checkpoints(self.cfg.output_dir)
            if earlier and self.accelerator.is_main_process:
                log.warning("starting fresh although %s holds states up to %s (pass --resume to continue from it)",
                            checkpoint_root(self.cfg.output_dir), earlier[-1].name)
            if self.accelerator.is_main_process:
                (self.cfg.output_dir / LOSS_LOG).unlink(missing_ok=True)
            return
        path = load_state_or_older(self.accelerator, path, self.cfg.output_dir,
                                   fall_back=self.cfg.checkpoint.resume == "latest")
        self._last_saved = self.progress.step  # that state exists already
        if self.accelerator.is_main_process:
            _truncate_jsonl(self.cfg.output_dir / LOSS_LOG, self.progress.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step, self.progress.epoch,
                 self.progress.batch_in_epoch)

    # -- steps ----------------------------------------------------------------

    def run(self) -> None:
        cfg, progress = self.cfg, self.progress
        self.start_tracking()
        if cfg.validation.every and cfg.validation.at_start and progress.step == 0:
            self.validate()  # a baseline sample before any training
        bar = _progress_bar(cfg, self.accelerator, progress.step)
        self.model.train()
        while progress.step < cfg.run.max_steps:
            self.loader.set_epoch(progress.epoch)  # accelerate re-sets the sampler's epoch from this at each pass
            self.sampler.set_epoch(progress.epoch)
            loader = self.loader
            if progress.batch_in_epoch:
                loader = self.accelerator.skip_first_batches(self.loader, progress.batch_in_epoch)
            for batch in loader:
                self.micro_step(batch, bar)
                if progress.step >= cfg.run.max_steps:
                    break
            else:
                progress.epoch += 1
                progress.batch_in_epoch = 0
        bar.close()
        self.after_training()

    def micro_step(self, batch: dict, bar) -> None:
        cfg, progress, accelerator = self.cfg, self.progress, self.accelerator
        accumulate = cfg.run.gradient_accumulation_steps
        sync = (progress.micro_step + 1) % accumulate == 0
        rng = StepRandomness.for_step(cfg.run.seed, progress.micro_step, accelerator.process_index, accelerator.device)
        if not self._pending:
            self._step_started = time.perf_counter()
        with contextlib.nullcontext() if sync else accelerator.no_sync(self.model):
            terms = self.task.compute_loss(self.model, batch, rng)
            accelerator.backward(terms["loss"] / accumulate)
        progress.micro_step += 1
        progress.batch_in_epoch += 1
        self._pending.append({k: v.detach() for k, v in terms.items()})
        if sync:
            reduced = self.reduced_terms()
            self.check_finite_loss(reduced)  # before the optimizer step: a NaN never reaches the weights
            self.optimizer_step()
            self.after_step(bar, reduced, time.perf_counter() - self._step_started)

    def reduced_terms(self) -> dict[str, float]:
        """Loss terms of this step: mean over its micro-steps, then over the processes (the same on all)."""
        terms = {k: torch.stack([p[k] for p in self._pending]).mean() for k in self._pending[0]}
        self._pending = []
        return {k: self.accelerator.reduce(v, reduction="mean").item() for k, v in terms.items()}

    def check_finite_loss(self, terms: dict[str, float]) -> None:
        """Stop the run at the first non-finite loss (every process sees the same reduced value)."""
        if math.isfinite(terms["loss"]):
            return
        step, cfg = self.progress.step + 1, self.cfg
        last = latest_checkpoint(cfg.output_dir)
        resume = (f"the last good state is {last} (resume from it with --set checkpoint.resume={last} after "
                  "the fix)") if last else "no training state was saved yet"
        raise TrainingStopped(
            f"step {step}: the loss is {terms['loss']} ({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); "
            f"training stopped before the weights were updated. Likely causes: a learning rate too high "
            f"(optimizer.lr = {cfg.optimizer.lr:g}; lower it or raise optimizer.warmup_steps), an overflow in "
            f"run.mixed_precision = {cfg.run.mixed_precision!r} (try bf16 or no), or a NaN in the data or caches. "
            f"{resume}"
        )

    def optimizer_step(self) -> None:
        clip = self.cfg.optimizer.grad_clip
        if clip > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), clip)
            if norm is not None and not math.isfinite(float(norm)):
                raise TrainingStopped(
                    f"step {self.progress.step + 1}: the gradient norm is {float(norm)} with a finite loss; training "
                    f"stopped before the weights were updated. Likely an overflow in run.mixed_precision = "
                    f"{self.cfg.run.mixed_precision!r} (try bf16 or no) or a learning rate too high"
                )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        self.progress.step += 1

    def after_step(self, bar, terms: dict[str, float], seconds: float) -> None:
        step, cfg = self.progress.step, self.cfg
        self.losses[step] = terms["loss"]
        lr = self.scheduler.get_last_lr()[0]
        if self.accelerator.is_main_process:
            _append_jsonl(cfg.output_dir / LOSS_LOG, {"step": step, **terms, "lr": lr, "seconds": seconds})
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", s_it=f"{seconds:.2f}", lr=f"{lr:.2e}")
            if self.tracker is not None and (step % cfg.run.log_every == 0 or step == 1):
                self.accelerator.log({f"train/{k}": v for k, v in terms.items()} | {"train/lr": lr}, step=step)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
            self.save()
        if cfg.validation.every and step % cfg.validation.every == 0:
            self.validate()

    # -- actions --------------------------------------------------------------

    def save(self) -> Path:
        weights = dict(self.unwrapped.named_parameters())  # FSDP: this process's shards
        if self.ema is not None:
            weights |= {f"ema.{k}": v for k, v in self.ema.shadow.items()}
        problem = ""
        try:
            check_finite(weights, f"step {self.progress.step}: refusing to save a training state")
        except CheckpointError as err:
            problem = str(err)
        flagged = torch.tensor(float(bool(problem)), device=self.accelerator.device)
        if self.accelerator.reduce(flagged, reduction="sum").item() > 0:  # every process stops, none saves
            raise TrainingStopped(f"{problem or 'another process holds NaN/inf weights'}; {self._resume_hint()}")
        self._last_saved = self.progress.step
        return save_training_state(self.accelerator, self.cfg.output_dir, self.progress.step,
                                   keep_last=self.cfg.checkpoint.keep_last, config_json=self.cfg.to_json())

    def _resume_hint(self) -> str:
        last = latest_checkpoint(self.cfg.output_dir)
        return f"the last good state is {last}" if last else "no training state was saved yet"

    def validate(self) -> list[Path]:
        """Sample on the main process with the plain module (DDP), or on every process through the
        sharded wrapper (FSDP / DeepSpeed, whose forward needs all shards)."""
        sharded = self.accelerator.distributed_type in SHARDED
        saved = []
        if sharded or self.accelerator.is_main_process:
            use_ema = self.ema is not None and self.cfg.validation.use_ema
            weights = self.ema.applied(self.unwrapped) if use_ema else contextlib.nullcontext()
            model = self.model if sharded else self.unwrapped
            with weights, self.accelerator.autocast():  # samples in the training precision
                saved = self.task.validate(model, self.progress.step, self.accelerator, self.tracker)
        self.accelerator.wait_for_everyone()
        return saved

    def after_training(self) -> None:
        if self._last_saved != self.progress.step:
            self.save()
        if self.cfg.validation.every and self.progress.step % self.cfg.validation.every:
            self.validate()

    def export(self) -> list[Path]:
        """Gather the full weights on every process (FSDP/DeepSpeed shards), write them from the main one."""
        self.accelerator.wait_for_everyone()
        use_ema = self.ema is not None and self.cfg.export.use_ema
        exports: list[Path] = []
        with self.ema.applied(self.unwrapped) if use_ema else contextlib.nullcontext():
            state = self.accelerator.get_state_dict(self.model)
            if self.accelerator.is_main_process:
                for old in existing_exports(self.cfg):
                    log.warning("replacing %s with the export of step %d", old, self.progress.step)
                exports = self.task.export(self.unwrapped, self.progress.step, state)
        self.accelerator.wait_for_everyone()
        return exports


def existing_exports(cfg: TrainConfig) -> list[Path]:
    """Files of this run already in ``<output_dir>/export`` (``<run>.safetensors``, ``<run>-lora...``)."""
    folder = cfg.output_dir / "export"
    name = cfg.output_dir.resolve().name
    return sorted(p for p in folder.glob(f"{name}*.safetensors")) if folder.is_dir() else []


def install_trainable_only_hooks(accelerator) -> None:
    """Save/load only the trainable weights (LoRA adapters) in training states, not the frozen base."""
    from safetensors.torch import load_file

    def trainable(model) -> set[str]:
        return {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}

    def on_save(models, weights, output_dir):
        for i, model in enumerate(models):
            keep = trainable(model)
            weights[i] = {k: v for k, v in weights[i].items() if k.removeprefix("module.") in keep}

    def on_load(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop(0))
            saved = load_file(str(Path(input_dir) / "model.safetensors"))
            state = {k.removeprefix("module."): v for k, v in saved.items()}
            if set(state) != trainable(model):
                raise ValueError(f"{input_dir}: the saved adapters do not match the model's LoRA layers")
            model.load_state_dict(state, strict=False)

    accelerator.register_save_state_pre_hook(on_save)
    accelerator.register_load_state_pre_hook(on_load)


def _progress_bar(cfg: TrainConfig, accelerator, initial: int):
    from tqdm.auto import tqdm

    disable = not (cfg.run.progress_bar and accelerator.is_main_process)
    return tqdm(total=cfg.run.max_steps, initial=initial, desc="training", disable=disable, dynamic_ncols=True)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop logged steps after ``last_step`` (they are repeated after a resume) and lines that are not whole
    records (a run killed while writing leaves half a line), with a warning; the file is rewritten only if
    something was dropped."""
    if not path.is_file():
        return
    logged = path.read_text(errors="replace").splitlines()
    kept = []
    for number, line in enumerate(logged, start=1):
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: line %d is not a whole record (cut off when a run stopped?); dropped: %.60r",
                        path, number, line)
            continue
        if step <= last_step:
            kept.append(line)
    if len(kept) < len(logged):
        path.write_text("".join(line + "\n" for line in kept))


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                 for k, v in record.items()}) + "\n")


__all__ = ["TrainResult", "build_optimizer", "existing_exports", "make_accelerator", "make_task", "train",
           "warmup_scheduler"]
