"""Training a video VAE: the Open-Sora VAE v1.2 pipeline (spatial SD-VAE + temporal VAE) or the
per-frame SD-VAE wrapper, from scratch or from a checkpoint, with the same buckets, loop, states
and export as the DiT.

Loss (weights in ``[vae_training]``): ``pixel_weight`` x reconstruction of the video (L1 or MSE) +
``latent_weight`` x reconstruction of the spatial latent by the temporal stage (v1.2 only; the
official ``use_z_rec_loss``) + ``kl_weight`` x KL of each trained posterior to N(0, 1), averaged
over latent elements. The encoders' posteriors are sampled with the step's generator. Clips are
read from the videos (no latent cache: the VAE is what trains), with buckets and frame windows
re-drawn each epoch as the official sampler does; with a frozen spatial stage, each clip's spatial
moments are kept after its first read (:class:`SpatialMomentCache`) and the clip is not read again.

Export: a ``.safetensors`` file :func:`opensora_core.loading.load_vae` reads: the pipeline's official
keys (``spatial_vae.module.*``, ``temporal_vae.*``, ``scale``, ``shift``), or the SD-VAE in the
diffusers layout. For the pipeline, ``calibrate_batches`` batches set ``shift``/``scale`` to the
per-channel mean/std of the raw latents, so a DiT trained on it sees unit-scale latents.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from opensora_core import media
from opensora_core.checkpoints import save_checkpoint
from opensora_core.families.common import SD_VAE_KINDS
from opensora_core.loading import load_vae
from opensora_core.vae import AutoencoderKLConfig, TemporalVAEConfig, VideoAutoencoderKL, VideoAutoencoderPipeline
from opensora_core.vae.pipeline import SPATIAL_SCALING_FACTOR
from opensora_core.vae.posterior import LOGVAR_MAX, LOGVAR_MIN, gaussian_noise, sample_posterior

from .buckets import BucketTable, bucket_summary
from .config import TrainConfig, VAETrainingConfig
from .data import plan_clip, plan_epoch, read_clip
from .datasets import read_datasets
from .rng import StepRandomness
from .sampler import BucketBatchSampler
from .task import TaskData

log = logging.getLogger("opensora")


# ---------------------------------------------------------------------------
# Data: clips read every step
# ---------------------------------------------------------------------------


class PixelClipDataset(torch.utils.data.Dataset):
    """Item ``(epoch, row)``: that entry's clip for that epoch as {"video": (3, T, H, W) in [-1, 1], "clip": its
    identity (the row, frames and size that decide the pixels: :class:`SpatialMomentCache`'s key)}.

    ``known``: clips whose pixels the loss does not need (their frozen spatial moments are cached); their items
    are {"clip": ...} alone, and :func:`collate_clips` batches both kinds."""

    def __init__(self, entries, table: BucketTable, frame_interval: int, seed: int,
                 known: Callable[[str], bool] | None = None) -> None:
        self.entries, self.table, self.frame_interval, self.seed = entries, table, frame_interval, seed
        self.known = known

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, sample: tuple[int, int]) -> dict:
        clip = self._plan(sample)
        key = f"{sample[1]}:{clip.frames}:{clip.height}x{clip.width}"
        if self.known is not None and self.known(key):
            return {"clip": key}
        return {"video": read_clip(clip), "clip": key}

    def video(self, sample: tuple[int, int]) -> torch.Tensor:
        """The clip's frames, (3, T, H, W), whatever ``known`` says."""
        return read_clip(self._plan(sample))

    def _plan(self, sample: tuple[int, int]):
        epoch, row = sample
        return plan_clip(self.entries[row], self.table, self.frame_interval, self.seed, epoch)

    def groups(self, epoch: int) -> dict:
        found: dict = {}
        for clip in plan_epoch(self.entries, self.table, self.frame_interval, self.seed, epoch):
            if clip is not None:
                found.setdefault(clip.bucket, []).append((epoch, clip.entry.row))
        return found


def collate_clips(items: list[dict]) -> dict:
    """Batch :class:`PixelClipDataset` items: {"clip": [B identities], "video": (n, 3, T, H, W) of the n items that
    were read (None if none), "read": [B flags]}."""
    read = ["video" in item for item in items]
    videos = [item["video"] for item in items if "video" in item]
    return {"clip": [item["clip"] for item in items], "video": torch.stack(videos) if videos else None, "read": read}


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def reconstruction(kind: str, output: torch.Tensor, target: torch.Tensor, mse_weight: float = 1.0) -> torch.Tensor:
    """``l1``, ``mse`` or ``l1+mse`` (L1 + ``mse_weight`` * MSE) between ``output`` and ``target``.

    L1 keeps edges and corners sharp, but its gradient does not grow with the error, so a rare case
    reconstructed badly (one colour on one background) costs no more than a slightly soft edge; the
    squared term of ``l1+mse`` makes large errors count. Per pixel its gradient is 2 * error against
    L1's 1, so at the errors of a trained VAE (0.02-0.05 in -1..1) it weighs 10-25x less than L1 unless
    ``mse_weight`` lifts it.
    """
    output, target = output.float(), target.float()
    if kind == "l1":
        return F.l1_loss(output, target)
    if kind == "mse":
        return F.mse_loss(output, target)
    return F.l1_loss(output, target) + mse_weight * F.mse_loss(output, target)


def kl_to_standard_normal(moments: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, var) || N(0, 1)) for moments (N, 2C, ...) = (mean, logvar)."""
    mean, logvar = moments.float().chunk(2, dim=1)
    logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def sd_vae_losses(vae: VideoAutoencoderKL, video: torch.Tensor, generator, cfg: VAETrainingConfig) -> dict:
    """Per-frame SD-VAE: encode every frame, sample, decode."""
    frames = video.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
    moments = vae.module.encode_moments(frames)
    z = sample_posterior(moments, sample=True, noise=gaussian_noise(generator), stage="spatial")
    rec = vae.module.decode(z)  # (B*T, 3, H, W)
    pixel = reconstruction(cfg.recon_loss, rec, frames, cfg.mse_weight)
    kl = kl_to_standard_normal(moments)
    return {"loss": cfg.pixel_weight * pixel + cfg.kl_weight * kl, "pixel": pixel, "kl": kl}


def pipeline_losses(vae: VideoAutoencoderPipeline, video: torch.Tensor | None, generator, cfg: VAETrainingConfig,
                    teacher: nn.Module | None = None, spatial_moments: torch.Tensor | None = None) -> dict:
    """VAE v1.2: spatial encode per frame, temporal encode/decode per chunk, spatial decode.

    ``teacher``: a frozen copy of the starting temporal VAE (``encoder_anchor_weight``). ``spatial_moments``:
    the frozen spatial stage's moments of ``video`` (B, T, 2C, h, w), when already known (``freeze_spatial``);
    ``video`` (B, 3, T, H, W) may then be None when no pixel loss needs it.
    """
    noise = gaussian_noise(generator)
    B, T = spatial_moments.shape[:2] if spatial_moments is not None else (video.shape[0], video.shape[2])
    spatial = vae.spatial_vae.module
    with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.freeze_spatial):
        if spatial_moments is not None:
            s_moments = spatial_moments.flatten(0, 1)  # (B*T, 2C, h, w)
        else:
            s_moments = spatial.encode_moments(video.transpose(1, 2).flatten(0, 1))  # (B*T, 2C, h, w)
        x_z = sample_posterior(s_moments, sample=True, noise=noise, stage="spatial") * SPATIAL_SCALING_FACTOR
    x_z = x_z.unflatten(0, (B, T)).transpose(1, 2)  # (B, 4, T, h, w)
    z_parts, kls, chunk_moments = [], [], []
    for chunk in vae.geometry.encode_chunks(T):
        moments = vae.temporal_vae.encode_moments(x_z[:, :, chunk.start : chunk.end], chunk.pad)
        z_parts.append(sample_posterior(moments, sample=True, noise=noise, stage="temporal"))
        kls.append(kl_to_standard_normal(moments))
        chunk_moments.append(moments)
    z = torch.cat(z_parts, dim=2)  # (B, 4, t, h, w) raw (unnormalised) latent
    x_z_rec = torch.cat([vae.temporal_vae.decode(z[:, :, c.latent_start : c.latent_end], c.drop)
                         for c in vae.geometry.decode_chunks(T)], dim=2)  # (B, 4, T, h, w)
    latent = reconstruction(cfg.recon_loss, x_z_rec, x_z.detach(), cfg.mse_weight)
    if cfg.pixel_weight > 0:
        rec = spatial.decode(x_z_rec.transpose(1, 2).flatten(0, 1) / SPATIAL_SCALING_FACTOR)  # (B*T, 3, H, W)
        pixel = reconstruction(cfg.recon_loss, rec, video.transpose(1, 2).flatten(0, 1), cfg.mse_weight)
    else:  # temporal stage on its own (official stage 1 style): no spatial decode at all
        pixel = latent.new_zeros(())
    kl = torch.stack(kls).mean() + (0 if cfg.freeze_spatial else kl_to_standard_normal(s_moments))
    loss = cfg.pixel_weight * pixel + cfg.latent_weight * latent + cfg.kl_weight * kl
    terms = {"pixel": pixel, "latent": latent, "kl": kl}
    targets = chunk_moments  # what the first-frame term aims at: this model's clip latents ...
    if teacher is not None:  # ... or the starting model's, which the encoder is also held to
        with torch.no_grad():
            targets = [teacher.encode_moments(x_z[:, :, c.start : c.end], c.pad) for c in vae.geometry.encode_chunks(T)]
        student, teacher_mean = posterior_means(chunk_moments), posterior_means(targets)  # (B, 4, t, h, w)
        anchor = reconstruction("mse", student, teacher_mean) / teacher_mean.pow(2).mean().clamp_min(1e-6)
        loss = loss + cfg.encoder_anchor_weight * anchor
        terms["anchor"] = anchor
    if cfg.first_frame_weight > 0:  # (a one-frame clip is its own first frame: the term is 0)
        first = first_frame_consistency(vae, x_z, targets[0]) if T > 1 else latent.new_zeros(())
        loss = loss + cfg.first_frame_weight * first
        terms["first_frame"] = first
    return {"loss": loss, **terms}


def posterior_means(moments: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk (mean, logvar) moments -> the means of the whole clip, (B, C, t, h, w)."""
    return torch.cat([m.chunk(2, dim=1)[0] for m in moments], dim=2)


