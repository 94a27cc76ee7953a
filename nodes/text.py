"""Text encode node: our T5, or ComfyUI's CLIP (CLIPLoader type sd3 / pixart), to an Open-Sora caption."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..opensora_core.families import Family, PromptSettings, by_name
from ..opensora_core.text.caption import Caption, pad_caption, truncate_tokens
from ..opensora_core.text.prompts import AESTHETIC_SCORE_V1_2, apply_template, loop_segments
from ..opensora_core.text.t5 import T5TextEncoder
from ..opensora_core.text.v2 import TextEncoderV2
from . import comfy_bridge as bridge
from . import widgets as w
from .comfy_bridge import io
from .native_mmdit import NEGATIVE_KEY
from .types import (
    CaptionSocket,
    ClipHandle,
    ClipSocket,
    ModelHandle,
    ModelSocket,
    PromptCaptions,
    T5Handle,
    T5Socket,
)

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
    """Prepare each loop segment as the family does (``Family.prepare_prompt``: v1.2 score phrases and the
    official cleaning, 2.0 frame rate and motion score; then ``Defaults.prompt_template``, Open-Sora-Plan's) and
    encode it. A family with a template also gets each segment without it (for use as a negative prompt), and
    one with a default negative prompt gets that encoded (the Sampler's negative when none is connected)."""
    settings = _prompt_settings(family, scores, clean)
    template = family.defaults.prompt_template
    segments, plain, texts = [], [], []
    for start, segment in loop_segments(prompt):
        if not segment.strip():
            log.warning("text: the prompt%s is empty; the video follows no text",
                        f" for loop rounds from {start}" if start else "")
        prepared = family.prepare_prompt(segment, settings)
        text = apply_template(prepared, template)
        segments.append((start, _on_cpu(encoder.encode([text]))))
        texts.append(text)
        if template is not None:
            plain.append((start, _on_cpu(encoder.encode([prepared]))))
    negative = family.defaults.negative_prompt
    default_negative = None if negative is None else _on_cpu(encoder.encode([negative]))
    return PromptCaptions(prompt, segments, texts, family.release, plain=plain or None,
                          default_negative=default_negative)


def _prompt_settings(family: Family, scores: dict, clean: bool) -> PromptSettings:
    """The widgets' scores as the family takes them (``Family.takes_phrase``: score phrases only where it was
    trained with them, v1.2; a motion score also where the family has a default one, 2.0: -1 on the widget
    gives that default); others are dropped with a note."""
    names = {"aesthetic": "aesthetic_score", "motion": "motion_score", "camera_motion": "camera_motion"}
    dropped = [k for k, v in scores.items() if v is not None and not family.takes_phrase(names[k])]
    if dropped:
        log.info("%s are not a %s feature; not added", ", ".join(dropped), family.title)
    taken = {names[k]: v for k, v in scores.items() if family.takes_phrase(names[k])}
    if family.takes_phrase("motion_score") and taken["motion_score"] is None:
        taken["motion_score"] = family.defaults.motion_score
    return PromptSettings(fps=family.defaults.fps, clean=clean, aesthetic_score=taken.get("aesthetic_score"),
                          motion_score=taken.get("motion_score"), camera_motion=taken.get("camera_motion"))


def _on_cpu(caption):
    """A caption (``Caption`` or ``CaptionV2``) with its float tensors in float32, all on the CPU."""
    return dataclasses.replace(caption, **{
        f.name: (v.float() if v.is_floating_point() else v).cpu()
        for f in dataclasses.fields(caption) if isinstance(v := getattr(caption, f.name), torch.Tensor)
    })


def conditioning_of(captions: PromptCaptions) -> list:
    """ComfyUI CONDITIONING of the first round's caption: T5 features (1, L, C) padded to the caption length
    with the token mask as ``attention_mask`` (1, L), as LTXV/Mochi encoders give them (2.0: T5 states and
    ``pooled_output``, plus the encoded default negative that Open-Sora Null Conditioning hands on)."""
    caption = captions.for_round(0)
    if len(captions.segments) > 1:
        log.info("conditioning: the prompt switches at loop rounds; the CONDITIONING holds round 0's text")
    if hasattr(caption, "y_vec"):  # Open-Sora 2.0: T5 states and the pooled CLIP-L vector, as Flux encoders give
        extras = {"pooled_output": caption.y_vec}
        if captions.default_negative is not None:
            extras[NEGATIVE_KEY] = (captions.default_negative.txt, captions.default_negative.y_vec)
        return [[caption.txt, extras]]
    return [[caption.y[:, 0], {"attention_mask": caption.mask}]]


def _scores(aesthetic_score: float, motion_score: float, camera_motion: str) -> dict:
    return {
        "aesthetic": aesthetic_score if aesthetic_score >= 0 else None,
        "motion": motion_score if motion_score >= 0 else None,
        "camera_motion": None if camera_motion == "none" else camera_motion,
    }


def _encoder(family: Family, length: int, t5: T5Handle | None, clip, clip_l: ClipHandle | None):
    """The text encoder the family declares: T5 (ours or ComfyUI's), or T5 + CLIP-L (Open-Sora 2.0), and the
    managed modules to place while it runs."""
    if len(family.text) == 2:
        if t5 is None or clip_l is None:
            raise ValueError(f"{family.title} encodes with T5 and CLIP-L: connect t5 (Open-Sora T5 Loader) and "
                             "clip_l (Open-Sora CLIP Loader); ComfyUI's CLIP is not used for it")
        encoder = TextEncoderV2(T5TextEncoder(t5.encoder.model, t5.encoder.tokenizer, max_length=length), clip_l.encoder)
        return encoder, [t5.managed, clip_l.managed], encoder.model
    if t5 is not None:
        encoder = T5TextEncoder(t5.encoder.model, t5.encoder.tokenizer, max_length=length)
        return encoder, [t5.managed], t5.encoder.model
    if clip is not None:
        return ComfyClipT5(clip, length), [], None
    raise ValueError("connect a text encoder: t5 (Open-Sora T5 Loader) or clip (Load CLIP, type sd3/pixart)")


def _release_and_length(caption_length_label: str, model: ModelHandle | None) -> tuple[Family, int]:
    name = w.CAPTION_LENGTHS[caption_length_label]
    if model is not None:
        length = model.module.caption_shape[0] or model.family.caption_length  # None: any length (2.0: 512)
        if name is not None and by_name(name).caption_length != length:
            raise ValueError(
                f"caption_length is {caption_length_label!r} but the connected {model.describe()} takes {length} "
                "tokens; set caption_length to 'from model'"
            )
        return model.family, length
    if name is None:
        raise ValueError("caption_length 'from model' needs the model input connected; connect the model "
                         "(Open-Sora Model Loader) or pick the model's version in caption_length")
    family = by_name(name)
    return family, family.caption_length


class OpenSoraTextEncode(io.ComfyNode):
    """Encodes a prompt for Open-Sora with our T5 (t5 input) or ComfyUI's T5 (clip input from
    'Load CLIP', type sd3 or pixart), for Open-Sora-Plan with mT5 (t5 input); Open-Sora 2.0 takes our T5 and
    CLIP-L (t5 and clip_l inputs). '|0|text|2|text' gives per-loop prompts for extension loops. v1.2 prompts get
    the score phrases the model was trained with, cleaned like the official code; 2.0 prompts get ' 24 FPS.' and
    the motion score; Open-Sora-Plan prompts are wrapped in its release template. The family's default negative
    prompt (Open-Sora-Plan's release one, 2.0's empty one) is encoded too: the Sampler's negative unless one is
    connected."""

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
                         "higher, e.g. 5); -1 = off. 2.0: appends ' X motion score.' (-1 = the official 4). Ignored "
                         "for v1.0/v1.1.", step=0.5),
                w.choice("camera_motion", w.CAMERA_MOTIONS, "none", "v1.2: appends ' camera motion: ...'."),
                w.boolean("clean_caption", True, "Clean the text like the official code (lower case, URLs, "
                          "HTML, symbols removed)."),
                T5Socket.Input("t5", optional=True, tooltip="Our T5 (Open-Sora T5 Loader)."),
                io.Clip.Input("clip", optional=True, tooltip="ComfyUI's T5-XXL from 'Load CLIP' (type sd3 or pixart), "
                              "used when no t5 is connected."),
                ModelSocket.Input("model", optional=True,
                                  tooltip="The diffusion model: gives the caption length and version."),
                ClipSocket.Input("clip_l", optional=True, tooltip="Open-Sora 2.0: CLIP-L (Open-Sora CLIP Loader), "
                                 "with the T5 on t5."),
            ],
            outputs=[CaptionSocket.Output(display_name="caption", tooltip="For the Open-Sora Sampler."),
                     io.Conditioning.Output(display_name="conditioning", tooltip="For KSampler with the native MODEL "
                                            "(the first loop round's prompt; loops need the Open-Sora Sampler).")],
        )

    @classmethod
    def execute(cls, text, caption_length, aesthetic_score, motion_score, camera_motion, clean_caption,
                t5: T5Handle | None = None, clip=None, model: ModelHandle | None = None,
                clip_l: ClipHandle | None = None) -> io.NodeOutput:
        family, length = _release_and_length(caption_length, model)
        scores = _scores(aesthetic_score, motion_score, camera_motion)
        encoder, managed, module = _encoder(family, length, t5, clip, clip_l)
        if module is None:
            result = encode_prompt(encoder, text, family, scores, clean_caption)
        else:
            with bridge.ComfyPlacement(managed).use_all(module):
                result = encode_prompt(encoder, text, family, scores, clean_caption)
        log.info("caption (%s, %d tokens max): %s", family.short_label, length, " | ".join(result.texts))
        return io.NodeOutput(result, conditioning_of(result))
