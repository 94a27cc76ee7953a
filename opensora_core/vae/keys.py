"""SD-VAE state-dict layouts: one rename table, conversion both ways (the file kinds that recognise each
layout are declared in ``opensora_core.families``).

Three layouts of the same AutoencoderKL weights are in circulation:

* ``sd_diffusers`` (our native layout): ``encoder.down_blocks.0.resnets.0...``, mid
  attention ``to_q/to_k/to_v/to_out.0`` as linear weights [C, C];
* legacy diffusers (files saved before diffusers 0.14): the same, except the mid
  attention is ``query/key/value/proj_attn`` (detected as ``sd_diffusers``);
* ``sd_ldm`` (CompVis / ComfyUI / A1111 single files such as
  ``vae-ft-mse-840000-ema-pruned.safetensors`` and ``sdxl_vae.safetensors``):
  ``encoder.down.0.block.0...``, decoder levels numbered the other way round, mid
  attention ``q/k/v/proj_out`` as 1x1 conv weights [C, C, 1, 1]. Full SD checkpoints
  nest it under ``first_stage_model.``.

The Open-Sora VAE v1.2 (``vae_v1_2``) holds a diffusers-layout SD-VAE under
``spatial_vae.module.`` next to ``temporal_vae.*``, ``scale`` and ``shift``.
The correspondence is the reference ``vae_key_mapping.json`` (248 keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from torch import Tensor

# (diffusers prefix, LDM prefix); the rest of a key is kept. First match wins, so specific rules come first.
# {side} is encoder|decoder; {u} is the diffusers decoder level (lowest resolution first), {i} the LDM level
# (highest resolution first): u = levels - 1 - i on the decoder, u = i elsewhere.
RENAME_TABLE: tuple[tuple[str, str], ...] = (
    ("{side}.conv_norm_out.", "{side}.norm_out."),
    ("encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.", "encoder.down.{i}.block.{j}.nin_shortcut."),
    ("encoder.down_blocks.{i}.resnets.{j}.", "encoder.down.{i}.block.{j}."),
    ("encoder.down_blocks.{i}.downsamplers.0.conv.", "encoder.down.{i}.downsample.conv."),
    ("decoder.up_blocks.{u}.resnets.{j}.conv_shortcut.", "decoder.up.{i}.block.{j}.nin_shortcut."),
    ("decoder.up_blocks.{u}.resnets.{j}.", "decoder.up.{i}.block.{j}."),
    ("decoder.up_blocks.{u}.upsamplers.0.conv.", "decoder.up.{i}.upsample.conv."),
    ("{side}.mid_block.resnets.0.", "{side}.mid.block_1."),
    ("{side}.mid_block.resnets.1.", "{side}.mid.block_2."),
    ("{side}.mid_block.attentions.0.group_norm.", "{side}.mid.attn_1.norm."),
    ("{side}.mid_block.attentions.0.to_q.", "{side}.mid.attn_1.q."),
    ("{side}.mid_block.attentions.0.to_k.", "{side}.mid.attn_1.k."),
    ("{side}.mid_block.attentions.0.to_v.", "{side}.mid.attn_1.v."),
    ("{side}.mid_block.attentions.0.to_out.0.", "{side}.mid.attn_1.proj_out."),
)

# (diffusers prefix, legacy diffusers prefix)
LEGACY_TABLE: tuple[tuple[str, str], ...] = (
    ("{side}.mid_block.attentions.0.to_q.", "{side}.mid_block.attentions.0.query."),
    ("{side}.mid_block.attentions.0.to_k.", "{side}.mid_block.attentions.0.key."),
    ("{side}.mid_block.attentions.0.to_v.", "{side}.mid_block.attentions.0.value."),
    ("{side}.mid_block.attentions.0.to_out.0.", "{side}.mid_block.attentions.0.proj_attn."),
)

# attention projections: linear [C, C] in diffusers, 1x1 conv [C, C, 1, 1] in LDM
_ATTENTION_WEIGHT = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")

# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


def to_diffusers_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An SD-VAE state dict (any layout, keys relative to the VAE) in the diffusers layout.

    Keys that no rule names (``conv_in``, ``quant_conv``, ...) are the same in every layout.
    Tensors are not copied; LDM attention weights become [C, C] views.
    """
    levels = _decoder_levels(state_dict, "decoder.up.")
    out = {}
    for key, tensor in state_dict.items():
        new = _rename(key, RENAME_TABLE, source=1, levels=levels) or _rename(key, LEGACY_TABLE, source=1, levels=0)
        new = new or key
        if _ATTENTION_WEIGHT.match(new) and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[:2])  # (C, C, 1, 1) -> (C, C)
        out[new] = tensor
    return out


def to_ldm_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers-layout SD-VAE state dict in the LDM / ComfyUI layout (attention weights as 1x1 convs)."""
    state_dict = to_diffusers_layout(state_dict)
    levels = _decoder_levels(state_dict, "decoder.up_blocks.")
    out = {}
    for key, tensor in state_dict.items():
        if _ATTENTION_WEIGHT.match(key) and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # (C, C) -> (C, C, 1, 1)
        out[_rename(key, RENAME_TABLE, source=0, levels=levels) or key] = tensor
    return out


def _rename(key: str, table: tuple[tuple[str, str], ...], *, source: int, levels: int) -> str | None:
    """Rename ``key`` by the first rule whose ``source`` side (0 diffusers, 1 other) is a prefix of it."""
    for rule in table:
        match = _pattern(rule[source]).match(key)
        if match is None:
            continue
        values = match.groupdict()
        if "u" in values:  # diffusers -> LDM decoder level
            values["i"] = str(levels - 1 - int(values.pop("u")))
        elif "i" in values and "{u}" in rule[1 - source]:  # LDM -> diffusers decoder level
            values["u"] = str(levels - 1 - int(values.pop("i")))
        return rule[1 - source].format(**values) + key[match.end():]
    return None


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    groups = {"side": r"(?P<side>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "u": r"(?P<u>\d+)"}
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, ...
    regex = "".join(groups[p] if n % 2 else re.escape(p) for n, p in enumerate(parts))
    return re.compile("^" + regex)


def _decoder_levels(state_dict: Mapping[str, object], prefix: str) -> int:
    levels = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    return max(levels) + 1 if levels else 0
