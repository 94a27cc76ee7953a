"""Loader nodes: diffusion model, VAE and T5 from ComfyUI's model folders."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os

from ..opensora_core.loading import load_dit, load_vae
from ..opensora_core.lora import merge_lora
from ..opensora_core.models.block_swap import enable_block_swap
from ..opensora_core.text.clip import TOKENIZER_FILES, load_clip_encoder
from ..opensora_core.text.t5 import TOKENIZER_CONFIG, load_t5_encoder
from . import comfy_bridge as bridge
from . import preview
from . import widgets as w
from .comfy_bridge import io
from .types import ClipHandle, ClipSocket, ModelHandle, ModelSocket, T5Handle, T5Socket, VAEHandle, VAESocket

log = logging.getLogger("opensora")


class OpenSoraModelLoader(io.ComfyNode):
    """Loads an Open-Sora diffusion transformer (STDiT v1.0, STDiT2 v1.1, STDiT3 v1.2) or an Open-Sora-Plan
    v1.3 one (OpenSoraT2V_v1_3 text to video, OpenSoraInpaint_v1_3 image to video: the released folder's
    diffusion_pytorch_model.safetensors, read with the config.json beside it); the kind and size are read
    from the file. The stock 'Load Diffusion Model' cannot load these files."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraModelLoader", display_name="Open-Sora Model Loader", category=f"{w.CATEGORY}/loaders",
            description=cls.__doc__,
            inputs=[
                w.file_choice("model_name", "diffusion_models",
                              "File in models/diffusion_models, e.g. OpenSora-STDiT-v3.safetensors "
                              "(hpcai-tech/OpenSora-STDiT-v3 model.safetensors, renamed), or Open-Sora-Plan's "
                              "any93x640x640/diffusion_pytorch_model.safetensors (the folder as released)."),
                w.choice("weight_dtype", ["bf16", "fp16", "fp32"], "bf16",
                         "Precision of the weights and the computation (official: bf16)."),
                w.choice("attention", bridge.attention_options(), bridge.ATTENTION_DEFAULT,
                         "Scaled-dot-product attention kernel: 'sdpa' lets PyTorch choose; "
                         "'sdpa_math' is the exact reference kernel (slow)."),
            ],
            outputs=[ModelSocket.Output(display_name="model", tooltip="The Open-Sora diffusion model, for the Text "
                                        "Encode (caption length) and the Sampler.")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype, attention) -> io.NodeOutput:
        path = bridge.model_path("diffusion_models", model_name)
        where = bridge.devices("diffusion")
        loaded = load_dit(path, dtype=w.torch_dtype(weight_dtype), device=where.offload)
        handle = ModelHandle(loaded.model, loaded.family, loaded.preset, path, attention,
                             bridge.manage(loaded.model, "diffusion"))
        log.info("loaded %s from %s (%s)", handle.describe(), model_name, weight_dtype)
        return io.NodeOutput(handle)


ALL_BLOCKS = -1  # blocks_on_device: no block swap
WEIGHT_STORAGE = ["as in the file", "fp8 e4m3fn"]


