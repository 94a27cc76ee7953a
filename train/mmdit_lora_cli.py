"""``opensora-train lora-v2``: LoRA fine-tuning of the Open-Sora 2.0 MMDiT from a folder of captioned clips.

    opensora-train lora-v2 clips/ --model Open_Sora_v2.safetensors --vae hunyuan_vae.safetensors \\
        --text-encoder t5xxl_fp16.safetensors --tokenizer T5_TOKENIZER --clip clip_l.safetensors \\
        --clip-tokenizer CLIP_TOKENIZER --height 192 --width 336 --num-frames 33 --steps 1000 \\
        [--fp8] [--blocks-on-device 20] [--rank 16] --output my-lora.safetensors

``clips/`` holds videos with same-name ``.txt`` captions (the folder format of ``prepare``/``synthetic``).
Every clip is encoded once (Hunyuan VAE posterior sample; T5 + CLIP-L of "<caption> <fps> FPS."), then the
text encoders and the VAE are released and the adapters train (:mod:`.mmdit_lora`).
"""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path

import torch

from opensora_core import media
from opensora_core.dtypes import DTYPES
from opensora_core.families import TextFile, by_release
from opensora_core.geometry.opensora_v2 import check_num_frames
from opensora_core.loading import load_dit, load_vae

from .mmdit_lora import LoRAConfig, encode_clips, save_adapters, train_lora

log = logging.getLogger("opensora.train")


def add_parser(sub) -> argparse.ArgumentParser:
    cmd = sub.add_parser("lora-v2", help="LoRA fine-tune of the Open-Sora 2.0 MMDiT (fp8/bf16 base, block swap)")
    cmd.add_argument("clips", help="folder of videos with same-name .txt captions")
    for flag, text in (("--model", "Open_Sora_v2.safetensors"), ("--vae", "hunyuan_vae.safetensors"),
                       ("--text-encoder", "T5: folder or t5xxl_fp16.safetensors"), ("--clip", "CLIP-L: folder or "
                       "clip_l.safetensors")):
        cmd.add_argument(flag, required=True, help=text)
    cmd.add_argument("--tokenizer", help="T5 tokenizer folder (single-file T5)")
    cmd.add_argument("--clip-tokenizer", help="CLIP tokenizer folder (single-file CLIP)")
    cmd.add_argument("--output", "-o", required=True, help="LoRA file to write (.safetensors, ComfyUI keys)")
    cmd.add_argument("--height", type=int, default=192)
    cmd.add_argument("--width", type=int, default=336)
    cmd.add_argument("--num-frames", type=int, default=33, help="frames per clip (4k+1)")
    cmd.add_argument("--steps", type=int, default=1000)
    cmd.add_argument("--rank", type=int, default=16)
    cmd.add_argument("--lr", type=float, default=1e-4)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--fp8", action="store_true", help="frozen base in fp8 (e4m3fn, per-layer scale)")
    cmd.add_argument("--blocks-on-device", type=int, help="block swap: frozen blocks kept on the device")
    cmd.add_argument("--no-gradient-checkpointing", action="store_true")
    cmd.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cmd.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default bf16 on GPU, fp32 on CPU)")
    return cmd


def _clips(folder: Path) -> list[tuple[torch.Tensor, str, float]]:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in media.VIDEO_SUFFIXES)
    clips = []
    for path in found:
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            log.warning("%s: no caption (%s); skipped", path, caption.name)
            continue
        frames, fps = media.read_frames(path)
        clips.append((frames, caption.read_text(encoding="utf-8"), fps))
    if not clips:
        raise ValueError(f"{folder}: no video with a same-name .txt caption")
    return clips


def run(args) -> int:
    check_num_frames(args.num_frames)
    family = by_release("v2.0")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config = LoRAConfig(rank=args.rank, learning_rate=args.lr, steps=args.steps, seed=args.seed,
                        gradient_checkpointing=not args.no_gradient_checkpointing,
                        blocks_on_device=args.blocks_on_device)
    clips = _clips(Path(args.clips))
    vae = load_vae(args.vae, expect=family.vae, dtype=dtype, device=device)
    text = family.load_text([TextFile(args.text_encoder, args.tokenizer), TextFile(args.clip, args.clip_tokenizer)],
                            max_length=family.caption_length, dtype=dtype, device=device)
    examples = encode_clips(vae, text, clips, height=args.height, width=args.width, num_frames=args.num_frames,
                            generator=torch.Generator().manual_seed(args.seed))
    del vae, text  # released before training
    gc.collect()
    loaded = load_dit(args.model, dtype=dtype, device="cpu", fp8=args.fp8)
    if loaded.family is not family:
        raise ValueError(f"--model {args.model}: {loaded.family.title}, not an Open-Sora 2.0 MMDiT")
    result = train_lora(loaded.model, examples, config, device)
    path = save_adapters(loaded.model, args.output, config)
    first, last = result.losses[0], sum(result.losses[-10:]) / len(result.losses[-10:])
    print(f"wrote {path} ({len(result.adapted)} adapted layers); loss: first {first:.4f}, mean of the last "
          f"{min(10, len(result.losses))} {last:.4f}")
    return 0


__all__ = ["add_parser", "run"]
