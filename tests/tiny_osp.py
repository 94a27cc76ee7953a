"""Tiny Open-Sora-Plan v1.3 models of the real classes, saved in the layout of the released files.

The transformer keeps every setting that decides the maths (Skiparse 4 with full attention in the first and
last two layers, RoPE-3D, patch 1x2x2); 6 layers so that both sparse patterns run. The WF-VAE is the
reference case's tiny width. The text encoder is a 2-layer ``MT5EncoderModel`` with the byte-level ByT5
tokenizer (mT5's own tokenizer cannot be downloaded here).

Layout (``save_release``), as on the hub (LanguageBind/Open-Sora-Plan-v1.3.0, google/mt5-xxl)::

    Open-Sora-Plan-v1.3.0/any93x640x640/{config.json, diffusion_pytorch_model.safetensors}
    Open-Sora-Plan-v1.3.0/any93x640x640_i2v/{config.json, diffusion_pytorch_model.safetensors}
    Open-Sora-Plan-v1.3.0/vae/{config.json, diffusion_pytorch_model.safetensors}
    mt5-xxl/{config.json, model.safetensors, tokenizer files}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from opensora_core.families import build_model
from opensora_core.vae.osp import OpenSoraPlanVAE

CAPTION_CHANNELS = 32
RELEASE = "Open-Sora-Plan-v1.3.0"
T2V_FOLDER, I2V_FOLDER, VAE_FOLDER, MT5_FOLDER = "any93x640x640", "any93x640x640_i2v", "vae", "mt5-xxl"

T2V = dict(num_attention_heads=2, attention_head_dim=12, in_channels=8, out_channels=8, num_layers=6,
           cross_attention_dim=24, attention_bias=True, patch_size=2, patch_size_t=1,
           activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-6,
           caption_channels=CAPTION_CHANNELS, interpolation_scale_h=1.0, interpolation_scale_w=1.0,
           interpolation_scale_t=1.0, sparse1d=True, sparse_n=4)
I2V = dict(T2V, vae_scale_factor_t=4)
WFVAE = dict(latent_dim=8, base_channels=8, encoder_num_resblocks=2, encoder_energy_flow_hidden_size=4,
             decoder_num_resblocks=2, decoder_energy_flow_hidden_size=8, use_attention=True, norm_type="layernorm",
             t_interpolation="trilinear", connect_res_layer_num=2, scale=[0.18215] * 8, shift=[0.0] * 8)


def _randomised(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Random weights (fresh v1.3 models have zero-initialised layers that would hide mistakes); the WF-VAE
    Haar filters are constants and stay as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "wavelet" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model.eval()


def t2v(seed: int = 0) -> nn.Module:
    return _randomised(build_model("OpenSoraT2V_v1_3", T2V), seed)


def i2v(seed: int = 0) -> nn.Module:
    return _randomised(build_model("OpenSoraInpaint_v1_3", I2V), seed)


def wfvae(seed: int = 0) -> OpenSoraPlanVAE:
    return OpenSoraPlanVAE.from_official_config("WFVAEModel", WFVAE).eval().requires_grad_(False)


def mt5_model(seed: int = 0):
    from transformers import MT5Config, MT5EncoderModel

    torch.manual_seed(seed)
    config = MT5Config(vocab_size=384, d_model=CAPTION_CHANNELS, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                       feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return MT5EncoderModel(config).eval()


def _save_diffusers(folder: Path, class_name: str, kwargs: dict, state_dict: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": class_name, "_diffusers_version": "0.30.2", **kwargs}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, folder / "diffusion_pytorch_model.safetensors")
    return folder


def _save_mt5(folder: Path, seed: int) -> Path:
    from transformers import ByT5Tokenizer

    mt5_model(seed).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def save_release(root: Path, seed: int = 0) -> dict[str, Path]:
    """The four released folders under ``root``; returns name -> folder."""
    release = root / RELEASE
    return {
        "t2v": _save_diffusers(release / T2V_FOLDER, "OpenSoraT2V_v1_3", T2V, t2v(seed).state_dict()),
        "i2v": _save_diffusers(release / I2V_FOLDER, "OpenSoraInpaint_v1_3", I2V, i2v(seed + 1).state_dict()),
        "vae": _save_diffusers(release / VAE_FOLDER, "WFVAEModel", WFVAE, wfvae(seed).vae.state_dict()),
        "mt5": _save_mt5(root / MT5_FOLDER, seed),
    }


# The names the ComfyUI loaders list, with the released folders kept as they are:
# models/diffusion_models/Open-Sora-Plan-v1.3.0/any93x640x640/, models/vae/Open-Sora-Plan-v1.3.0/vae/,
# models/text_encoders/mt5-xxl/ (google/mt5-xxl)
WEIGHTS = "diffusion_pytorch_model.safetensors"
COMFY_T2V = f"{RELEASE}/{T2V_FOLDER}/{WEIGHTS}"
COMFY_I2V = f"{RELEASE}/{I2V_FOLDER}/{WEIGHTS}"
COMFY_VAE = f"{RELEASE}/{VAE_FOLDER}/{WEIGHTS}"
COMFY_MT5 = f"{MT5_FOLDER}/"


def write_comfy(models: Path, seed: int = 0) -> Path:
    """The tiny release in ComfyUI's models folder under the names above; returns ``models``."""
    models = Path(models)
    _save_diffusers((models / "diffusion_models" / COMFY_T2V).parent, "OpenSoraT2V_v1_3", T2V, t2v(seed).state_dict())
    _save_diffusers((models / "diffusion_models" / COMFY_I2V).parent, "OpenSoraInpaint_v1_3", I2V,
                    i2v(seed + 1).state_dict())
    _save_diffusers((models / "vae" / COMFY_VAE).parent, "WFVAEModel", WFVAE, wfvae(seed).vae.state_dict())
    _save_mt5(models / "text_encoders" / MT5_FOLDER, seed)
    return models


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the tiny Open-Sora-Plan v1.3 models into a ComfyUI models dir")
    parser.add_argument("models", type=Path)
    write_comfy(parser.parse_args().models)


if __name__ == "__main__":
    main()
