"""Parity handler for the Open-Sora-Plan v1.3 transformer forward cases (``t2v_v1_3_forward``,
``i2v_v1_3_forward``).

A case names ``class`` ``OpenSoraT2V_v1_3`` or ``OpenSoraInpaint_v1_3`` with ``constructor_kwargs`` and a
``calls`` list. The model is built with :func:`opensora_core.models.build_model`, loaded strictly (bf16 weights
into float32 parameters) and called as the official ``model(hidden_states, timestep=..., encoder_hidden_states=...,
attention_mask=..., encoder_attention_mask=...)``: once per ``in.attention_mask*`` input (T2V: ``_full`` ->
``out.full_mask``, ``_partial`` -> ``out.partial_mask``; inpainting: the single ``out.output``). The forward-hook
tensors ``dbg.*`` of the first call (blocks in the official (tokens, batch, hidden) layout) and the per-layer
attention pattern are compared as well.
"""

from __future__ import annotations

import random
import re

import torch

from ..conditioning.osp_inpaint import compress_mask, inpaint_pixels, resolve_mask_type
from ..families import build_model
from .osp_sampling import wfvae_encoder
from .runner import Case, Comparison, Handler

CLASSES = ("OpenSoraT2V_v1_3", "OpenSoraInpaint_v1_3")
_BLOCK_PREFIX = "transformer_blocks."


def _matches(case: Case) -> bool:
    cfg = case.config
    return (
        cfg.get("class") in CLASSES
        and isinstance(cfg.get("constructor_kwargs"), dict)
        and case.has("weights.safetensors")
        and case.has("io.safetensors")
    )


def build_case_model(case: Case) -> torch.nn.Module:
    """The case's model, strictly loaded, float32, eval mode."""
    cfg = case.config
    model = build_model(cfg["class"], cfg["constructor_kwargs"])
    model.load_state_dict(case.weights, strict=True)
    return model.float().eval()


def mask_calls(case: Case) -> list[tuple[str, str]]:
    """(attention-mask input, expected output) pairs; the first call is the one the ``dbg.*`` tensors record."""
    io = case.io
    if "in.attention_mask" in io:
        return [("in.attention_mask", "out.output")]
    calls = [(f"in.attention_mask_{name}", f"out.{name}_mask") for name in ("full", "partial")]
    missing = [key for pair in calls for key in pair if key not in io]
    if missing:
        raise ValueError(f"{case.name}: cannot pair attention masks with outputs, missing {missing}")
    return calls


def _layer_pattern(model) -> list[dict]:
    return [
        {"layer": i, "sparse1d": sparse is not None, "sparse_group": i % 2 == 1}
        for i, sparse in enumerate(model.attention_pattern())
    ]


def _hooks(model: torch.nn.Module, names: list[str], record: dict) -> list:
    """Forward hooks storing a copy of each named module's output (tuple outputs as ``name.0``, ``name.1``;
    copies, because the model updates its residual stream in place)."""
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            if isinstance(output, tuple):
                record.update({f"{name}.{i}": value.clone() for i, value in enumerate(output)})
            elif name.startswith(_BLOCK_PREFIX) and name.count(".") == 1:
                record[name] = output.transpose(0, 1).clone()  # official layout (tokens, batch, hidden)
            else:
                record[name] = output.clone()
        handles.append(modules[name].register_forward_hook(hook))
    return handles


def _debug_modules(io: dict, model: torch.nn.Module) -> list[str]:
    names = {key[len("dbg."):].rsplit(".", 1)[0] if key.startswith("dbg.adaln_single.") else key[len("dbg."):]
             for key in io if key.startswith("dbg.") and not key.startswith("dbg.cond")}
    known = dict(model.named_modules())
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(f"dbg tensors name modules our model does not have: {unknown}")
    return sorted(names)


def _run(case: Case) -> list[Comparison]:
    io, model = case.io, build_case_model(case)
    record: dict[str, torch.Tensor] = {}
    pattern = case.config.get("layer_attention_pattern")
    comparisons = []
    if isinstance(pattern, list):
        comparisons.append(Comparison("layer_attention_pattern", _layer_pattern(model), pattern))
    for k, (mask_key, out_key) in enumerate(mask_calls(case)):
        handles = _hooks(model, _debug_modules(io, model), record) if k == 0 else []
        try:
            out = model(io["in.hidden_states"], timestep=io["in.timestep"],
                        encoder_hidden_states=io["in.encoder_hidden_states"], attention_mask=io[mask_key],
                        encoder_attention_mask=io["in.encoder_attention_mask"])
        finally:
            for handle in handles:
                handle.remove()
        comparisons.append(Comparison(out_key, out, io[out_key], *case.tolerance("out.*")))
    atol, rtol = case.tolerance("dbg.*")
    comparisons += [Comparison(f"dbg.{name}", value, io[f"dbg.{name}"], atol, rtol) for name, value in record.items()]
    return comparisons + condition_checks(case)


# ==================================================================================================
# The condition channels of the inpainting case (dbg.cond<b>.*)
# ==================================================================================================

_VAE_REFERENCE = re.compile(r"(\.\./wfvae\w*/weights\.safetensors)")


def condition_checks(case: Case) -> list[Comparison]:
    """Our condition of each sample from its stored pixels (``inputs.conditions``): the latent mask, and the
    masked latent when the notes name the WF-VAE the case used (``../wfvae_*/weights.safetensors``)."""
    conditions = case.config.get("inputs", {}).get("conditions")
    if not isinstance(conditions, list):
        return []
    notes = (case.path / "NOTES.md").read_text() if case.has("NOTES.md") else ""
    vae_reference = _VAE_REFERENCE.search(notes)
    atol, rtol = case.tolerance("dbg.cond*")
    checks = []
    for cond in conditions:
        b, pixels = cond["sample"], _condition_pixels(case, cond)
        checks.append(Comparison(f"dbg.cond{b}.latent_mask", compress_mask(pixels.pixel_mask),
                                 case.io[f"dbg.cond{b}.latent_mask"]))
        if vae_reference is not None:
            encode = wfvae_encoder(case, vae_reference[1], case.io[f"rng.cond{b}.posterior_noise"])
            checks.append(Comparison(f"dbg.cond{b}.masked_latent", encode(pixels.masked_pixels),
                                     case.io[f"dbg.cond{b}.masked_latent"], atol, rtol))
    return checks


def _condition_pixels(case: Case, cond: dict):
    io, T = case.io, case.config["inputs"]["pixel_frames"]
    b, seed = cond["sample"], cond["python_random_seed"]
    rng = None if seed is None else random.Random(seed)
    if cond["kind"].startswith("img_"):
        images = io[f"in.cond{b}.images_uint8"]
        mask_type, indices = resolve_mask_type("images", images.shape[0], T, None, cond["indices"])
        return inpaint_pixels(images, T, mask_type, indices, rng=rng)
    mask_type, _ = resolve_mask_type("video", 1, T, cond["mask_type_resolved"])
    return inpaint_pixels(io[f"in.cond{b}.video_uint8"], T, mask_type, rng=rng)


HANDLERS = [Handler("osp-v1.3-forward", _matches, _run)]