def first_frame_consistency(vae: VideoAutoencoderPipeline, x_z: torch.Tensor, clip_moments: torch.Tensor) -> torch.Tensor:
    """Distance between the posterior mean of frame 0 encoded alone and the clip's first latent frame.

    Image-to-video encodes the reference image as a one-frame video, whose temporal context (three
    padding frames, GroupNorm statistics over them) differs from frame 0's inside a clip; this term
    teaches the encoder to give the latent the model saw in training. The clip's latent is the target,
    and the error is relative to its mean square: scaling every latent up or down neither helps nor
    hurts, so the term cannot drive the latent scale (an absolute error made training diverge).
    """
    single = vae.geometry.encode_chunks(1)[0]
    alone = vae.temporal_vae.encode_moments(x_z[:, :, :1], single.pad).chunk(2, dim=1)[0]  # (B, 4, 1, h, w)
    in_clip = clip_moments.chunk(2, dim=1)[0][:, :, :1].detach()
    return reconstruction("mse", alone, in_clip) / in_clip.pow(2).mean().clamp_min(1e-6)


class SpatialMomentCache:
    """The frozen spatial stage's moments of each clip, computed once and kept in CPU memory.

    With ``freeze_spatial`` the SD-VAE encoder is a fixed function of the frames (no dropout, GroupNorm only),
    so a clip (the same frames of the same file at the same size) has the same moments every epoch. Keeping
    them keeps the objective (the posterior is still sampled every step with the step's noise) and skips the
    spatial encode, which was ~45 % of a step of the demo's temporal stage, and (the task's dataset asks
    ``clip in cache``) reading and decoding the clip, another ~13 %. Clips are added while the cache holds fewer
    than ``max_bytes``; the others are read and encoded every time.
    """

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.moments: dict[str, torch.Tensor] = {}  # clip -> (T, 2C, h, w) on the CPU

    def __contains__(self, clip: str) -> bool:
        return clip in self.moments

    @torch.no_grad()
    def __call__(self, spatial: nn.Module, video: torch.Tensor | None, clips: list[str],
                 read: list[bool] | None = None) -> torch.Tensor:
        """Moments of a batch of ``clips`` as (B, T, 2C, h, w), the cached clips read, the others encoded.

        ``video``: (n, 3, T, H, W), the frames of the clips flagged in ``read`` (every clip when ``read`` is None);
        a clip not yet cached must be among them."""
        rows = {i: n for n, i in enumerate(i for i in range(len(clips)) if read is None or read[i])}
        missing = [i for i, clip in enumerate(clips) if clip not in self.moments]
        if any(i not in rows for i in missing):
            raise RuntimeError(f"spatial moment cache: clips {[clips[i] for i in missing if i not in rows]} are "
                               "neither cached nor read (the dataset skipped a clip the cache does not hold)")
        fresh = {}
        if missing:
            picked = video[[rows[i] for i in missing]]  # (m, 3, T, H, W)
            encoded = spatial.encode_moments(picked.transpose(1, 2).flatten(0, 1))  # (m*T, 2C, h, w)
            fresh = dict(zip(missing, encoded.unflatten(0, (len(missing), picked.shape[2]))))
        for i, moments in fresh.items():
            size = moments.numel() * moments.element_size()
            if self.used + size <= self.max_bytes:
                self.moments[clips[i]] = moments.cpu()
                self.used += size
        device = next(spatial.parameters()).device
        return torch.stack([fresh[i] if i in fresh else self.moments[clip].to(device) for i, clip in enumerate(clips)])


