"""Scores from CLIP: the LAION aesthetic score and the caption-clip match, from model files the user gives.

Nothing is downloaded: both stages need a CLIP folder in the transformers layout (``config.json``, weights,
tokenizer and preprocessor files; the official tools use ViT-L/14, e.g. a local copy of
``openai/clip-vit-large-patch14``), and the aesthetic score the LAION "improved aesthetic predictor" head
(``sac+logos+ava1-l14-linearMSE.pth``, a 768 -> 1 MLP on the normalised CLIP image embedding). Without them
the stages are reported as skipped.

* ``aes`` (``tools/scoring/aesthetic/inference.py``): the head's output on the L2-normalised image embedding,
  averaged over the frames at 10 %, 50 % and 90 % of the clip; about 1..10, 5.5 = fair, 6.5 = high.
* ``match`` (``tools/scoring/matching/inference.py``): CLIP's logit scale (100 for the released models) times
  the cosine similarity of the middle frame and the caption (truncated to CLIP's 77 tokens); ~20-35.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .clips import ClipSpec, points_to_indices
from .frames import Frames

AESTHETIC_POINTS = (0.1, 0.5, 0.9)  # NUM_FRAMES_POINTS[3] of the official aesthetic scorer
MATCH_POINTS = (0.5,)  # the official matching scorer reads the middle frame


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP; parameter names match its released file (``layers.N``)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)  # (N, D) -> (N, 1)


def load_aesthetic_head(path: Path, input_size: int) -> AestheticHead:
    """The head from a ``.pth`` (read with weights_only) or ``.safetensors`` file, strictly."""
    if not path.is_file():
        raise FileNotFoundError(f"--aesthetic-model: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticHead(input_size)
    try:
        head.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"--aesthetic-model {path}: not the LAION aesthetic head for {input_size}-wide CLIP "
                         f"embeddings (expected layers.0/2/4/6/7 weights, e.g. sac+logos+ava1-l14-linearMSE.pth): "
                         f"{err}") from None
    return head.eval()


class ClipModel:
    """A local CLIP folder (transformers layout): normalised image and text embeddings, thread-safe."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--clip-model: {folder} is not a CLIP folder (no config.json); give a local "
                                    "copy of a transformers CLIP model such as openai/clip-vit-large-patch14")
        self.folder, self.device = folder, torch.device(device)
        self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        self.lock = threading.Lock()

    @property
    def embedding_size(self) -> int:
        return self.model.config.projection_dim

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @torch.no_grad()
    def images(self, frames: list[np.ndarray]) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings of RGB frames."""
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
        with self.lock:
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embedding = self.model.visual_projection(pooled)
        return nn.functional.normalize(embedding.float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised text embeddings (each text truncated to the model's length)."""
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings)
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with self.lock:
            embedding = self.model.text_projection(self.model.text_model(**tokens).pooler_output)
        return nn.functional.normalize(embedding.float(), dim=-1)


class AestheticStage:
    name = "aesthetic"
    columns = ("aes",)

    def __init__(self, clip: ClipModel, head_path: Path) -> None:
        self.clip, self.head_path = clip, head_path
        self.head = load_aesthetic_head(head_path, clip.embedding_size).to(clip.device)

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "clip": str(self.clip.folder.resolve()),
                           "head": str(self.head_path.resolve()), "points": AESTHETIC_POINTS})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else points_to_indices(AESTHETIC_POINTS, clip.num_frames)

    @torch.no_grad()
    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        embedding = self.clip.images([frames[i] for i in sorted(frames)])  # (N, D)
        return {"aes": round(float(self.head(embedding).mean()), 4)}


class MatchStage:
    name = "match"
    columns = ("match",)

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "clip": str(self.clip.folder.resolve()), "points": MATCH_POINTS})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        text = values.get("text") or clip.caption
        return f"{clip.key()}|{hashlib.sha1(text.encode()).hexdigest()}"  # the score depends on the caption

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else points_to_indices(MATCH_POINTS, clip.num_frames)

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        text = values.get("text") or clip.caption
        if not text:
            return {"match": None}
        image = self.clip.images([frames[i] for i in sorted(frames)])[:1]  # (1, D)
        similarity = float((image * self.clip.texts([text])).sum())
        return {"match": round(self.clip.logit_scale * similarity, 4)}


__all__ = ["AestheticHead", "AestheticStage", "ClipModel", "MatchStage", "load_aesthetic_head"]
