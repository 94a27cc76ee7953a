"""Live previews: the latent -> RGB map of each loaded VAE, fitted once per file, and the map in use per
latent space.

The VAE Loader fits the map (``opensora_core.vae.preview.fit_latent_rgb``: a least-squares fit of decoded
colours on a few encoded synthetic clips) the first time it loads a file, keeps it in memory and in
``<ComfyUI user dir>/opensora/latent_rgb.json`` (keyed by path, size, modification time and dtype), and
makes it the map of that latent space. The Open-Sora Sampler previews with the map of its VAE; the native
MODEL's latent format reads the map of its latent space here when ComfyUI's KSampler starts (so previews
appear once an Open-Sora VAE of that space was loaded: the native workflows load it before sampling,
for the empty latent).
"""

from __future__ import annotations

import json
import logging
import os
import time

from ..opensora_core.atomic import atomic_path
from ..opensora_core.geometry import LatentGeometry
from ..opensora_core.vae.preview import LatentRGB, fit_latent_rgb
from . import comfy_bridge as bridge

log = logging.getLogger("opensora")

CACHE_FILE = "latent_rgb.json"
_FITTED: dict[str, LatentRGB] = {}  # file key -> map (this process)
_ACTIVE: dict[LatentGeometry, LatentRGB] = {}  # latent space -> the map of the VAE loaded last for it


def file_key(path: str, dtype: str) -> str:
    """Identifies one VAE file's content cheaply: absolute path, size, modification time, and the dtype."""
    info = os.stat(path)
    return f"{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}|{dtype}"


def rgb_map(vae) -> LatentRGB | None:
    """The map of a loaded VAE (``types.VAEHandle``): from memory, the cache file, or fitted now; None when
    ComfyUI's previews are off (``--preview-method none``)."""
    if not bridge.previews_enabled():
        return None
    key = file_key(vae.source, str(next(vae.module.parameters()).dtype))
    if key not in _FITTED:
        _FITTED[key] = _read_cache().get(key) or _fit(vae, key)
    return _FITTED[key]


def activate(geometry: LatentGeometry, rgb: LatentRGB | None) -> None:
    if rgb is not None:
        _ACTIVE[geometry] = rgb


def active(geometry: LatentGeometry) -> LatentRGB | None:
    return _ACTIVE.get(geometry)


def _fit(vae, key: str) -> LatentRGB:
    log.info("fitting the live-preview colours of %s (once per file; the released VAE v1.2 takes minutes on a CPU)",
             os.path.basename(vae.source))
    start = time.perf_counter()
    with bridge.ComfyPlacement([vae.managed]).use(vae.module):
        rgb = fit_latent_rgb(vae.module)
    log.info("fitted the latent preview colours of %s in %.1f s", os.path.basename(vae.source),
             time.perf_counter() - start)
    _write_cache(key, rgb)
    return rgb


def _cache_path() -> str | None:
    folder = bridge.user_folder("opensora")
    return None if folder is None else os.path.join(folder, CACHE_FILE)


def _read_cache() -> dict[str, LatentRGB]:
    path = _cache_path()
    if path is None or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return {k: LatentRGB.from_dict(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the latent preview cache %s (%s); the colours are fitted again", path, err)
        return {}


def _write_cache(key: str, rgb: LatentRGB) -> None:
    path = _cache_path()
    if path is None:
        return
    entries = {k: v.as_dict() for k, v in _read_cache().items()} | {key: rgb.as_dict()}
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    except OSError as err:
        log.warning("could not write the latent preview cache %s (%s); the colours will be fitted again", path, err)
