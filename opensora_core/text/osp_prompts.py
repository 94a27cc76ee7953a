"""The prompt texts of the Open-Sora-Plan v1.3 sample scripts (opensora/utils/sample_utils.py @v1.3.1).

The release wraps every user prompt in :data:`OSP_V1_3_PROMPT_TEMPLATE` and guides against
:data:`OSP_V1_3_NEGATIVE_PROMPT`. Both strings keep the newlines and the four-space indentation of the
official triple-quoted literals: they reach the mT5 tokenizer as they are. Both are options: pass
``template=None`` / your own negative prompt to leave them out.
"""

from __future__ import annotations

from .prompts import apply_template

OSP_V1_3_PROMPT_TEMPLATE = "\n    high quality, high aesthetic, {}\n    "
OSP_V1_3_NEGATIVE_PROMPT = (
    "\n    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, \n    low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry.\n    "
)


def osp_v1_3_prompt(prompt: str, template: str | None = OSP_V1_3_PROMPT_TEMPLATE) -> str:
    """The text the v1.3 pipeline encodes for a user prompt: ``template.format(prompt)`` (None: unchanged)."""
    return apply_template(prompt, template)


__all__ = ["OSP_V1_3_NEGATIVE_PROMPT", "OSP_V1_3_PROMPT_TEMPLATE", "osp_v1_3_prompt"]
