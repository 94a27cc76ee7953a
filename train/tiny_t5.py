"""A small random T5 encoder with the byte-level ByT5 tokenizer, for from-scratch demos without downloads.

``opensora-train init-t5 outputs/tiny/t5 --d-model 64`` writes a Hugging Face folder (config.json,
model.safetensors, tokenizer_config.json) that :func:`opensora_core.text.t5.load_t5_encoder` reads. Its
features are random but fixed: a DiT trained from scratch on them learns to use them like any other
caption features. ``d_model`` must equal the DiT's ``caption_channels``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BYTE_VOCAB = 384  # ByT5: 256 bytes + 3 special tokens + 125 extra ids

# The whole ByT5 tokenizer, written so that every transformers version reads it the same way: its
# constructor defaults rebuild the special tokens and extra ids. (``save_pretrained`` of transformers 5
# writes the extra ids as a list that 4.5x cannot read: "'list' object has no attribute 'keys'".)
BYTE_TOKENIZER_CONFIG = {
    "tokenizer_class": "ByT5Tokenizer",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "extra_ids": 125,
}


def write_byte_tokenizer(folder: str | Path) -> Path:
    """Write the byte-level tokenizer (``tokenizer_config.json`` only) into ``folder``."""
    path = Path(folder) / "tokenizer_config.json"
    path.write_text(json.dumps(BYTE_TOKENIZER_CONFIG, indent=2) + "\n")
    return path


def write_random_t5(folder: str | Path, *, d_model: int = 64, layers: int = 2, heads: int = 4, d_ff: int | None = None,
                    seed: int = 0) -> Path:
    from transformers import T5Config, T5EncoderModel

    if d_model % heads:
        raise ValueError(f"d_model {d_model} must be a multiple of heads {heads}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = T5Config(vocab_size=BYTE_VOCAB, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff or 2 * d_model,
                      num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu")
    torch.manual_seed(seed)
    T5EncoderModel(config).eval().save_pretrained(folder)
    write_byte_tokenizer(folder)
    return folder


__all__ = ["BYTE_TOKENIZER_CONFIG", "write_byte_tokenizer", "write_random_t5"]
