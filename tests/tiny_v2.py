"""Tiny Open-Sora 2.0 MMDiT for CPU tests: hidden 64, 2 heads (head_dim 32, axes 4/14/14), 16-channel
latents in 2x2 patches, T5 width 32, CLIP width 16; every other setting as released."""

from __future__ import annotations

import torch

from opensora_core.families import build_model
from opensora_core.models.mmdit import MMDiTModel

TXT_DIM, VEC_DIM = 32, 16
TINY = dict(
    in_channels=64, vec_in_dim=VEC_DIM, context_in_dim=TXT_DIM, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2,
    depth_single_blocks=2, axes_dim=[4, 14, 14], theta=10000, qkv_bias=True, guidance_embed=False, cond_embed=True,
    fused_qkv=False, use_liger_rope=True, patch_size=2,
)


def randomised(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised parts would hide mistakes); norm gains around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            p.copy_((noise + (1.0 if name.endswith(".scale") else 0.0)).to(p.dtype))
    return model.eval()


def mmdit(seed: int = 0, **overrides) -> MMDiTModel:
    return randomised(build_model("MMDiTModel", {**TINY, **overrides}), seed)


def inputs(batch: int = 2, frames: int = 3, height: int = 4, width: int = 6, text_tokens: int = 5, seed: int = 1):
    """Model keyword inputs for a random latent [B, 16, T, H, W]; t in (0, 1)."""
    from opensora_core.models.mmdit import pack, position_ids, text_ids

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 16, frames, height, width, generator=g)
    cond = torch.randn(batch, 17, frames, height, width, generator=g)
    return dict(
        img=pack(z),
        img_ids=position_ids(batch, frames, height, width),
        txt=torch.randn(batch, text_tokens, TXT_DIM, generator=g),
        txt_ids=text_ids(batch, text_tokens),
        timesteps=torch.rand(batch, generator=g),
        y_vec=torch.randn(batch, VEC_DIM, generator=g),
        cond=pack(cond),
    )
