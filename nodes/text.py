"""Text encode node: our T5, or ComfyUI's CLIP (CLIPLoader type sd3 / pixart), to an Open-Sora caption."""

from __future__ import annotations

import logging

import torch

from ..opensora_core.families import Family, by_release
from ..opensora_core.text.caption import Caption, pad_caption, truncate_tokens
from ..opensora_core.text.prompts import AESTHETIC_SCORE_V1_2, loop_segments, prepare_prompt
from ..opensora_core.text.t5 import T5TextEncoder
from . import comfy_bridge as bridge
from . import widgets as w
from .comfy_bridge import io
from .types import CaptionSocket, ModelHandle, ModelSocket, PromptCaptions, T5Handle, T5Socket

log = logging.getLogger("opensora")


# ---------------------------------------------------------------------------
# ComfyUI's T5 (a CLIP object) as a text encoder
# ---------------------------------------------------------------------------


class ComfyClipT5:
    """The core's TextEncoder over the T5-XXL inside a ComfyUI ``CLIP``.

    Gives the same caption as Open-Sora's T5 (tokens padded to L with a mask): prompt weighting
    off (``(word:1.2)`` is plain text), no padding (the ``sd3`` type pads to 77 and attends to the
    pads unless ``t5xxl_min_length`` is 1), and the tokens cut to L - 1 + EOS *before* encoding
    (ComfyUI does not truncate; T5 attends both ways, so cutting afterwards would differ).
    Other encoders in the CLIP (CLIP-L/G of a full SD3 set) get no tokens.
    """

    TOKEN_KEY = "t5xxl"

    def __init__(self, clip, max_length: int):
        self.clip = clip
        self.max_length = max_length

    def encode(self, texts: list[str]) -> Caption:
        captions = [self._encode_one(t) for t in texts]
        return Caption(torch.cat([c.y for c in captions]), torch.cat([c.mask for c in captions]))

    def _encode_one(self, text: str) -> Caption:
        tokens = self.clip.tokenize(text, disable_weights=True, tokenizer_options={f"{self.TOKEN_KEY}_min_length": 1})
        if self.TOKEN_KEY not in tokens:
            raise ValueError(
                f"clip: this CLIP has no T5-XXL (it tokenises for {', '.join(tokens)}); load t5xxl_fp16.safetensors "
                "with ComfyUI's 'Load CLIP' node, type sd3 or pixart"
            )
        if len(tokens[self.TOKEN_KEY]) != 1:
            raise ValueError(
                f"clip: this CLIP's tokenizer splits the prompt into {len(tokens[self.TOKEN_KEY])} chunks; "
                "load the T5 with 'Load CLIP', type sd3 or pixart"
            )
        t5 = tokens[self.TOKEN_KEY][0]  # (id, weight) pairs, EOS last, no padding
        t5 = truncate_tokens(t5, self.max_length, t5[-1])
        only_t5 = {key: ([t5] if key == self.TOKEN_KEY else []) for key in tokens}
        out = self.clip.encode_from_tokens(only_t5, return_dict=True)
        cond, mask = out["cond"], out.get("attention_mask")
        if mask is None and cond.shape[1] != len(t5):
            raise ValueError(
                f"clip: the encoder returned {cond.shape[1]} rows for {len(t5)} T5 tokens; load the T5 alone "
                "with 'Load CLIP' (type sd3 or pixart), not together with CLIP-L/G"
            )
        return pad_caption(cond.float(), self.max_length, mask)


# ---------------------------------------------------------------------------
# Encoding a prompt per loop segment
# ---------------------------------------------------------------------------


def encode_prompt(encoder, prompt: str, family: Family, scores: dict, clean: bool) -> PromptCaptions:
    """Prepare (score phrases where the family takes them, official cleaning) and encode each loop segment."""
    if not family.score_phrases:
        if any(v is not None for v in scores.values()):
            log.info("score phrases are not a %s feature; not added", family.title)
        scores = {}
    segments, texts = [], []
    for start, segment in loop_segments(prompt):
        if not segment.strip():
            log.warning("text: the prompt%s is empty; the video follows no text",
                        f" for loop rounds from {start}" if start else "")
        text = prepare_prompt(segment, **scores, clean=clean)
        caption = encoder.encode([text])
        segments.append((start, Caption(caption.y.float().cpu(), caption.mask.cpu())))
        texts.append(text)
    return PromptCaptions(prompt, segments, texts, family.release)


