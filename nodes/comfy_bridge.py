"""The one module that talks to ComfyUI: the V3 node schema, model folders, devices and memory, progress,
interruption, outputs (and, for the native MODEL path, the probed internal API in :func:`native_api`).

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
import contextvars
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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


def user_folder(name: str) -> str | None:
    """``<ComfyUI user directory>/<name>`` (created), or None when ComfyUI has no user directory."""
    import folder_paths

    root = getattr(folder_paths, "get_user_directory", lambda: None)()
    if not root:
        return None
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    return folder


def bundled_t5_tokenizer() -> str | None:
    """ComfyUI's own T5-XXL tokenizer folder (``comfy/text_encoders/t5_tokenizer``), if present."""
    return _bundled("text_encoders", "t5_tokenizer")


def bundled_clip_tokenizer() -> str | None:
    """ComfyUI's own CLIP-L tokenizer folder (``comfy/sd1_tokenizer``), if present."""
    return _bundled("sd1_tokenizer")


def _bundled(*parts: str) -> str | None:
    try:
        import comfy  # a namespace package in ComfyUI (no __init__.py, so no __file__)
    except ImportError:
        return None
    for root in getattr(comfy, "__path__", []):
        folder = os.path.join(root, *parts)
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

    @contextlib.contextmanager
    def use_all(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        """Load every managed module at once (T5 and CLIP-L for one encode); ``module`` holds them all."""
        import comfy.model_management as mm

        entries = list(self._by_module.values())
        if not entries:
            yield device_of(module)
            return
        mm.load_models_gpu([e.patcher for e in entries], memory_required=working_memory, force_full_load=True)
        yield entries[0].devices.load


# ---------------------------------------------------------------------------
# Queue-time checks that need another node's widget
# ---------------------------------------------------------------------------

# The prompt (API format) of the request being queued. ComfyUI's POST /prompt calls the on-prompt handlers and
# then validates that prompt in the same request task, so a context variable holds it for exactly that request.
_QUEUED_PROMPT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("opensora_queued_prompt", default=None)


def _remember_prompt(json_data):
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    _QUEUED_PROMPT.set(prompt if isinstance(prompt, dict) else None)
    return json_data


def watch_queued_prompts() -> None:
    """Let ``validate_inputs`` see the whole queued prompt (e.g. the model file a Sampler's ``model`` link
    comes from). Registered once, through ComfyUI's ``PromptServer.add_on_prompt_handler``."""
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover - every ComfyUI has it; the checks then run when the node does
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and _remember_prompt not in server.on_prompt_handlers:
        server.add_on_prompt_handler(_remember_prompt)


def queued_source(node_id: str | None, input_name: str, through: dict[str, str]) -> dict | None:
    """The queued prompt's node feeding ``input_name`` of ``node_id``, followed upstream through the node
    types in ``through`` (type -> the input they pass on); None when unknown (no prompt seen, not linked)."""
    prompt = _QUEUED_PROMPT.get()
    if prompt is None or node_id is None:
        return None
    entry, name = prompt.get(str(node_id)), input_name
    for _ in range(len(prompt)):  # a cycle cannot loop forever
        link = entry.get("inputs", {}).get(name) if isinstance(entry, dict) else None
        if not (isinstance(link, list) and len(link) == 2):
            return None
        entry = prompt.get(str(link[0]))
        if not isinstance(entry, dict) or entry.get("class_type") not in through:
            return entry if isinstance(entry, dict) else None
        name = through[entry["class_type"]]
    return None


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


def step_reporter(total: int, preview=None) -> Callable[[dict], None]:
    """A sampler callback: ComfyUI progress bar per step, Cancel honoured every step, optional preview.

    The callback receives the core's step dict (``step``/``steps`` over all loop rounds, ``denoised``);
    ``preview`` is a ``LatentRGB`` map (``opensora_core.vae.preview``) or None.
    """
    from comfy.utils import ProgressBar

    bar = ProgressBar(total)
    previewer = _previewer(preview)

    def report(info: dict) -> None:
        check_interrupted()
        image = None
        if previewer is not None:
            image = previewer.decode_latent_to_preview_image("JPEG", info["denoised"])
        bar.update_absolute(info["step"], info["steps"], image)

    return report


def previews_enabled() -> bool:
    """False when ComfyUI runs with ``--preview-method none`` (then no preview map is fitted either)."""
    try:
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError:
        return False
    return args.preview_method != LatentPreviewMethod.NoPreviews


def _previewer(preview):
    if preview is None:
        return None
    try:
        import latent_preview
        from comfy.cli_args import LatentPreviewMethod, args
    except ImportError as err:
        log.warning("latent previews are off: ComfyUI's latent_preview is not importable (%s)", err)
        return None
    if args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    return latent_preview.Latent2RGBPreviewer([list(row) for row in preview.weight], list(preview.bias))


# ---------------------------------------------------------------------------
# The native MODEL path: ComfyUI's internal API, probed
# ---------------------------------------------------------------------------


class NativeUnavailable(RuntimeError):
    """ComfyUI's internal API lacks something the native MODEL path needs (the message says what)."""


@dataclass(frozen=True)
class NativeAPI:
    """The ComfyUI internals the native MODEL path builds on (``comfy.*`` is not a public API: each is probed)."""

    BaseModel: type  # comfy.model_base.BaseModel
    ModelType: Any  # comfy.model_base.ModelType
    model_sampling: Callable  # comfy.model_base.model_sampling(model_config, model_type)
    BASE: type  # comfy.supported_models_base.BASE (a model config)
    LatentFormat: type  # comfy.latent_formats.LatentFormat
    CONDRegular: type  # comfy.conds.CONDRegular
    ModelPatcher: type  # comfy.model_patcher.ModelPatcher
    pick_operations: Callable  # comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=...)
    unet_dtype: Callable  # comfy.model_management.unet_dtype(model_params=, supported_dtypes=)
    unet_manual_cast: Callable  # comfy.model_management.unet_manual_cast(dtype, device, supported_dtypes)
    CFGGuider: type  # comfy.samplers.CFGGuider (a GUIDER; Open-Sora 2.0's three-pass guider subclasses it)
    calc_cond_batch: Callable  # comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)


# (what, object path, attributes it must have, source fragments its code must contain)
_PROBES = (
    ("BaseModel", "comfy.model_base.BaseModel", ("_apply_model", "extra_conds", "scale_latent_inpaint",
                                                 "memory_required", "process_latent_in"),
     ("disable_unet_model_creation",)),
    ("ModelType", "comfy.model_base.ModelType", ("FLOW", "EPS"), ()),
    ("model_sampling", "comfy.model_base.model_sampling", (), ("ModelSamplingDiscreteFlow", "CONST")),
    ("BASE", "comfy.supported_models_base.BASE", ("set_inference_dtype", "sampling_settings"), ()),
    ("LatentFormat", "comfy.latent_formats.LatentFormat", ("process_in", "process_out"), ()),
    ("CONDRegular", "comfy.conds.CONDRegular", ("process_cond", "can_concat", "concat"), ()),
    ("ModelPatcher", "comfy.model_patcher.ModelPatcher", ("clone", "add_object_patch", "set_model_denoise_mask_function",
                                                          "set_model_sampler_cfg_function", "add_patches"), ()),
    ("pick_operations", "comfy.ops.pick_operations", (), ()),
    ("unet_dtype", "comfy.model_management.unet_dtype", (), ()),
    ("unet_manual_cast", "comfy.model_management.unet_manual_cast", (), ()),
    ("CFGGuider", "comfy.samplers.CFGGuider", ("predict_noise", "inner_set_conds", "sample", "set_cfg"),
     ("self.conds", "inner_model")),
    ("calc_cond_batch", "comfy.samplers.calc_cond_batch", (), ()),
    # behaviour the path relies on: the inpainting wrapper calls our mask rule and our scale_latent_inpaint
    (None, "comfy.samplers.KSamplerX0Inpaint.__call__", (), ("denoise_mask_function", "scale_latent_inpaint")),
    (None, "comfy.samplers.encode_model_conds", (), ("model_conds",)),
)


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module in {path}")


def _probe(path: str, attributes: tuple[str, ...], fragments: tuple[str, ...]):
    import inspect

    try:
        obj = _resolve(path)
    except (ImportError, AttributeError) as err:
        raise NativeUnavailable(f"{path} is missing ({err})") from err
    missing = [name for name in attributes if not hasattr(obj, name)]
    if missing:
        raise NativeUnavailable(f"{path} has no {', '.join(missing)}")
    if fragments:
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError) as err:
            raise NativeUnavailable(f"cannot read the code of {path} to check it ({err})") from err
        absent = [f for f in fragments if f not in source]
        if absent:
            raise NativeUnavailable(f"{path} no longer uses {', '.join(absent)}")
    return obj


def native_api() -> NativeAPI:
    """ComfyUI's internals for the native MODEL, each probed; raises :class:`NativeUnavailable` naming the
    first that is missing or changed (the native nodes are then not registered; the rest of the pack works)."""
    found = {}
    for name, path, attributes, fragments in _PROBES:
        obj = _probe(path, attributes, fragments)
        if name is not None:
            found[name] = obj
    return NativeAPI(**found)
