"""Captions: the ``.txt`` / CSV captions, an optional captioner, and the official score phrases.

**Captioner hook** (``--captioner``): either a folder holding a vision-language model in the transformers
layout (loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText``, local files only; e.g. a local copy
of a LLaVA or Qwen-VL chat model), given three frames of the clip (10 %, 50 %, 90 %) and
:data:`CAPTION_PROMPT`; or ``package.module:function``, a Python function called as
``function(frames, clip) -> str`` with the frames as (H, W, 3) uint8 RGB numpy arrays. By default only clips
without a caption are captioned (``--recaption``: all).

**Score phrases** (``--caption-scores aes,flow,cmotion``): Open-Sora v1.2 was trained on captions carrying
the clip's scores (docs/report_03.md, "Easy and effective model conditioning") and its sampler appends the
same phrases to prompts (``opensora/utils/inference_utils.py`` ``append_score_to_prompts``). We write them
with that function's format (:func:`opensora_core.text.prompts.append_scores`: ``" aesthetic score: 6.5."``,
``" motion score: 4.0."``, ``" camera motion: pan left."``) so a caption trained on and a prompt sampled with
read the same. (The official data tool ``tools/datasets/datautil.py`` wrote ``" [aesthetic score: 5.5, motion
score: 10.0]"`` and ``" Camera motion: pan left."``; its training also dropped each score with probability 0.2,
which the trainer's ``score_dropout`` does per epoch.) Only the seven official camera labels are written.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from opensora_core.text.prompts import CAMERA_MOTIONS, append_scores

from .clips import ClipSpec, points_to_indices
from .frames import Frames

CAPTION_POINTS = (0.1, 0.5, 0.9)
CAPTION_PROMPT = (
    "These are three frames of one video, in time order. Describe the video as a whole in at most five "
    "sentences: the main subjects and what they do, the setting, the camera movement and the visual style. "
    "Do not mention the frames."
)
MAX_NEW_TOKENS = 160
# score phrase -> the CSV column it reads
PHRASE_COLUMNS = {"aesthetic": "aes", "motion": "flow", "camera": "cmotion"}


def captioned(text: str, values: dict[str, Any], phrases: tuple[str, ...]) -> str:
    """``text`` with the score phrases of ``phrases`` (keys of PHRASE_COLUMNS) appended, official format."""
    camera = values.get("cmotion") if "camera" in phrases else None
    return append_scores(
        text,
        aesthetic=values.get("aes") if "aesthetic" in phrases else None,
        motion=values.get("flow") if "motion" in phrases else None,
        camera_motion=camera if camera in CAMERA_MOTIONS else None,
    )


def clean_caption(text: str) -> str:
    return " ".join(str(text).split())


class CaptionStage:
    name = "caption"
    columns = ("text",)

    def __init__(self, spec: str, *, prompt: str = CAPTION_PROMPT, device: str = "cpu") -> None:
        self.spec, self.prompt = spec, prompt
        self.captioner = load_captioner(spec, prompt, device)

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "captioner": self.spec, "prompt": self.prompt,
                           "points": CAPTION_POINTS})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else points_to_indices(CAPTION_POINTS, clip.num_frames)

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        text = clean_caption(self.captioner([frames[i] for i in sorted(frames)], clip))
        return {"text": text or None}


def load_captioner(spec: str, prompt: str, device: str) -> Callable[[list[np.ndarray], ClipSpec], str]:
    """``module:function`` -> that function; a folder -> :class:`TransformersCaptioner`."""
    if Path(spec).is_dir():
        return TransformersCaptioner(Path(spec), prompt, device)
    module, sep, function = spec.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"--captioner {spec!r}: give a folder with a vision-language model (transformers layout) "
                         "or package.module:function")
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--captioner {spec!r}: cannot load {function} from {module} ({err})") from None
    if not callable(found):
        raise ValueError(f"--captioner {spec!r}: {function} is not callable")
    return found


class TransformersCaptioner:
    """A chat vision-language model from a local folder; the frames go in as images before the prompt."""

    def __init__(self, folder: Path, prompt: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--captioner: {folder} has no config.json (a transformers model folder)")
        self.prompt, self.device = prompt, torch.device(device)
        self.processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True)
        self.model.to(self.device).eval()
        self.lock = threading.Lock()

    def __call__(self, frames: list[np.ndarray], clip: ClipSpec) -> str:
        import torch
        from PIL import Image

        messages = [{"role": "user", "content": [{"type": "image"} for _ in frames] + [
            {"type": "text", "text": self.prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[Image.fromarray(f) for f in frames], return_tensors="pt")
        inputs = inputs.to(self.device)
        with self.lock, torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new_tokens, skip_special_tokens=True)


__all__ = ["CAPTION_PROMPT", "CaptionStage", "PHRASE_COLUMNS", "TransformersCaptioner", "captioned", "clean_caption",
           "load_captioner"]