class VAEWithLoss(nn.Module):
    """The trained module: ``forward(video, generator, clips, read)`` returns the loss terms (so DDP sees a forward).

    ``spatial_cache``: the :class:`SpatialMomentCache` to use (the task shares it with its dataset, which then
    skips reading the clips it holds); by default one of ``cfg.spatial_cache_gb`` when the spatial stage is frozen.
    """

    def __init__(self, vae: nn.Module, cfg: VAETrainingConfig, spatial_cache: SpatialMomentCache | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.cfg = cfg
        self._teacher = None  # a frozen copy of the starting temporal VAE; not a submodule (never saved or trained)
        if cfg.encoder_anchor_weight > 0 and isinstance(vae, VideoAutoencoderPipeline):
            teacher = copy.deepcopy(vae.temporal_vae).eval().requires_grad_(False)
            object.__setattr__(self, "_teacher", teacher)
        self._spatial_cache = spatial_cache
        if spatial_cache is None and caches_spatial_moments(cfg) and isinstance(vae, VideoAutoencoderPipeline):
            self._spatial_cache = SpatialMomentCache(cfg.spatial_cache_gb * 2**30)

    def forward(self, video: torch.Tensor | None, generator: torch.Generator, clips: list[str] | None = None,
                read: list[bool] | None = None) -> dict[str, torch.Tensor]:
        """``video`` (n, 3, T, H, W); ``clips``: the identity of each clip of the batch (the dataset's ``clip``),
        for the spatial-moment cache; ``read``: which of them ``video`` holds (None: all)."""
        if isinstance(self.vae, VideoAutoencoderPipeline):
            if self._teacher is not None:
                self._teacher.to(next(self.vae.parameters()).device)
            spatial_moments = None
            if self._spatial_cache is not None and clips is not None:
                spatial_moments = self._spatial_cache(self.vae.spatial_vae.module, video, clips, read)
            return pipeline_losses(self.vae, video, generator, self.cfg, self._teacher, spatial_moments)
        return sd_vae_losses(self.vae, video, generator, self.cfg)


def caches_spatial_moments(cfg: VAETrainingConfig) -> bool:
    """Whether a VAE v1.2 run keeps the frozen spatial stage's moments of each clip (``spatial_cache_gb``)."""
    return cfg.class_name == "VideoAutoencoderPipeline" and cfg.freeze_spatial and cfg.spatial_cache_gb > 0


# ---------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------


class VAETask:
    places_model = False  # accelerate moves the model to the device

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.dataset: PixelClipDataset | None = None
        self.sampler: BucketBatchSampler | None = None
        vt = cfg.vae_training
        self.spatial_cache = SpatialMomentCache(vt.spatial_cache_gb * 2**30) if caches_spatial_moments(vt) else None

    def prepare_data(self, accelerator) -> TaskData:
        cfg = self.cfg
        entries = read_datasets(cfg.data)
        table = BucketTable(cfg.data.buckets, cfg.data.resolutions)
        # a clip whose spatial moments are cached is not read again, unless a pixel loss needs its frames (or
        # loader workers hold their own copy of the dataset)
        skip = self.spatial_cache is not None and cfg.vae_training.pixel_weight == 0 and cfg.data.num_workers == 0
        known = self.spatial_cache.__contains__ if skip else None
        self.dataset = PixelClipDataset(entries, table, cfg.data.frame_interval, cfg.run.seed, known)
        first = plan_epoch(entries, table, cfg.data.frame_interval, cfg.run.seed, 0)
        summary = bucket_summary(table, [c.bucket if c else None for c in first], [str(e.path) for e in entries])
        self.sampler = BucketBatchSampler(self.dataset.groups, table.batch_size, seed=cfg.run.seed,
                                          shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
        return TaskData(self.dataset, self.sampler, summary, collate=collate_clips)

    def build_model(self) -> nn.Module:
        vt = self.cfg.vae_training
        if vt.checkpoint:
            vae = load_vae(vt.checkpoint, micro_batch_size=None, norm_num_groups=self.cfg.vae.norm_num_groups)
            if type(vae).__name__ != vt.class_name:
                raise ValueError(f"vae_training.checkpoint holds a {type(vae).__name__}, not a {vt.class_name}")
        else:
            vae = build_vae(vt)
        if vt.spatial_checkpoint:
            load_spatial_stage(vae, vt.spatial_checkpoint)
        vae.train().requires_grad_(True)
        if vt.freeze_spatial and isinstance(vae, VideoAutoencoderPipeline):
            vae.spatial_vae.requires_grad_(False)
        if vt.train_only:
            freeze_all_but(vae, vt.train_only)
        return VAEWithLoss(vae, vt, self.spatial_cache)

    def compute_loss(self, model: nn.Module, batch: dict, rng: StepRandomness) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(rng.seed)  # posterior draws (CPU: same on every device)
        return model(batch["video"], generator, batch["clip"], batch["read"])  # video (n, 3, T, H, W)

    def validate(self, model: nn.Module, step: int, accelerator, tracker) -> list[Path]:
        """Side-by-side MP4 (input | reconstruction) of the first clip of epoch 0."""
        model = model.vae
        sample = next(iter(self.dataset.groups(0).values()))[0]
        video = self.dataset.video(sample)[None].to(accelerator.device)  # (1, 3, T, H, W)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            rec = model.decode(model.encode(video, sample=False), video.shape[2])
        model.train(was_training)
        if not accelerator.is_main_process:
            return []
        pair = torch.cat([video, rec.clamp(-1, 1)], dim=-1)[0].cpu()  # (3, T, H, 2W)
        frames = media.from_model_range(pair)
        path = media.save_output(frames, self.cfg.output_dir / "validation" / f"step-{step:08d}" / "vae.mp4", 8)
        if tracker is not None:
            tracker.add_images("validation/vae", frames[:1], step, dataformats="NHWC")
        return [path]

    def export(self, model: nn.Module, step: int, state: dict[str, torch.Tensor]) -> list[Path]:
        vt = self.cfg.vae_training
        vae = model.vae
        state = {k.removeprefix("vae."): v for k, v in state.items()}
        if isinstance(vae, VideoAutoencoderPipeline) and vt.calibrate_batches:
            calibrate_latent_scale(vae, self.dataset, self.sampler, vt.calibrate_batches)
            state.update(shift=vae.shift.detach().clone(), scale=vae.scale.detach().clone())
        if isinstance(vae, VideoAutoencoderKL):  # SD-VAE: plain diffusers keys, as other tools save it
            state = {k.removeprefix("module."): v for k, v in state.items()}
        name = self.cfg.output_dir.resolve().name
        path = self.cfg.output_dir / "export" / f"{name}-vae.safetensors"
        tensors = {k: v.detach().float() for k, v in state.items()}
        saved = save_checkpoint(tensors, path, class_name=type(vae).__name__, config={"norm_num_groups": norm_groups(vae)},
                                metadata={"opensora.train_step": str(step)})
        log.info("exported %s", saved)
        return [saved]


def build_vae(vt: VAETrainingConfig) -> nn.Module:
    """A fresh VAE from the ``spatial`` (diffusers AutoencoderKL kwargs) and ``temporal`` (VAE_Temporal) configs."""
    spatial = AutoencoderKLConfig.from_diffusers(vt.spatial)
    if vt.class_name == "VideoAutoencoderKL":
        vae = VideoAutoencoderKL(spatial, micro_batch_size=None)
        moment_layers = [_spatial_moments_layer(vae.module)]
    else:
        temporal = TemporalVAEConfig.from_official(vt.temporal or {"type": "VAE_Temporal_SD"})
        channels = temporal.embed_dim
        vae = VideoAutoencoderPipeline(spatial, temporal, micro_batch_size=None, scale=[1.0] * channels,
                                       shift=[0.0] * channels)
        moment_layers = [_spatial_moments_layer(vae.spatial_vae.module), vae.temporal_vae.quant_conv.conv]
    if vt.init_logvar:
        with torch.no_grad():
            for layer in moment_layers:  # output channels: (mean, logvar)
                layer.bias[layer.out_channels // 2 :] = vt.init_logvar
    return vae


def freeze_all_but(vae: nn.Module, prefixes: list[str]) -> None:
    """Train only the parameters whose names start with one of ``prefixes`` (``vae_training.train_only``)."""
    names = [name for name, _ in vae.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(f"vae_training.train_only: no parameter starts with {prefix!r} "
                             f"(names look like {names[0]!r} ... {names[-1]!r})")
    for name, param in vae.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in prefixes))


def _spatial_moments_layer(autoencoder) -> nn.Module:
    return autoencoder.quant_conv if autoencoder.quant_conv is not None else autoencoder.encoder.conv_out


def norm_groups(vae: nn.Module) -> int:
    """GroupNorm groups of a VAE (saved with the export: ``load_vae`` cannot read them from the weights)."""
    spatial = vae.spatial_vae.module if isinstance(vae, VideoAutoencoderPipeline) else vae.module
    groups = spatial.config.norm_num_groups
    if isinstance(vae, VideoAutoencoderPipeline) and vae.temporal_vae.config.num_groups != groups:
        raise ValueError(f"vae_training: spatial norm_num_groups ({groups}) and temporal num_groups "
                         f"({vae.temporal_vae.config.num_groups}) must be equal (a VAE file stores one group count)")
    return groups


@torch.no_grad()
def load_spatial_stage(vae: nn.Module, path: str) -> None:
    """Copy an SD-VAE file (e.g. the export of a ``VideoAutoencoderKL`` run) into the pipeline's spatial stage.

    The file decides the architecture, so ``vae_training.spatial`` must describe the same network.
    """
    if not isinstance(vae, VideoAutoencoderPipeline):
        raise ValueError("vae_training.spatial_checkpoint: only the VAE v1.2 pipeline has a spatial stage")
    sd_vae = load_vae(path, expect=SD_VAE_KINDS, micro_batch_size=None)
    if sd_vae.module.config != vae.spatial_vae.module.config:
        raise ValueError(f"vae_training.spatial_checkpoint {path}: holds {sd_vae.module.config}, but "
                         f"vae_training.spatial builds {vae.spatial_vae.module.config}; make them equal")
    vae.spatial_vae.module.load_state_dict(sd_vae.module.state_dict())
    log.info("spatial stage initialised from %s", path)


@torch.no_grad()
def calibrate_latent_scale(vae: VideoAutoencoderPipeline, dataset, sampler, batches: int) -> None:
    """Set ``shift``/``scale`` to the per-channel mean/std of raw latents (posterior samples, as the DiT's
    latent cache holds them) over the first batches of epoch 0."""
    sampler.set_epoch(0)
    device = vae.scale.device
    vae.shift.zero_()
    vae.scale.fill_(1.0)
    latents = []
    generator = torch.Generator().manual_seed(0)
    for ids in sampler.batches()[:batches]:
        video = torch.stack([dataset.video(i) for i in ids]).to(device)
        z = vae.encode(video, sample=True, generator=generator)  # sampled, as the DiT's latents are
        latents.append(z.float().transpose(0, 1).flatten(1))  # (C, N)
    values = torch.cat(latents, dim=1)
    vae.shift.copy_(values.mean(dim=1).reshape(vae.shift.shape))
    vae.scale.copy_(values.std(dim=1).clamp(min=1e-6).reshape(vae.scale.shape))
    log.info("latent shift %s, scale %s", vae.shift.flatten().tolist(), vae.scale.flatten().tolist())


__all__ = [
    "PixelClipDataset", "SpatialMomentCache", "VAETask", "VAEWithLoss", "build_vae", "caches_spatial_moments",
    "calibrate_latent_scale", "collate_clips", "first_frame_consistency",
    "freeze_all_but",
    "load_spatial_stage",
    "norm_groups", "pipeline_losses", "sd_vae_losses",
]
