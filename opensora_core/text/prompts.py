"""Prompt syntax of the Open-Sora inference script, as plain functions.

Three things can ride on a prompt string (opensora/utils/inference_utils.py, v1.2):

* score suffixes: ``" aesthetic score: 6.5."``, ``" motion score: 4.0."`` and
  ``" camera motion: pan left."`` are appended before cleaning (v1.2 was trained
  with these phrases in its captions);
* a trailing JSON object, ``a dog{"reference_path": "a.png", "mask_strategy": "0"}``,
  that sets the sample's references and mask strategy;
* per-loop texts for the loop (extension) mode: ``|0|a sunny day|2|a rainy night``
  means rounds 0 and 1 use the first text and rounds 2, 3, ... the second.

The official order is: JSON extraction, loop split, scores, cleaning
(:func:`opensora_core.text.cleaning.text_preprocessing`) of each loop text, merge,
then per round :func:`loop_prompt_text`. :func:`prepare_prompt` does the
score + cleaning part for one text.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .cleaning import text_preprocessing

log = logging.getLogger("opensora")

# ---------------------------------------------------------------------------
# Score suffixes
# ---------------------------------------------------------------------------

AESTHETIC_SCORE_V1_2 = 6.5  # `aes` of configs/opensora-v1-2/inference/sample.py

# The camera-motion phrases v1.2 captions carry (tools/datasets/datautil.py CMOTION_TEXT; the Gradio app's choices)
CAMERA_MOTIONS = ("pan right", "pan left", "tilt up", "tilt down", "zoom in", "zoom out", "static")

# the phrases v1.2 prompts are conditioned on; each is followed by its value (official format strings)
AESTHETIC_PHRASE = "aesthetic score:"
MOTION_PHRASE = "motion score:"
CAMERA_PHRASE = "camera motion:"
SCORE_PHRASES = (AESTHETIC_PHRASE, MOTION_PHRASE, CAMERA_PHRASE)


def append_scores(
    prompt: str,
    aesthetic: float | None = None,
    motion: float | None = None,
    camera_motion: str | None = None,
) -> str:
    """Append the score phrases a v1.2 prompt is conditioned on (``append_score_to_prompts``).

    Each phrase is added only when given and not already written in the prompt;
    numbers are printed with one decimal (``6.5`` -> ``" aesthetic score: 6.5."``).
    """
    if aesthetic is not None and AESTHETIC_PHRASE not in prompt:
        prompt = f"{prompt} {AESTHETIC_PHRASE} {aesthetic:.1f}."
    if motion is not None and MOTION_PHRASE not in prompt:
        prompt = f"{prompt} {MOTION_PHRASE} {motion:.1f}."
    if camera_motion is not None and CAMERA_PHRASE not in prompt:
        prompt = f"{prompt} {CAMERA_PHRASE} {camera_motion}."
    return prompt


def apply_template(prompt: str, template: str | None) -> str:
    """``template.format(prompt)`` (one ``{}`` for the prompt; Open-Sora-Plan's sample scripts), or the prompt
    unchanged for None."""
    if template is None:
        return prompt
    if template.count("{}") != 1:
        raise ValueError(f"the prompt template must contain exactly one '{{}}' for the prompt, got {template!r}")
    return template.format(prompt)


def prepare_prompt(
    prompt: str,
    aesthetic: float | None = None,
    motion: float | None = None,
    camera_motion: str | None = None,
    clean: bool = True,
) -> str:
    """The text T5 tokenises for one (loop segment of a) prompt in Open-Sora v1.x: scores appended, then cleaned
    twice (or lower-cased only without ``clean``). A family's prompt template is applied after this
    (:func:`apply_template`)."""
    return text_preprocessing(append_scores(prompt, aesthetic, motion, camera_motion), clean=clean)


# ---------------------------------------------------------------------------
# JSON options appended to a prompt
# ---------------------------------------------------------------------------

PROMPT_JSON_KEYS = ("reference_path", "mask_strategy")


@dataclass(frozen=True)
class PromptOptions:
    """A prompt split into its text and the options of its trailing JSON (None = not given)."""

    text: str
    reference_path: str | None = None  # ";"-separated image/video paths
    mask_strategy: str | None = None  # "loop,ref,ref_start,target_start,length[,edit];..."


def parse_prompt_options(prompt: str, version: str = "v1.2") -> PromptOptions:
    """Split ``text{"reference_path": ..., "mask_strategy": ...}`` as the official inference scripts do.

    v1.2 (``extract_json_from_prompts``) splits before a ``{``; v1.1 (scripts/inference-long.py) before a
    ``{`` or a ``[``, and reads options only from an object (a trailing array is parsed, cut from the text
    and not used). In both the prompt may hold one such character, everything from it on must be one
    JSON value, and the text keeps everything before it, unstripped. Keys other than
    :data:`PROMPT_JSON_KEYS` are refused (v1.2 asserts; v1.1 would ignore a misspelt key).
    """
    if version not in ("v1.1", "v1.2"):
        raise ValueError(f"unknown prompt syntax version {version!r}; use 'v1.1' or 'v1.2'")
    marks = "{[" if version == "v1.1" else "{"
    starts = [i for i, char in enumerate(prompt) if char in marks]
    if not starts:
        return PromptOptions(prompt)
    if len(starts) > 1:
        raise ValueError(
            f"prompt {prompt!r}: only one JSON value, without nested {' or '.join(marks)}, may follow the text"
        )
    start = starts[0]
    try:
        options = json.loads(prompt[start:])
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt {prompt!r}: the part from {prompt[start]!r} on is not valid JSON ({err})") from None
    if isinstance(options, list):  # v1.1 only: parsed, cut from the text, unused
        log.warning("prompt %r: the trailing JSON array is cut from the text and not used (options need an object)",
                    prompt)
        return PromptOptions(prompt[:start])
    unknown = sorted(set(options) - set(PROMPT_JSON_KEYS))
    if unknown:
        raise ValueError(f"prompt {prompt!r}: unknown JSON keys {unknown}; allowed: {', '.join(PROMPT_JSON_KEYS)}")
    for key, value in options.items():
        if not isinstance(value, str):
            raise ValueError(f"prompt {prompt!r}: {key} must be a string, got {value!r}")
    return PromptOptions(prompt[:start], options.get("reference_path"), options.get("mask_strategy"))


def split_prompt_options(
    prompts: list[str],
    reference_paths: list[str] | None = None,
    mask_strategies: list[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Batch form: (texts, reference_paths, mask_strategies), JSON values overriding the given lists.

    The lists default to ``""`` per prompt, as the inference script's config does.
    """
    refs = list(reference_paths) if reference_paths is not None else [""] * len(prompts)
    masks = list(mask_strategies) if mask_strategies is not None else [""] * len(prompts)
    if len(refs) != len(prompts) or len(masks) != len(prompts):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(refs)} reference paths and {len(masks)} mask strategies"
        )
    texts = []
    for i, prompt in enumerate(prompts):
        options = parse_prompt_options(prompt)
        texts.append(options.text)
        if options.reference_path is not None:
            refs[i] = options.reference_path
        if options.mask_strategy is not None:
            masks[i] = options.mask_strategy
    return texts, refs, masks


# ---------------------------------------------------------------------------
# Per-loop prompts "|0|text|2|text2"
# ---------------------------------------------------------------------------

_LOOP_MARK = "|0|"


def is_loop_prompt(prompt: str) -> bool:
    return prompt.startswith(_LOOP_MARK)


def _loop_segments(prompt: str) -> list[tuple[int, str]]:
    """(first round, raw text) pairs of a ``|0|...`` prompt; starts must increase."""
    fields = prompt.split("|")[1:]
    if len(fields) % 2:
        raise ValueError(f"loop prompt {prompt!r}: expected |round|text pairs, got an odd number of fields")
    segments = []
    for i in range(0, len(fields), 2):
        try:
            start = int(fields[i])
        except ValueError:
            raise ValueError(
                f"loop prompt {prompt!r}: {fields[i]!r} is not a round number (a text may not contain '|')"
            ) from None
        if segments and start <= segments[-1][0]:
            raise ValueError(
                f"loop prompt {prompt!r}: round numbers must increase, got {start} after {segments[-1][0]}"
            )
        segments.append((start, fields[i + 1]))
    return segments


def split_loop_prompt(prompt: str) -> tuple[list[str], list[int] | None]:
    """``"|0|a|2|b"`` -> (["a", "b"], [0, 2]) with texts stripped; a plain prompt -> ([prompt], None)."""
    if not is_loop_prompt(prompt):
        return [prompt], None
    segments = _loop_segments(prompt)
    return [text.strip() for _, text in segments], [start for start, _ in segments]


def merge_loop_prompt(texts: list[str], starts: list[int] | None = None) -> str:
    """Inverse of :func:`split_loop_prompt`: (["a", "b"], [0, 2]) -> ``"|0|a|2|b"``."""
    if starts is None:
        if len(texts) != 1:
            raise ValueError(f"{len(texts)} texts need their loop round numbers")
        return texts[0]
    if len(texts) != len(starts):
        raise ValueError(f"{len(texts)} texts but {len(starts)} loop round numbers")
    return "".join(f"|{start}|{text}" for start, text in zip(starts, texts))


def loop_segments(prompt: str) -> list[tuple[int, str]]:
    """(first round, text as written) of each loop segment; a plain prompt is one segment from round 0.

    ``loop_prompt_text(prompt, i)`` is the text of the last segment whose first round is <= i.
    """
    if not is_loop_prompt(prompt):
        return [(0, prompt)]
    return _loop_segments(prompt)


def loop_prompt_text(prompt: str, loop_index: int) -> str:
    """Text for loop round ``loop_index``: the last segment starting at or before it (``extract_prompts_loop``).

    The text is returned as written (not stripped); a plain prompt is used for every round.
    """
    if not is_loop_prompt(prompt):
        return prompt
    if loop_index < 0:
        raise ValueError(f"loop_index must be >= 0, got {loop_index}")
    return [text for start, text in _loop_segments(prompt) if start <= loop_index][-1]


__all__ = [
    "AESTHETIC_PHRASE",
    "AESTHETIC_SCORE_V1_2",
    "CAMERA_MOTIONS",
    "CAMERA_PHRASE",
    "MOTION_PHRASE",
    "PROMPT_JSON_KEYS",
    "PromptOptions",
    "SCORE_PHRASES",
    "append_scores",
    "apply_template",
    "is_loop_prompt",
    "loop_prompt_text",
    "loop_segments",
    "merge_loop_prompt",
    "parse_prompt_options",
    "prepare_prompt",
    "split_loop_prompt",
    "split_prompt_options",
]
