"""The one module that talks to ComfyUI: the V3 node schema, model folders, devices and memory, progress,
interruption, outputs.

The V3 schema (``comfy_api.v0_0_2``: ``io``, ``ComfyExtension``) is the only ComfyUI import at module
level: node classes subclass ``io.ComfyNode`` when they are defined. The version is pinned here, so a
move to a newer schema version is this one line. Every other ComfyUI import (``folder_paths``,
``comfy.*``, ``latent_preview``) happens inside a function, so the tests can put a stand-in in its place.
When ComfyUI's internal API moves, this is the file to change.

Memory: each loaded module (diffusion model, VAE, T5) is wrapped in a
``comfy.model_patcher.ModelPatcher`` with the devices ComfyUI picks for its role. Before
a stage runs, :class:`ComfyPlacement` asks ``comfy.model_management.load_models_gpu`` to
load it (fully: our modules are plain ``torch.nn`` and cannot run partially loaded), which
also unloads other models (ComfyUI's and ours) when memory is short. Modules stay loaded
afterwards until ComfyUI needs the memory, as ComfyUI's own models do.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..opensora_core.pipeline import device_of

try:  # the V3 node schema, pinned to a versioned module (not "latest")
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError as err:  # pragma: no cover - depends on the ComfyUI that imports us
    raise ImportError(
        "the Open-Sora nodes are declared with ComfyUI's V3 node schema (comfy_api.v0_0_2), which this ComfyUI "
        f"does not have ({err}); update ComfyUI to 0.3.64 or newer"
    ) from err

log = logging.getLogger("opensora")

# ---------------------------------------------------------------------------
# Model folders and files
# ---------------------------------------------------------------------------


def model_files(folder: str) -> list[str]:
    """Weight files ComfyUI lists in one of its model folders (``diffusion_models``, ``vae``, ...)."""
    import folder_paths

    return folder_paths.get_filename_list(folder)


def model_path(folder: str, name: str) -> str:
    """Full path of a listed file; raises with the folder name when it is missing."""
    import folder_paths

    return folder_paths.get_full_path_or_raise(folder, name)


def folder_roots(folder: str) -> list[str]:
    """Every directory ComfyUI searches for ``folder`` (models/<folder>, extra_model_paths.yaml, ...)."""
    import folder_paths

    return [p for p in folder_paths.get_folder_paths(folder) if os.path.isdir(p)]


def bundled_t5_tokenizer() -> str | None:
    """ComfyUI's own T5-XXL tokenizer folder (``comfy/text_encoders/t5_tokenizer``), if present."""
    try:
        import comfy  # a namespace package in ComfyUI (no __init__.py, so no __file__)
    except ImportError:
        return None
    for root in getattr(comfy, "__path__", []):
        folder = os.path.join(root, "text_encoders", "t5_tokenizer")
        if os.path.isdir(folder):
            return folder
    return None


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    path: str  # where to write
    filename: str  # name shown in the UI
    subfolder: str  # below the output folder


def next_output_file(prefix: str, width: int, height: int, suffix: str) -> OutputFile:
    """Next free ``<prefix>_00001_.<suffix>`` in ComfyUI's output folder (its save nodes' counter)."""
    import folder_paths

    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_output_directory(), width, height
    )
    filename = f"{name}_{counter:05}_.{suffix}"
    return OutputFile(os.path.join(folder, filename), filename, subfolder)


def metadata_enabled() -> bool:
    """False when ComfyUI runs with ``--disable-metadata``."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return True
    return not getattr(args, "disable_metadata", False)


# ---------------------------------------------------------------------------
# Devices and memory
# ---------------------------------------------------------------------------

ROLES = ("diffusion", "text", "vae")


@dataclass(frozen=True)
class Devices:
    load: torch.device  # where the module computes
    offload: torch.device  # where it waits while other models need the memory


def devices(role: str) -> Devices:
    """ComfyUI's devices for a diffusion model, a text encoder or a VAE."""
    import comfy.model_management as mm

    if role == "diffusion":
        return Devices(mm.get_torch_device(), mm.unet_offload_device())
    if role == "text":
        return Devices(mm.text_encoder_device(), mm.text_encoder_offload_device())
    if role == "vae":
        return Devices(mm.vae_device(), mm.vae_offload_device())
    raise ValueError(f"unknown device role {role!r}; use one of {ROLES}")


