"""Tiny models saved under the official file names, in ComfyUI's model-folder layout.

Used by the node/workflow tests and, as a script, to fill a models dir for the real-ComfyUI
harness (``shared/comfy_host/run_pack.py --models-dir``)::

    python tests/comfy_stub/tiny_models.py OUT_DIR --t5-vocab 32128 --no-tokenizer

``--no-tokenizer`` leaves the single-file T5 without a tokenizer beside it, so the loader
takes ComfyUI's bundled T5 tokenizer (32100 tokens; the tiny T5 then needs >= 32100 rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # run as a script
    sys.path.insert(0, str(TESTS))
    sys.path.insert(1, str(TESTS.parent))

import torch  # noqa: E402

import tiny  # noqa: E402
from opensora_core.checkpoints import save_checkpoint  # noqa: E402
from opensora_core.vae import (  # noqa: E402
    AutoencoderKLConfig,
    TemporalVAEConfig,
    VideoAutoencoderKL,
    VideoAutoencoderPipeline,
)

# VAEs with the released GroupNorm group count (32): the loaders read everything else from the shapes.
SD_VAE = AutoencoderKLConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32)
TEMPORAL_VAE = TemporalVAEConfig(filters=32, num_res_blocks=1, channel_multipliers=(1, 1, 1, 1),
                                 temporal_downsample=(False, True, True), num_groups=32)

STDIT3_FILE = "diffusion_models/OpenSora-STDiT-v3.safetensors"
STDIT2_FILE = "diffusion_models/OpenSora-STDiT-v2-stage3.safetensors"
VAE_V1_2_FILE = "vae/OpenSora-VAE-v1.2.safetensors"
SD_VAE_FILE = "vae/sd-vae-ft-ema.safetensors"
T5_FILE = "text_encoders/t5xxl_fp16.safetensors"
T5_FOLDER = "text_encoders/t5-v1_1-xxl"
TOKENIZER_BESIDE = "text_encoders/t5xxl_fp16_tokenizer"


def char_tokenizer():
    """A T5-style fast tokenizer over single characters (<pad> 0, </s> 1, <unk> 2; EOS appended):
    every prompt gets its own tokens, with no vocabulary file to download."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for code in range(32, 127):
        vocab.setdefault(chr(code), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def vae_v1_2() -> VideoAutoencoderPipeline:
    torch.manual_seed(1)
    return VideoAutoencoderPipeline(SD_VAE, TEMPORAL_VAE).eval()


def sd_vae() -> VideoAutoencoderKL:
    torch.manual_seed(2)
    return VideoAutoencoderKL(SD_VAE).eval()


def t5_model(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=tiny.CAPTION_CHANNELS, d_kv=8, d_ff=64, num_layers=2,
                      num_heads=4, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).eval()


def stdit(class_name: str, max_length: int):
    """A tiny diffusion model with the official caption length (300 for v1.2, 200 for v1.1)."""
    from opensora_core.families import build_model

    config = {**(tiny.STDIT3 if class_name == "STDiT3" else tiny.STDIT2), "model_max_length": max_length}
    return tiny._randomised(build_model(class_name, config), seed=0)


def write(root: Path, *, t5_vocab: int = 384, tokenizer_beside: bool = True, v1_1: bool = True) -> Path:
    """Write the tiny models below ``root`` (ComfyUI's models dir layout); returns ``root``."""
    root = Path(root)
    save_checkpoint(stdit("STDiT3", 300).state_dict(), root / STDIT3_FILE, class_name="STDiT3")
    save_checkpoint(vae_v1_2().state_dict(), root / VAE_V1_2_FILE)
    if v1_1:
        save_checkpoint(stdit("STDiT2", 200).state_dict(), root / STDIT2_FILE, class_name="STDiT2")
        save_checkpoint(sd_vae().module.state_dict(), root / SD_VAE_FILE)
    t5 = t5_model(t5_vocab)
    save_checkpoint({k: v.clone() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"},
                    root / T5_FILE)
    t5.save_pretrained(root / T5_FOLDER)
    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(root / T5_FOLDER)
    if tokenizer_beside:
        tokenizer.save_pretrained(root / TOKENIZER_BESIDE)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--t5-vocab", type=int, default=384)
    parser.add_argument("--no-tokenizer", action="store_true", help="no tokenizer beside the single-file T5")
    args = parser.parse_args()
    write(args.out, t5_vocab=args.t5_vocab, tokenizer_beside=not args.no_tokenizer)
    print(f"tiny models written to {args.out}")


if __name__ == "__main__":
    main()
