"""Prompt syntax: score suffixes, trailing JSON options and per-loop prompts."""

from __future__ import annotations

import json
import re

import pytest

from opensora_core.text.prompts import (
    AESTHETIC_SCORE_V1_2,
    PromptOptions,
    append_scores,
    loop_prompt_text,
    merge_loop_prompt,
    parse_prompt_options,
    prepare_prompt,
    split_loop_prompt,
    split_prompt_options,
)

# -- score suffixes -----------------------------------------------------------


def test_aesthetic_score_suffix():
    assert append_scores("A cat.", AESTHETIC_SCORE_V1_2) == "A cat. aesthetic score: 6.5."


def test_all_suffixes_in_official_order_and_format():
    out = append_scores("A cat.", aesthetic=7, motion=4, camera_motion="pan left")
    assert out == "A cat. aesthetic score: 7.0. motion score: 4.0. camera motion: pan left."


def test_score_already_in_prompt_is_not_repeated():
    assert append_scores("A cat. aesthetic score: 5.0.", 6.5) == "A cat. aesthetic score: 5.0."


def test_no_scores_leaves_prompt_alone():
    assert append_scores("A cat.") == "A cat."


def test_prepare_prompt_scores_then_cleans():
    assert prepare_prompt("A Cat on http://x.com", 6.5) == "a cat on aesthetic score: 6.5."


# -- JSON options -------------------------------------------------------------


def test_json_options_split_from_text():
    options = parse_prompt_options('a dog{"reference_path": "a.png;b.mp4", "mask_strategy": "0"}')
    assert (options.text, options.reference_path, options.mask_strategy) == ("a dog", "a.png;b.mp4", "0")


def test_prompt_without_json():
    assert parse_prompt_options("a dog ") == PromptOptions("a dog ", None, None)


def _official_v1_1_split(prompt: str) -> tuple[str, object]:
    """scripts/inference-long.py (v1.1.0) extract_json_from_prompts, for one prompt."""
    parts = re.split(r"(?=[{\[])", prompt)
    assert len(parts) <= 2
    return parts[0], (json.loads(parts[1]) if len(parts) == 2 else {})


@pytest.mark.parametrize("prompt", [
    'a dog{"reference_path": "a.png", "mask_strategy": "0"}',
    "a dog [1, 2]",
    '["x"]',
    "a dog",
    'a dog{"mask_strategy": "0,0,0,0,1"} ',
])
def test_v1_1_splits_a_trailing_object_or_array_like_the_official_script(prompt):
    text, info = _official_v1_1_split(prompt)
    options = parse_prompt_options(prompt, version="v1.1")
    info = info if isinstance(info, dict) else {}  # an array gives no options
    assert (options.text, options.reference_path, options.mask_strategy) == (
        text, info.get("reference_path"), info.get("mask_strategy"))


def test_v1_2_keeps_brackets_in_the_text():
    """v1.2 splits only before '{' (opensora/utils/inference_utils.py): '[...]' stays in the prompt."""
    assert parse_prompt_options("a dog [1, 2]").text == "a dog [1, 2]"
    with pytest.raises(ValueError, match="only one JSON value"):
        parse_prompt_options('a dog{"reference_path": ["a"]}', version="v1.1")


def test_batch_options_override_defaults_only_where_given():
    texts, refs, masks = split_prompt_options(["a", 'b{"mask_strategy": "0"}'], ["x.png", "y.png"])
    assert (texts, refs, masks) == (["a", "b"], ["x.png", "y.png"], ["", "0"])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ('a{"seed": 1}', "unknown JSON keys"),
        ('a{"mask_strategy": 0}', "must be a string"),
        ("a{not json}", "not valid JSON"),
        ('a{"mask_strategy": "0"}{"reference_path": "x"}', "only one JSON value"),
    ],
)
def test_bad_json_options_are_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt_options(prompt)


# -- loop prompts -------------------------------------------------------------

LOOP = "|0|a sunny day|2| a rainy night |3|snow"


def test_split_loop_prompt_strips_texts():
    assert split_loop_prompt(LOOP) == (["a sunny day", "a rainy night", "snow"], [0, 2, 3])


def test_split_merge_round_trip():
    assert merge_loop_prompt(*split_loop_prompt("|0|a|2|b")) == "|0|a|2|b"
    assert merge_loop_prompt(*split_loop_prompt("plain")) == "plain"


@pytest.mark.parametrize(
    ("loop", "text"), [(0, "a sunny day"), (1, "a sunny day"), (2, " a rainy night "), (3, "snow"), (9, "snow")]
)
def test_loop_text_is_the_last_segment_started(loop, text):
    assert loop_prompt_text(LOOP, loop) == text


def test_plain_prompt_serves_every_loop():
    assert loop_prompt_text("a cat", 5) == "a cat"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("|0|a|2", "odd number"), ("|0|a|x|b", "not a round number"), ("|0|a|2|b|1|c", "must increase")],
)
def test_bad_loop_prompts_are_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        split_loop_prompt(prompt)


def test_loop_segments_give_each_segment_with_its_first_round():
    from opensora_core.text.prompts import loop_segments

    assert loop_segments("a cat") == [(0, "a cat")]
    segments = loop_segments("|0|a cat |2|a dog")
    assert segments == [(0, "a cat "), (2, "a dog")]
    assert all(loop_prompt_text("|0|a cat |2|a dog", start) == text for start, text in segments)
