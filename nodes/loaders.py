"""Loader nodes: diffusion model, VAE and T5 from ComfyUI's model folders."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os

from ..opensora_core.loading import load_dit, load_vae
from ..opensora_core.lora import merge_lora
from ..opensora_core.text.t5 import TOKENIZER_CONFIG, load_t5_encoder
from . import comfy_bridge as bridge
from . import widgets as w
from .types import MODEL, T5, VAE, ModelHandle, T5Handle, VAEHandle

log = logging.getLogger("opensora")


class OpenSoraModelLoader:
    """Loads an Open-Sora diffusion transformer; the version (STDiT v1.0, STDiT2 v1.1, STDiT3 v1.2) and
    its size are read from the file. The stock 'Load Diffusion Model' cannot load these files."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Open-Sora diffusion model, for the Text Encode (caption length) and the Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (bridge.model_files("diffusion_models"), {
                "tooltip": "File in models/diffusion_models, e.g. OpenSora-STDiT-v3.safetensors "
                           "(hpcai-tech/OpenSora-STDiT-v3 model.safetensors, renamed)."}),
            "weight_dtype": w.choice(["bf16", "fp16", "fp32"], "bf16",
                                     "Precision of the weights and the computation (official: bf16)."),
            "attention": w.choice(bridge.attention_options(), bridge.ATTENTION_DEFAULT,
                                  "Scaled-dot-product attention kernel: 'sdpa' lets PyTorch choose; "
                                  "'sdpa_math' is the exact reference kernel (slow)."),
        }}

    def load(self, model_name, weight_dtype, attention):
        path = bridge.model_path("diffusion_models", model_name)
        where = bridge.devices("diffusion")
        loaded = load_dit(path, dtype=w.torch_dtype(weight_dtype), device=where.offload)
        handle = ModelHandle(loaded.model, loaded.family, loaded.preset, path, attention,
                             bridge.manage(loaded.model, "diffusion"))
        log.info("loaded %s from %s (%s)", handle.describe(), model_name, weight_dtype)
        return (handle,)


class OpenSoraLoraLoader:
    """Applies a LoRA trained by opensora-train (or any diffusion_model.<key>.lora_A/lora_B file of the
    same model) to a copy of the model; the loaded model itself is left unchanged."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/loaders"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "lora_name": (bridge.model_files("loras"), {"tooltip": "File in models/loras (opensora-train export *-lora.safetensors)."}),
            "strength": w.number(1.0, -4.0, 4.0, "Scale of the LoRA update (1 = as trained).", step=0.05),
        }}

    def apply(self, model, lora_name, strength):
        path = bridge.model_path("loras", lora_name)
        module = copy.deepcopy(model.module)  # merging works in place: never touch the cached model
        merged = merge_lora(module, path, strength)
        log.info("merged LoRA %s (%d layers, strength %g) into %s", lora_name, len(merged), strength, model.describe())
        return (dataclasses.replace(model, module=module, source=f"{model.source} + {lora_name}",
                                    managed=bridge.manage(module, "diffusion")),)


class OpenSoraVAELoader:
    """Loads a video VAE: the Open-Sora VAE v1.2 (for v1.2 models) or an SD-VAE in the diffusers or
    LDM/ComfyUI key layout (for v1.0/v1.1 models); the kind is read from the file."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/loaders"
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (bridge.model_files("vae"), {
                "tooltip": "File in models/vae, e.g. OpenSora-VAE-v1.2.safetensors "
                           "(hpcai-tech/OpenSora-VAE-v1.2 model.safetensors, renamed) or an SD-VAE."}),
            "dtype": w.choice(["bf16", "fp32"], "bf16", "Precision of the VAE (official v1.2: bf16)."),
        }}

    def load(self, vae_name, dtype):
        path = bridge.model_path("vae", vae_name)
        vae = load_vae(path, dtype=w.torch_dtype(dtype), device=bridge.devices("vae").offload)
        log.info("loaded %s from %s (%s)", type(vae).__name__, vae_name, dtype)
        return (VAEHandle(vae, path, bridge.manage(vae, "vae")),)


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


class OpenSoraT5Loader:
    """Loads the T5-XXL text encoder: a single file as Flux/SD3 users have it (t5xxl_fp16.safetensors,
    fp8 variants too; tokenizer from ComfyUI or a folder beside it) or a Hugging Face folder
    (DeepFloyd/t5-v1_1-xxl). ComfyUI's own CLIPLoader (type sd3 or pixart) also works with Text Encode."""

    DESCRIPTION = __doc__
    CATEGORY = f"{w.CATEGORY}/loaders"
    RETURN_TYPES = (T5,)
    RETURN_NAMES = ("t5",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5_name": (t5_choices(), {
                "tooltip": "models/text_encoders: t5xxl_fp16.safetensors or a Hugging Face folder (shown as 'name/')."}),
            "dtype": w.choice(["bf16", "fp32"], "bf16",
                              "Precision of T5 (official: fp32; bf16 halves the memory; fp16 overflows in T5 v1.1)."),
        }}

    def load(self, t5_name, dtype):
        path, tokenizer = t5_location(t5_name)
        encoder = load_t5_encoder(path, tokenizer, dtype=w.torch_dtype(dtype), device=bridge.devices("text").offload)
        log.info("loaded T5 (%d channels) from %s (%s)", encoder.output_dim, t5_name, dtype)
        return (T5Handle(encoder, path, bridge.manage(encoder.model, "text")),)