def intermediate_device() -> torch.device:
    """Where ComfyUI keeps tensors between nodes (the CPU unless --gpu-only)."""
    import comfy.model_management as mm

    return mm.intermediate_device()


class _Held(nn.Module):
    """Holds one of our modules for ComfyUI's ModelPatcher, which writes its bookkeeping
    attributes (``device``, ``model_loaded_weight_memory``, ...) onto the module it manages."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner


# ComfyUI logs "Requested to load <class name>": one readable name per role.
_HOLDERS = {
    "diffusion": type("OpenSoraDiffusionModel", (_Held,), {}),
    "text": type("OpenSoraT5", (_Held,), {}),
    "vae": type("OpenSoraVAE", (_Held,), {}),
}


@dataclass(eq=False)
class Managed:
    """A module registered with ComfyUI's memory manager."""

    module: nn.Module
    patcher: object  # comfy.model_patcher.ModelPatcher
    devices: Devices


def manage(module: nn.Module, role: str) -> Managed:
    """Wrap ``module`` (already on the offload device) so ComfyUI can load and free it."""
    from comfy.model_patcher import ModelPatcher

    where = devices(role)
    patcher = ModelPatcher(_HOLDERS[role](module), load_device=where.load, offload_device=where.offload)
    return Managed(module, patcher, where)


class ComfyPlacement:
    """The core's ``Placement``: load a module through ComfyUI's memory manager while a stage runs.

    ``working_memory`` is the bytes the stage needs besides the weights (activations; the pipeline asks the
    model): ComfyUI unloads other models (e.g. T5 before sampling) until that much is free as well.
    """

    def __init__(self, managed: Iterable[Managed | None]):
        self._by_module = {id(m.module): m for m in managed if m is not None}

    @contextlib.contextmanager
    def use(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        import comfy.model_management as mm

        entry = self._by_module.get(id(module))
        if entry is None:  # not ours to place (e.g. an empty stand-in module)
            yield device_of(module)
            return
        mm.load_models_gpu([entry.patcher], memory_required=working_memory, force_full_load=True)
        yield entry.devices.load


# ---------------------------------------------------------------------------
# Attention kernels
# ---------------------------------------------------------------------------

ATTENTION_DEFAULT = "sdpa"


def attention_options() -> list[str]:
    """SDPA kernel choices usable here: PyTorch picks (default), the exact math kernel, and the
    memory-efficient kernel when CUDA is available (it accepts the caption masks; flash does not)."""
    options = [ATTENTION_DEFAULT, "sdpa_math"]
    if torch.cuda.is_available():
        options.append("sdpa_efficient")
    return options


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Restrict ``scaled_dot_product_attention`` to one kernel while sampling."""
    if name == ATTENTION_DEFAULT:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"sdpa_math": SDPBackend.MATH, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
    if name not in kernels:
        raise ValueError(f"attention {name!r} is not available here; use one of {', '.join(attention_options())}")
    with sdpa_kernel([kernels[name]]):
        yield


# ---------------------------------------------------------------------------
# Progress, previews and interruption
# ---------------------------------------------------------------------------


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def step_reporter(total: int, preview_factors: list[list[float]] | None = None) -> Callable[[dict], None]:
    """A sampler callback: ComfyUI progress bar per step, Cancel honoured every step, optional preview.

    The callback receives the core's step dict (``step``/``steps`` over all loop rounds, ``denoised``).
    """
    from comfy.utils import ProgressBar

    bar = ProgressBar(total)
    previewer = _previewer(preview_factors)

    def report(info: dict) -> None:
        check_interrupted()
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", info["denoised"])
        bar.update_absolute(info["step"], info["steps"], preview)

    return report


def latent_rgb_factors(latent_format: str | None) -> list[list[float]] | None:
    """ComfyUI's latent -> RGB factors of a latent format (``comfy.latent_formats``), or None without one."""
    if latent_format is None:
        return None
    try:
        from comfy import latent_formats
    except ImportError:
        return None
    return getattr(latent_formats, latent_format)().latent_rgb_factors


def _previewer(factors):
    if factors is None:
        return None
    try:
        import latent_preview
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError as err:
        log.warning("latent previews are off: ComfyUI's latent_preview is not importable (%s)", err)
        return None
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    return latent_preview.Latent2RGBPreviewer(factors)