class OpenSoraModelLoaderMemory(io.ComfyNode):
    """Loads an Open-Sora diffusion transformer with memory settings, for models that have them (the
    Open-Sora 2.0 MMDiT): fp8 weights (e4m3fn with a per-layer scale, computing in weight_dtype; about half
    the memory of bf16) and block swap (only blocks_on_device of the 57 blocks stay on the GPU, the others
    are copied in per step from CPU memory). A model with block swap stays on the GPU between runs."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraModelLoaderMemory", display_name="Open-Sora Model Loader (memory settings)",
            category=f"{w.CATEGORY}/loaders", description=cls.__doc__,
            inputs=[
                w.file_choice("model_name", "diffusion_models", "File in models/diffusion_models, e.g. "
                              "Open_Sora_v2.safetensors (hpcai-tech/Open-Sora-v2)."),
                w.choice("weight_dtype", ["bf16", "fp16", "fp32"], "bf16", "Precision of the computation."),
                w.choice("attention", bridge.attention_options(), bridge.ATTENTION_DEFAULT,
                         "Scaled-dot-product attention kernel ('sdpa_math': the exact reference kernel)."),
                w.choice("weight_storage", WEIGHT_STORAGE, WEIGHT_STORAGE[1],
                         "fp8 e4m3fn: weights stored in 8 bits with a per-layer scale (quantised while loading; "
                         "an fp8 file always loads so)."),
                w.integer("blocks_on_device", ALL_BLOCKS, ALL_BLOCKS, 1024, "Block swap: blocks kept on the GPU "
                          "(-1 = all, no swap; 2.0 at 768px on 24 GB: 20). Fewer = less memory, slower steps."),
            ],
            outputs=[ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype, attention, weight_storage, blocks_on_device) -> io.NodeOutput:
        path = bridge.model_path("diffusion_models", model_name)
        where = bridge.devices("diffusion")
        fp8 = weight_storage != WEIGHT_STORAGE[0]
        loaded = load_dit(path, dtype=w.torch_dtype(weight_dtype), device=where.offload, fp8=fp8)
        managed = bridge.manage(loaded.model, "diffusion")
        if blocks_on_device != ALL_BLOCKS:
            if not loaded.family.model.block_swap:
                raise ValueError(f"blocks_on_device: block swap is not available for {loaded.family.title}; set -1")
            enable_block_swap(loaded.model, where.load, blocks_on_device, where.offload)
            managed = None  # placed by the swap itself; ComfyUI's manager would move every block to the GPU
        handle = ModelHandle(loaded.model, loaded.family, loaded.preset, path, attention, managed)
        log.info("loaded %s from %s (%s, %s, blocks on device: %s)", handle.describe(), model_name, weight_dtype,
                 weight_storage, "all" if blocks_on_device == ALL_BLOCKS else blocks_on_device)
        return io.NodeOutput(handle)


class OpenSoraLoraLoader(io.ComfyNode):
    """Applies a LoRA trained by opensora-train (or any diffusion_model.<key>.lora_A/lora_B file of the
    same model) to a copy of the model; the loaded model itself is left unchanged."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraLoraLoader", display_name="Open-Sora LoRA Loader", category=f"{w.CATEGORY}/loaders",
            description=cls.__doc__,
            inputs=[
                ModelSocket.Input("model"),
                w.file_choice("lora_name", "loras", "File in models/loras (opensora-train export *-lora.safetensors)."),
                w.number("strength", 1.0, -4.0, 4.0, "Scale of the LoRA update (1 = as trained).", step=0.05),
            ],
            outputs=[ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        path = bridge.model_path("loras", lora_name)
        module = copy.deepcopy(model.module)  # merging works in place: never touch the cached model
        merged = merge_lora(module, path, strength)
        log.info("merged LoRA %s (%d layers, strength %g) into %s", lora_name, len(merged), strength, model.describe())
        return io.NodeOutput(dataclasses.replace(model, module=module, source=f"{model.source} + {lora_name}",
                                                 managed=bridge.manage(module, "diffusion")))


class OpenSoraVAELoader(io.ComfyNode):
    """Loads a video VAE: the Open-Sora VAE v1.2 (for v1.2 models), an SD-VAE in the diffusers or
    LDM/ComfyUI key layout (for v1.0/v1.1 models), or an Open-Sora-Plan VAE (the v1.3 WF-VAE, the
    CausalVideoVAE v1.0-v1.2: the released vae/ folder's file); the kind is read from the file."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraVAELoader", display_name="Open-Sora VAE Loader", category=f"{w.CATEGORY}/loaders",
            description=cls.__doc__,
            inputs=[
                w.file_choice("vae_name", "vae", "File in models/vae, e.g. OpenSora-VAE-v1.2.safetensors "
                              "(hpcai-tech/OpenSora-VAE-v1.2 model.safetensors, renamed), an SD-VAE, or "
                              "Open-Sora-Plan's vae/diffusion_pytorch_model.safetensors (folder as released)."),
                w.choice("dtype", ["bf16", "fp32"], "bf16", "Precision of the VAE (official v1.2: bf16)."),
            ],
            outputs=[VAESocket.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae_name, dtype) -> io.NodeOutput:
        path = bridge.model_path("vae", vae_name)
        vae = load_vae(path, dtype=w.torch_dtype(dtype), device=bridge.devices("vae").offload)
        log.info("loaded %s from %s (%s)", type(vae).__name__, vae_name, dtype)
        handle = VAEHandle(vae, path, bridge.manage(vae, "vae"))
        preview.activate(vae.geometry, preview.rgb_map(handle))  # live previews of this latent space
        return io.NodeOutput(handle)


# ---------------------------------------------------------------------------
# T5
# ---------------------------------------------------------------------------

# Tokenizer folders looked for beside a single-file T5 (before ComfyUI's bundled one).
TOKENIZER_BESIDE = ("{stem}_tokenizer", "tokenizer", "t5_tokenizer")


def t5_choices() -> list[str]:
    """Single T5 files in text_encoders, plus Hugging Face folders (config.json inside) as 'name/'."""
    choices = set()
    for name in bridge.model_files("text_encoders"):
        folder = os.path.dirname(name)
        full = bridge.model_path("text_encoders", name)
        if folder and os.path.isfile(os.path.join(os.path.dirname(full), "config.json")):
            choices.add(folder.replace(os.sep, "/") + "/")
        else:
            choices.add(name)
    return sorted(choices)


def t5_location(name: str) -> tuple[str, str | None]:
    """(weights path, tokenizer folder or None to let the loader look beside a folder)."""
    if name.endswith("/"):
        for root in bridge.folder_roots("text_encoders"):
            folder = os.path.join(root, name.rstrip("/"))
            if os.path.isdir(folder):
                return folder, None
        raise FileNotFoundError(f"t5_name: the folder {name!r} is not in models/text_encoders any more")
    path = bridge.model_path("text_encoders", name)
    stem = os.path.splitext(os.path.basename(path))[0]
    beside = [os.path.join(os.path.dirname(path), f.format(stem=stem)) for f in TOKENIZER_BESIDE]
    for folder in [*beside, bridge.bundled_t5_tokenizer()]:
        if folder and os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG)):
            return path, folder
    raise FileNotFoundError(
        f"t5_name: no T5 tokenizer for {name}; put the tokenizer files (tokenizer_config.json + tokenizer.json or "
        f"spiece.model) in {beside[0]} (ComfyUI's comfy/text_encoders/t5_tokenizer is used when present)"
    )


class OpenSoraT5Loader(io.ComfyNode):
    """Loads the T5-XXL text encoder: a single file as Flux/SD3 users have it (t5xxl_fp16.safetensors,
    fp8 variants too; tokenizer from ComfyUI or a folder beside it) or a Hugging Face folder
    (DeepFloyd/t5-v1_1-xxl; google/mt5-xxl for Open-Sora-Plan, an mT5 folder loads as MT5EncoderModel).
    ComfyUI's own CLIPLoader (type sd3 or pixart) also works with Text Encode for Open-Sora."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraT5Loader", display_name="Open-Sora T5 Loader", category=f"{w.CATEGORY}/loaders",
            description=cls.__doc__,
            inputs=[
                io.Combo.Input("t5_name", options=t5_choices(), tooltip="models/text_encoders: t5xxl_fp16.safetensors "
                               "or a Hugging Face folder (shown as 'name/')."),
                w.choice("dtype", ["bf16", "fp32"], "bf16",
                         "Precision of T5 (official: fp32; bf16 halves the memory; fp16 overflows in T5 v1.1)."),
            ],
            outputs=[T5Socket.Output(display_name="t5")],
        )

    @classmethod
    def execute(cls, t5_name, dtype) -> io.NodeOutput:
        path, tokenizer = t5_location(t5_name)
        encoder = load_t5_encoder(path, tokenizer, dtype=w.torch_dtype(dtype), device=bridge.devices("text").offload)
        log.info("loaded T5 (%d channels) from %s (%s)", encoder.output_dim, t5_name, dtype)
        return io.NodeOutput(T5Handle(encoder, path, bridge.manage(encoder.model, "text")))