def _scores(aesthetic_score: float, motion_score: float, camera_motion: str) -> dict:
    return {
        "aesthetic": aesthetic_score if aesthetic_score >= 0 else None,
        "motion": motion_score if motion_score >= 0 else None,
        "camera_motion": None if camera_motion == "none" else camera_motion,
    }


def _release_and_length(caption_length_label: str, model: ModelHandle | None) -> tuple[Family, int]:
    release = w.CAPTION_LENGTHS[caption_length_label]
    if model is not None:
        length, _ = model.module.caption_shape
        if release is not None and by_release(release).caption_length != length:
            raise ValueError(
                f"caption_length is {caption_length_label!r} but the connected {model.describe()} takes {length} "
                "tokens; set caption_length to 'from model'"
            )
        return model.family, length
    if release is None:
        raise ValueError("caption_length 'from model' needs the model input connected; connect the model "
                         "(Open-Sora Model Loader) or pick the model's version in caption_length")
    family = by_release(release)
    return family, family.caption_length


class OpenSoraTextEncode(io.ComfyNode):
    """Encodes a prompt for Open-Sora with our T5 (t5 input) or ComfyUI's T5 (clip input from
    'Load CLIP', type sd3 or pixart). '|0|text|2|text' gives per-loop prompts for extension loops.
    v1.2 prompts get the score phrases the model was trained with; captions are cleaned like the
    official code."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OpenSoraTextEncode", display_name="Open-Sora Text Encode", category=f"{w.CATEGORY}/conditioning",
            description=cls.__doc__,
            inputs=[
                w.text("text", w.DEFAULT_PROMPT, "The prompt. '|0|first text|2|other text' switches the prompt at "
                       "loop round 2 (extension loops).", multiline=True),
                w.choice("caption_length", list(w.CAPTION_LENGTHS), "from model",
                         "T5 tokens the model takes: 'from model' reads it from the connected model."),
                w.number("aesthetic_score", AESTHETIC_SCORE_V1_2, -1.0, 10.0, "v1.2: appends ' aesthetic score: X.' "
                         f"(official {AESTHETIC_SCORE_V1_2}); -1 = off. Ignored for v1.0/v1.1.", step=0.1),
                w.number("motion_score", -1.0, -1.0, 100.0, "v1.2: appends ' motion score: X.' (more motion when "
                         "higher, e.g. 5); -1 = off. Ignored for v1.0/v1.1.", step=0.5),
                w.choice("camera_motion", w.CAMERA_MOTIONS, "none", "v1.2: appends ' camera motion: ...'."),
                w.boolean("clean_caption", True, "Clean the text like the official code (lower case, URLs, "
                          "HTML, symbols removed)."),
                T5Socket.Input("t5", optional=True, tooltip="Our T5 (Open-Sora T5 Loader)."),
                io.Clip.Input("clip", optional=True, tooltip="ComfyUI's T5-XXL from 'Load CLIP' (type sd3 or pixart), "
                              "used when no t5 is connected."),
                ModelSocket.Input("model", optional=True,
                                  tooltip="The diffusion model: gives the caption length and version."),
            ],
            outputs=[CaptionSocket.Output(display_name="caption")],
        )

    @classmethod
    def execute(cls, text, caption_length, aesthetic_score, motion_score, camera_motion, clean_caption,
                t5: T5Handle | None = None, clip=None, model: ModelHandle | None = None) -> io.NodeOutput:
        family, length = _release_and_length(caption_length, model)
        scores = _scores(aesthetic_score, motion_score, camera_motion)
        if t5 is not None:
            encoder = T5TextEncoder(t5.encoder.model, t5.encoder.tokenizer, max_length=length)
            with bridge.ComfyPlacement([t5.managed]).use(t5.encoder.model):
                result = encode_prompt(encoder, text, family, scores, clean_caption)
        elif clip is not None:
            result = encode_prompt(ComfyClipT5(clip, length), text, family, scores, clean_caption)
        else:
            raise ValueError("connect a text encoder: t5 (Open-Sora T5 Loader) or clip (Load CLIP, type sd3/pixart)")
        log.info("caption (%s, %d tokens max): %s", family.release, length, " | ".join(result.texts))
        return io.NodeOutput(result)
