"""Open-Sora 2.0 text conditioning: T5-v1.1-XXL states + the pooled CLIP-L vector.

Follows ``HFEmbedder`` (opensora/models/text/conditioner.py) and ``prepare`` / ``I2VDenoiser.prepare_guidance``
(opensora/utils/sampling.py) of the 2.0 code:

* T5: prompts padded to exactly 512 tokens (truncated longer ones) and encoded WITHOUT an attention mask, so
  every padding token takes part and the states depend on the padding length: ``txt`` [B, 512, 4096];
* CLIP-L: 77 tokens, no mask, ``pooler_output`` [B, 768] -> ``y_vec``;
* both run in the model dtype (bf16 in the release) and their outputs are cast to it;
* the negative prompt is "" (no suffix); prompts get the FPS and motion-score suffixes first
  (:func:`opensora_core.text.prompts_v2.prepare_prompt`).

Typical use::

    encoders = load_text_encoders_v2("t5xxl_fp16.safetensors", "clip_l.safetensors",
                                     t5_tokenizer="t5_tokenizer/", clip_tokenizer="sd1_tokenizer/")
    text = encoders.encode_for_sampling(["a cat"])  # TextV2 for opensora_core.sampling.v2.sample_v2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .clip import CLIPTextEncoder, load_clip_encoder
from .prompts_v2 import DEFAULT_FPS, DEFAULT_MOTION_SCORE, prepare_prompt
from .t5 import T5_V2_0, T5TextEncoder, load_t5_encoder

NEGATIVE_PROMPT = ""


class _T5Shape:
    """``batch_size``, ``max_length`` and ``channels`` of the T5 states ``txt`` [B, L, C]."""

    txt: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.txt.shape[0]

    @property
    def max_length(self) -> int:
        return self.txt.shape[1]

    @property
    def channels(self) -> int:
        return self.txt.shape[2]


@dataclass
class CaptionV2(_T5Shape):
    """Encoded prompts as the MMDiT takes them: T5 states ``txt`` [B, L, 4096] (no mask: every token, padding
    included, takes part) and the pooled CLIP vector ``y_vec`` [B, 768]. What :meth:`TextEncoderV2.encode`
    gives the generation pipeline; a prompt's caption and its negative's together make a :class:`TextV2`."""

    txt: torch.Tensor
    y_vec: torch.Tensor

    def __post_init__(self) -> None:
        if self.txt.ndim != 3 or self.y_vec.ndim != 2 or self.txt.shape[0] != self.y_vec.shape[0]:
            raise ValueError(f"CaptionV2 needs txt [B, L, C] and y_vec [B, C'] of one batch, got "
                             f"{tuple(self.txt.shape)} and {tuple(self.y_vec.shape)}")

    def guidance_inputs(self, negative: CaptionV2 | None, model, device) -> tuple[TextV2, None, None]:
        """The text arguments of the three-pass denoiser (``Sampler.denoiser``): this caption and its
        ``negative`` as one :class:`TextV2` (moved to ``device``), no null caption, no mask."""
        if not isinstance(negative, CaptionV2):
            raise ValueError("Open-Sora 2.0 guides against an encoded negative prompt (official: the empty prompt "
                             "''), not a learned null caption: encode one with the same text encoders")
        return TextV2(self.txt.to(device), self.y_vec.to(device), negative.txt.to(device),
                      negative.y_vec.to(device)), None, None


@dataclass
class TextV2(_T5Shape):
    """Encoded prompts and negative prompts, B rows each (a 1-row negative is repeated).

    txt / neg_txt: [B, L, 4096] T5 states (512 tokens, no attention mask); y_vec / neg_y_vec: [B, 768] pooled
    CLIP (:class:`opensora_core.text.v2.TextEncoderV2` gives them; the official negative prompt is "").
    """

    txt: torch.Tensor
    y_vec: torch.Tensor
    neg_txt: torch.Tensor
    neg_y_vec: torch.Tensor

    def guidance_inputs(self, negative: object, model, device) -> tuple[TextV2, None, None]:
        """The denoiser's text arguments: this text already carries its negative prompt (moved to ``device``)."""
        if negative is not None:
            raise ValueError("this Open-Sora 2.0 caption already carries its negative prompt; do not give another")
        return TextV2(*(t.to(device) for t in (self.txt, self.y_vec, self.neg_txt, self.neg_y_vec))), None, None

    def rows(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(txt, y_vec, neg_txt, neg_y_vec) with ``batch`` rows each."""
        out = []
        for name in ("txt", "y_vec", "neg_txt", "neg_y_vec"):
            value = getattr(self, name)
            if value.shape[0] == 1 and batch > 1 and name.startswith("neg"):
                value = value.expand(batch, *value.shape[1:])
            if value.shape[0] != batch:
                raise ValueError(f"{name} has {value.shape[0]} rows for a latent batch of {batch}")
            out.append(value)
        if out[0].shape[1:] != out[2].shape[1:]:
            raise ValueError(f"txt {tuple(out[0].shape)} and neg_txt {tuple(out[2].shape)} differ in tokens/channels")
        return tuple(out)


@dataclass
class TextEncoderV2:
    """T5 (its ``max_length`` tokens, 512 for the release) and CLIP (pooled) as Open-Sora 2.0 calls them; the
    generation pipeline's text encoder (``encode`` gives a :class:`CaptionV2`). ``model`` holds both networks,
    for whoever places them on a device."""

    t5: T5TextEncoder
    clip: CLIPTextEncoder
    model: nn.ModuleList = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = nn.ModuleList([self.t5.model, self.clip.model])

    @property
    def max_length(self) -> int:
        return self.t5.max_length

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], dtype: torch.dtype | None = None) -> CaptionV2:
        """T5 states txt [B, L, 4096] and pooled CLIP y_vec [B, 768] for the texts as given (no suffixes added),
        in ``dtype`` (default: the T5 dtype), on the T5's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        txt = self.t5.encode_unmasked(texts)
        y_vec = self.clip.encode_pooled(texts)
        dtype = dtype or txt.dtype
        return CaptionV2(txt.to(dtype), y_vec.to(device=txt.device, dtype=dtype))

    def encode_for_sampling(self, prompts: Sequence[str], negative: str | Sequence[str] = NEGATIVE_PROMPT, *,
                            fps: int = DEFAULT_FPS, motion_score: int | str | None = DEFAULT_MOTION_SCORE,
                            dtype: torch.dtype | None = None) -> TextV2:
        """Prompts with the official suffixes and the negative prompt(s) (one for all, or one per prompt),
        encoded in one batch: the :class:`TextV2` the sampler takes."""
        prompts = [prepare_prompt(p, fps, motion_score) for p in prompts]
        negatives = [negative] if isinstance(negative, str) else list(negative)
        if len(negatives) not in (1, len(prompts)):
            raise ValueError(f"give one negative prompt or one per prompt ({len(prompts)}), got {len(negatives)}")
        caption = self.encode(prompts + negatives, dtype)
        txt, y_vec, B = caption.txt, caption.y_vec, len(prompts)
        return TextV2(txt=txt[:B], y_vec=y_vec[:B], neg_txt=txt[B:], neg_y_vec=y_vec[B:])


def load_text_encoders_v2(
    t5_path: str | Path,
    clip_path: str | Path,
    *,
    t5_tokenizer: str | Path | None = None,
    clip_tokenizer: str | Path | None = None,
    max_length: int = T5_V2_0.max_length,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> TextEncoderV2:
    """Load T5 (HF folder or ``t5xxl_*.safetensors``) and CLIP-L (HF folder or ``clip_l.safetensors``);
    single files need their tokenizer folders (ComfyUI: comfy/text_encoders/t5_tokenizer, comfy/sd1_tokenizer)."""
    t5 = load_t5_encoder(t5_path, t5_tokenizer, max_length=max_length, dtype=dtype, device=device)
    clip = load_clip_encoder(clip_path, clip_tokenizer, dtype=dtype, device=device)
    return TextEncoderV2(t5, clip)


__all__ = ["CaptionV2", "NEGATIVE_PROMPT", "TextEncoderV2", "TextV2", "load_text_encoders_v2"]
