"""Small generated videos with known content for the data-pipeline tests: scene cuts at known frames,
known camera motion, text drawn on frames (OpenCV, from the ``[data]`` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from opensora_core.media import write_video

H, W = 96, 160

# camera label -> how the picture content moves per frame (dx, dy) in pixels, or a zoom rate
CONTENT_MOTION = {"static": (0, 0), "pan left": (2, 0), "pan right": (-2, 0), "tilt up": (0, 2), "tilt down": (0, -2)}


@dataclass(frozen=True)
class Scene:
    frames: int
    camera: str = "static"  # a key of CONTENT_MOTION, or "zoom in"
    text: str = ""  # drawn large over the middle of every frame
    seed: int = 0


def texture(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth coloured noise (trackable by optical flow), each seed with its own palette."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.random((height // 4, width // 4, 3)).astype(np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    tint = rng.random(3).astype(np.float32)
    return (np.clip(0.55 * noise + 0.45 * tint, 0, 1) * 255).astype(np.uint8)


def render(scene: Scene, height: int = H, width: int = W) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one scene."""
    import cv2

    big = texture(scene.seed, height * 5, width * 5)  # room for 2 pixels a frame over 2 * height frames
    frames = []
    for t in range(scene.frames):
        if scene.camera == "zoom in":
            zoom = 1 + 0.01 * t
            hh, ww = height / 2 / zoom, width / 2 / zoom
            cy, cx = height * 2.5, width * 2.5
            crop = big[round(cy - hh):round(cy + hh), round(cx - ww):round(cx + ww)]
            frame = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        else:
            dx, dy = CONTENT_MOTION[scene.camera]
            top, left = 2 * height - dy * t, 2 * width - dx * t  # content moves by (dx, dy): the window the other way
            frame = big[top:top + height, left:left + width].copy()
        if scene.text:
            cv2.putText(frame, scene.text, (8, height // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 3)
            cv2.putText(frame, scene.text, (8, height // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 1)
        frames.append(frame)
    return np.stack(frames)


def write_long_video(path: Path, scenes: list[Scene], fps: float = 24) -> list[int]:
    """Write the scenes one after another; returns the first frame of every scene after the first (the cuts)."""
    video = np.concatenate([render(s) for s in scenes])
    write_video(torch.from_numpy(video), path, fps=fps)
    return list(np.cumsum([s.frames for s in scenes])[:-1])


def fake_captioner(frames: list[np.ndarray], clip) -> str:
    """A captioner hook for the tests (``data_support:fake_captioner``): names the brightest colour channel."""
    channel = int(np.stack(frames).reshape(-1, 3).mean(0).argmax())
    return f"a {('reddish', 'greenish', 'bluish')[channel]} clip of {len(frames)} frames"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the CLIP tokenizer's base alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIP in the transformers layout (byte-level vocabulary, no merges, 32 px images)."""
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + len(chars) for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(images, tokenizer).save_pretrained(folder)
    return folder
