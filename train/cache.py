"""Caches of VAE latents and T5 outputs, written before training so the loop holds only the DiT.

Layout under the cache folder (one safetensors file per entry, sharded by the first two hex digits)::

    latents/ab/ab12...ef.safetensors    {"latent": (C, t, h, w)}   one clip at its bucket size
    captions/cd/cd34...01.safetensors   {"y": (n, C)}              the n real tokens of one caption

A file name is the SHA-256 of everything that decides its content: for a latent, the source file
(path, size, modification time), the frame indices, the bucket size, the posterior mode and draw
seed, and the VAE file's fingerprint; for a caption, the text, the caption length and the T5 files'
fingerprint. Changing any of them gives new files; old ones are simply unused. Files are written
atomically, so an interrupted cache run resumes where it stopped.

Open-Sora 2.0 keeps every T5 position and the pooled CLIP vector per caption (:func:`cache_captions_v2`)
and, for its image-to-video conditions, the first and last frame of a clip encoded alone.

Latents are a posterior *sample* (``posterior = "sample"``, the official encode; one draw per clip
and epoch variant, seeded) or the posterior mean (``"mean"``). Captions keep only the real tokens
(the padding rows never reach the model) and are padded back to the model's length when read.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from opensora_core.checkpoints import save_checkpoint
from opensora_core.text.caption import Caption

from .data import Clip, read_clip
from .rng import mix_seed

log = logging.getLogger("opensora")


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def file_fingerprint(path: str | os.PathLike) -> str:
    """Identity of a weight file or folder: resolved path, sizes and modification times of its files."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = [f"{p.relative_to(path) if p != path else p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return _digest([str(path), *parts])[:16]


def _digest(parts: Iterable) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()


def latent_key(clip: Clip, vae_id: str, posterior: str, seed: int, *, ends: bool = False) -> str:
    source = clip.entry.path
    stat = source.stat() if source.exists() else None
    parts = [
        "latent", str(source.resolve()), stat and stat.st_size, stat and stat.st_mtime_ns, clip.frames,
        clip.num_frames, clip.height, clip.width, vae_id, posterior, posterior_seed(clip, seed),
    ]
    return _digest(parts + ["ends"] if ends else parts)


def posterior_seed(clip: Clip, seed: int) -> int:
    return mix_seed(seed, "posterior", clip.epoch, clip.entry.row)


def caption_key(text: str, t5_id: str, max_length: int) -> str:
    return _digest(["caption", text, t5_id, max_length])


class CacheDir:
    """Paths of cached entries under ``root`` (``latents/`` and ``captions/``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def latent(self, key: str) -> Path:
        return self.root / "latents" / key[:2] / f"{key}.safetensors"

    def caption(self, key: str) -> Path:
        return self.root / "captions" / key[:2] / f"{key}.safetensors"


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def shard(items: Sequence, index: int, count: int) -> list:
    """The items process ``index`` of ``count`` handles (every count-th)."""
    return list(items[index::count])


@torch.no_grad()
def cache_latents(clips: Sequence[Clip], paths: Sequence[Path], vae, *, posterior: str, seed: int,
                  dtype: torch.dtype, progress: Callable | None = None, ends: bool = False) -> list[tuple[Clip, str]]:
    """Encode every clip whose file is missing; returns (clip, error) for clips that failed to read.

    ``ends``: also the first and the last frame, each encoded alone (``head``, ``tail``: (C, 1, h, w)), the
    reference latents of Open-Sora 2.0's image-to-video training conditions."""
    failed = []
    for clip, path in zip(clips, paths, strict=True):
        if not path.exists():
            try:
                video = read_clip(clip)[None]  # (1, 3, T, H, W)
            except (ValueError, OSError) as err:  # MediaError is a ValueError
                failed.append((clip, str(err)))
                log.warning("cannot read %s for the latent cache: %s", clip.entry.path, err)
                continue
            generator = torch.Generator().manual_seed(posterior_seed(clip, seed))
            sample = posterior == "sample"
            tensors = {"latent": vae.encode(video, sample=sample, generator=generator)[0]}  # (C, t, h, w)
            if ends:  # (C, 1, h, w) each, drawn after the clip's own posterior
                tensors["head"] = vae.encode(video[:, :, :1], sample=sample, generator=generator)[0]
                tensors["tail"] = vae.encode(video[:, :, -1:], sample=sample, generator=generator)[0]
            save_checkpoint({k: v.to(dtype) for k, v in tensors.items()}, path)
        if progress is not None:
            progress()
    return failed


@torch.no_grad()
def cache_captions(texts: Sequence[str], paths: Sequence[Path], text_encoder, *, batch_size: int,
                   dtype: torch.dtype, progress: Callable | None = None) -> None:
    """Encode every caption whose file is missing, ``batch_size`` at a time; stores the real tokens only."""
    todo = [(t, p) for t, p in zip(texts, paths, strict=True) if not p.exists()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        caption = text_encoder.encode([t for t, _ in chunk])
        for row, (_, path) in enumerate(chunk):
            n = int(caption.mask[row].sum())
            save_checkpoint({"y": caption.y[row, 0, :n].to(dtype)}, path)  # (n, C)
        if progress is not None:
            progress(len(chunk))


@torch.no_grad()
def cache_captions_v2(texts: Sequence[str], paths: Sequence[Path], text_encoder, *, batch_size: int,
                      dtype: torch.dtype, progress: Callable | None = None) -> None:
    """Open-Sora 2.0 captions (``text.v2.TextEncoderV2``): every T5 position (the model sees the padding too)
    and the pooled CLIP vector, {"txt": (L, C), "y_vec": (C',)} per caption."""
    todo = [(t, p) for t, p in zip(texts, paths, strict=True) if not p.exists()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        caption = text_encoder.encode([t for t, _ in chunk])  # txt (B, L, C), y_vec (B, C')
        for row, (_, path) in enumerate(chunk):
            save_checkpoint({"txt": caption.txt[row].to(dtype), "y_vec": caption.y_vec[row].to(dtype)}, path)
        if progress is not None:
            progress(len(chunk))


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))[name]


class HeldTensors:
    """Cached tensors kept in CPU memory once read, up to ``max_bytes`` (the others are read from disk each time).

    A DiT step reads a latent and a caption file per clip; on a CPU run of small clips (the demo: 16 latents of
    5 KB and 16 captions per step) opening them took ~10 ms of a ~0.27 s step. Tensors are kept in the order
    they are first read until the budget is spent; callers must not modify what they are given.
    """

    def __init__(self, max_bytes: float) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.held: dict[tuple[Path, str], torch.Tensor] = {}

    def read(self, path: Path, name: str) -> torch.Tensor:
        tensor = self.held.get((path, name))
        if tensor is None:
            tensor = read_tensor(path, name)
            size = tensor.numel() * tensor.element_size()
            if self.used + size <= self.max_bytes:
                self.held[(path, name)] = tensor
                self.used += size
        return tensor


def read_caption(path: Path, max_length: int, read: Callable[[Path, str], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y (1, L, C) float32 zero-padded, mask (L,) int64) from a cached caption (``read``: how a cached tensor
    is read, :func:`read_tensor` by default)."""
    tokens = (read or read_tensor)(path, "y").float()  # (n, C)
    n, channels = tokens.shape
    y = torch.zeros(1, max_length, channels)
    y[0, :n] = tokens
    mask = torch.zeros(max_length, dtype=torch.int64)
    mask[:n] = 1
    return y, mask


class CachedTextEncoder:
    """A text encoder answering from the caption cache (the pipeline's ``TextEncoder`` protocol).

    Validation prompts are encoded into the cache before training, so T5 is never loaded while the
    DiT trains; asking for a text that was not cached raises.
    """

    def __init__(self, cache: CacheDir, t5_id: str, max_length: int) -> None:
        self.cache, self.t5_id, self.max_length = cache, t5_id, max_length

    def encode(self, texts: list[str]) -> Caption:
        ys, masks = [], []
        for text in texts:
            path = self.cache.caption(caption_key(text, self.t5_id, self.max_length))
            if not path.exists():
                raise KeyError(f"caption {text!r} is not in the cache {self.cache.root}; it is encoded before training")
            y, mask = read_caption(path, self.max_length)
            ys.append(y)
            masks.append(mask)
        return Caption(torch.stack(ys), torch.stack(masks))  # (B, 1, L, C), (B, L)


def free_memory() -> None:
    """Return what a caching pass freed (the encoders leave before training)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def progress_bar(accelerator, total: int, desc: str):
    """A tqdm bar of a caching pass, shown by the main process only."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not accelerator.is_main_process or total == 0, dynamic_ncols=True)


__all__ = ["CacheDir", "CachedTextEncoder", "cache_captions", "cache_captions_v2", "cache_latents", "caption_key", "file_fingerprint",
           "free_memory", "latent_key", "posterior_seed", "progress_bar", "read_caption", "read_tensor", "shard"]