# ---------------------------------------------------------------------------
# CLIP-L (Open-Sora 2.0)
# ---------------------------------------------------------------------------

CLIP_TOKENIZER_BESIDE = ("{stem}_tokenizer", "clip_tokenizer")


def clip_location(name: str) -> tuple[str, str | None]:
    """(weights path, tokenizer folder): a folder beside the file, else ComfyUI's comfy/sd1_tokenizer."""
    path = bridge.model_path("text_encoders", name)
    stem = os.path.splitext(os.path.basename(path))[0]
    beside = [os.path.join(os.path.dirname(path), f.format(stem=stem)) for f in CLIP_TOKENIZER_BESIDE]
    for folder in [*beside, bridge.bundled_clip_tokenizer()]:
        if folder and all(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
            return path, folder
    raise FileNotFoundError(
        f"clip_name: no CLIP tokenizer for {name}; put {' and '.join(TOKENIZER_FILES)} in {beside[0]} "
        "(ComfyUI's comfy/sd1_tokenizer is used when present)"
    )


class OpenSoraCLIPLoader(io.ComfyNode):
    """Loads CLIP-L (clip_l.safetensors, as Flux users have it in models/text_encoders) for Open-Sora 2.0,
    which adds CLIP's pooled vector to the T5 states. Connect it to Text Encode's clip_l input."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraCLIPLoader", display_name="Open-Sora CLIP Loader", category=f"{w.CATEGORY}/loaders",
            description=cls.__doc__,
            inputs=[
                w.file_choice("clip_name", "text_encoders", "models/text_encoders: clip_l.safetensors "
                              "(openai/clip-vit-large-patch14 text model)."),
                w.choice("dtype", ["bf16", "fp32"], "bf16", "Precision of CLIP (official: bf16)."),
            ],
            outputs=[ClipSocket.Output(display_name="clip_l")],
        )

    @classmethod
    def execute(cls, clip_name, dtype) -> io.NodeOutput:
        path, tokenizer = clip_location(clip_name)
        encoder = load_clip_encoder(path, tokenizer, dtype=w.torch_dtype(dtype), device=bridge.devices("text").offload)
        log.info("loaded CLIP from %s (%s)", clip_name, dtype)
        return io.NodeOutput(ClipHandle(encoder, path, bridge.manage(encoder.model, "text")))
