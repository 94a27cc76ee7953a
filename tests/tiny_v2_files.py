"""Tiny Open-Sora 2.0 files of the real classes under the official names, in ComfyUI's model layout:
``diffusion_models/Open_Sora_v2.safetensors`` (MMDiT, 1 + 1 blocks), ``vae/hunyuan_vae.safetensors`` (Hunyuan VAE,
32-wide levels), ``text_encoders/t5xxl_fp16.safetensors`` and ``text_encoders/clip_l.safetensors`` (2-layer T5 and
CLIP in the single-file layouts ComfyUI users have), each with its tokenizer folder beside it, and Hugging Face
folders ``text_encoders/t5/`` and ``text_encoders/clip/`` for the command line.

As a script it fills a models dir for the real-ComfyUI harness (``shared/comfy_host/run_pack.py --models-dir``)
with the single files only and no tokenizer beside them, so the loaders take ComfyUI's bundled T5 and CLIP-L
tokenizers (the tiny T5 and CLIP then get their vocabulary sizes)::

    python tests/tiny_v2_files.py OUT_DIR --comfy-tokenizers
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS.parent) not in sys.path:  # run as a script
    sys.path.insert(0, str(TESTS.parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from opensora_core.checkpoints import save_checkpoint  # noqa: E402
from opensora_core.families import build_model  # noqa: E402
from opensora_core.vae.hunyuan import HunyuanVAE, HunyuanVAEConfig  # noqa: E402

T5_WIDTH, CLIP_WIDTH = 32, 64  # CLIP: 64-wide heads (OpenAI CLIP)
MMDIT = dict(
    in_channels=64, vec_in_dim=CLIP_WIDTH, context_in_dim=T5_WIDTH, hidden_size=64, mlp_ratio=4.0, num_heads=2,
    depth=1, depth_single_blocks=1, axes_dim=[4, 14, 14], theta=10000, qkv_bias=True, guidance_embed=False,
    cond_embed=True, fused_qkv=False, use_liger_rope=True, patch_size=2,
)
VAE_GROUPS = 8
COMFY_T5_VOCAB, COMFY_CLIP_VOCAB = 32128, 49408  # ComfyUI's t5_tokenizer and sd1_tokenizer
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789."


def _randomised(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def mmdit(seed: int = 0, config: dict = MMDIT) -> torch.nn.Module:
    return _randomised(build_model("MMDiTModel", config), seed)


def hunyuan_vae() -> HunyuanVAE:
    torch.manual_seed(0)
    return HunyuanVAE(HunyuanVAEConfig(block_out_channels=(32, 32, 32, 32), norm_num_groups=VAE_GROUPS)).eval()


def _t5(folder: Path, vocab_size: int = 384):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(1)
    config = T5Config(vocab_size=vocab_size, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")
    model = T5EncoderModel(config).eval()
    model.save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return model


def _clip(folder: Path, vocab_size: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(2)
    config = CLIPTextConfig(vocab_size=vocab_size or len(vocab), hidden_size=CLIP_WIDTH, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=1, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    model = CLIPTextModel(config).eval()
    model.save_pretrained(folder)
    return model


def write_models(root: Path, *, comfy_tokenizers: bool = False) -> Path:
    """Write every file under ``root`` (ComfyUI's ``models`` folder layout); returns ``root``.
    ``comfy_tokenizers``: only the single files, sized for ComfyUI's bundled tokenizers, none beside them."""
    for sub in ("diffusion_models", "vae", "text_encoders"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_checkpoint(mmdit().state_dict(), root / "diffusion_models" / "Open_Sora_v2.safetensors",
                    class_name="MMDiTModel", config=MMDIT)
    save_checkpoint(hunyuan_vae().state_dict(), root / "vae" / "hunyuan_vae.safetensors",
                    config={"norm_num_groups": VAE_GROUPS})
    text = root / "text_encoders"
    t5 = _t5(text / "t5", COMFY_T5_VOCAB if comfy_tokenizers else 384)
    t5_state = {k: v.clone() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}  # tied
    save_file(t5_state, str(text / "t5xxl_fp16.safetensors"))  # ComfyUI's layout: shared.weight + encoder.*
    _copy_tokenizer(text / "t5", text / "t5xxl_fp16_tokenizer")
    clip = _clip(text / "clip", COMFY_CLIP_VOCAB if comfy_tokenizers else None)
    clip_state = {k if k.startswith("text_model.") else f"text_model.{k}": v.clone() for k, v in clip.state_dict().items()}
    save_file(clip_state, str(text / "clip_l.safetensors"))  # ComfyUI's layout: text_model.*
    _copy_tokenizer(text / "clip", text / "clip_l_tokenizer")
    return root


def _copy_tokenizer(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".json", ".txt", ".model") and f.name != "config.json":
            (target / f.name).write_bytes(f.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tiny Open-Sora 2.0 files in ComfyUI's models layout")
    parser.add_argument("out", type=Path)
    parser.add_argument("--comfy-tokenizers", action="store_true",
                        help="single files only, for ComfyUI's bundled tokenizers (no tokenizer folders)")
    args = parser.parse_args(argv)
    write_models(args.out, comfy_tokenizers=args.comfy_tokenizers)
    if args.comfy_tokenizers:
        text = args.out / "text_encoders"
        for folder in ("t5", "clip", "t5xxl_fp16_tokenizer", "clip_l_tokenizer"):
            shutil.rmtree(text / folder)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
