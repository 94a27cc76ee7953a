"""Tiny models of the real classes, shared by the pipeline, node and trainer tests.

Widths are small enough for CPU tests; every architecture setting that decides the
maths (patching, heads, qk-norm, VAE chunking) is the released one. The text encoder
is a 2-layer T5 with the byte-level ByT5 tokenizer, which needs no files.
"""

from __future__ import annotations

import torch
from torch import nn

from opensora_core.families import build_model
from opensora_core.text.t5 import T5TextEncoder
from opensora_core.vae import AutoencoderKLConfig, TemporalVAEConfig, VideoAutoencoderKL, VideoAutoencoderPipeline

CAPTION_CHANNELS = 32
MAX_LENGTH = 24

STDIT3 = dict(hidden_size=64, depth=1, num_heads=4, caption_channels=CAPTION_CHANNELS, model_max_length=MAX_LENGTH)
STDIT2 = dict(hidden_size=72, depth=1, num_heads=4, caption_channels=CAPTION_CHANNELS, model_max_length=MAX_LENGTH,
              input_sq_size=512, qk_norm=True)
SD_VAE = AutoencoderKLConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
TEMPORAL_VAE = TemporalVAEConfig(filters=8, num_res_blocks=1, channel_multipliers=(1, 2, 2, 2),
                                 temporal_downsample=(False, True, True), num_groups=4)


def _randomised(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Random weights everywhere (fresh models have zeroed gates, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "rope.freqs":
                continue
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval()


def stdit3(seed: int = 0) -> nn.Module:
    return _randomised(build_model("STDiT3", STDIT3), seed)


def stdit2(seed: int = 0) -> nn.Module:
    return _randomised(build_model("STDiT2", STDIT2), seed)


def vae_v1_2(seed: int = 0) -> VideoAutoencoderPipeline:
    torch.manual_seed(seed)
    return VideoAutoencoderPipeline(SD_VAE, TEMPORAL_VAE).eval().requires_grad_(False)


def sd_vae(seed: int = 0) -> VideoAutoencoderKL:
    torch.manual_seed(seed)
    return VideoAutoencoderKL(SD_VAE).eval().requires_grad_(False)


def t5_model(seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=384, d_model=CAPTION_CHANNELS, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).eval()


def t5_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def text_encoder(max_length: int = MAX_LENGTH) -> T5TextEncoder:
    return T5TextEncoder(t5_model(), t5_tokenizer(), max_length=max_length)
