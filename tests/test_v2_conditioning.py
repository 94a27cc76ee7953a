"""Open-Sora 2.0 condition masks, reference selection, sizes/frames and prompt suffixes."""

from __future__ import annotations

import pytest
import torch

from opensora_core.conditioning.v2 import (
    COND_TYPES,
    build_condition,
    conditioned_frames,
    reference_clips,
    uses_temporal_ramp,
)
from opensora_core.geometry.opensora_v2 import (
    ASPECT_RATIOS,
    aspect_ratio_sizes,
    check_num_frames,
    decoded_frames,
    latent_frames,
    latent_shape,
    resolution_pixels,
    sampling_size,
)
from opensora_core.text.prompts_v2 import add_fps_info, add_motion_score, prepare_prompt, training_caption

T = 12


def _tagged(frames: int, base: float = 100.0) -> torch.Tensor:
    return (base + torch.arange(frames, dtype=torch.float32))[None, :, None, None].expand(2, frames, 2, 2).clone()


def _mask_frames(cond_type: str, refs, frames: int = T) -> list[int]:
    condition = build_condition(torch.zeros(1, 2, frames, 2, 2), cond_type, refs)
    return [f for f in range(frames) if condition.masks[0, 0, f, 0, 0] == 1]


@pytest.mark.parametrize("cond_type", COND_TYPES)
def test_mask_marks_exactly_the_conditioned_frames(cond_type):
    item = [_tagged(1), _tagged(1, 200.0)] if cond_type == "i2v_loop" else [_tagged(T)]
    refs = None if cond_type == "t2v" else [item]
    assert _mask_frames(cond_type, refs) == conditioned_frames(cond_type, T)


def test_reference_content_lands_on_its_frames():
    condition = build_condition(torch.zeros(1, 2, T, 2, 2), "v2v_tail", [[_tagged(T)]])
    assert condition.masked_ref[0, 0, :, 0, 0].tolist() == [0.0] * 3 + [100.0 + f for f in range(3, T)]
    loop = build_condition(torch.zeros(1, 2, T, 2, 2), "i2v_loop", [[_tagged(1), _tagged(1, 200.0)]])
    assert loop.masked_ref[0, 0, [0, -1], 0, 0].tolist() == [100.0, 200.0]


def test_single_latent_frame_gets_no_condition():
    assert _mask_frames("i2v_head", [[_tagged(1)]], frames=1) == []


def test_unimplemented_and_unknown_types_raise():
    with pytest.raises(ValueError, match="not implemented"):
        build_condition(torch.zeros(1, 2, T, 2, 2), "v2v_head_half", [[_tagged(T)]])
    with pytest.raises(ValueError, match="unknown cond_type"):
        build_condition(torch.zeros(1, 2, T, 2, 2), "i2v", [[_tagged(1)]])


def test_missing_or_mis_sized_references_raise():
    z = torch.zeros(1, 2, T, 2, 2)
    with pytest.raises(ValueError, match="needs references"):
        build_condition(z, "i2v_head")
    with pytest.raises(ValueError, match="at least 9"):
        build_condition(z, "v2v_head", [[_tagged(4)]])
    with pytest.raises(ValueError, match="frame shape"):
        build_condition(z, "i2v_head", [[torch.zeros(2, 1, 4, 4)]])
    with pytest.raises(ValueError, match="two latents"):
        build_condition(z, "i2v_loop", [[_tagged(1)]])


def test_item_without_reference_is_left_unconditioned():
    condition = build_condition(torch.zeros(2, 2, T, 2, 2), "i2v_head", [[_tagged(1)], None])
    assert condition.masks[0].any() and not condition.masks[1].any()


def test_temporal_ramp_only_for_i2v():
    assert [c for c in COND_TYPES if uses_temporal_ramp(c)] == ["i2v_head", "i2v_tail", "i2v_loop"]


def test_reference_clips_pick_the_official_frames():
    video = torch.arange(70, dtype=torch.float32)[None, :, None, None]
    assert reference_clips("i2v_head", [video])[0][0, :, 0, 0].tolist() == [0.0]
    assert reference_clips("i2v_loop", [video, video[:, :5]])[1][0, :, 0, 0].tolist() == [4.0]
    assert reference_clips("v2v_tail", [video])[0].shape[1] == 33
    assert reference_clips("v2v_head_easy", [video])[0].shape[1] == 65
    assert reference_clips("v2v_head_easy", [video[:, :40]])[0].shape[1] == 33
    with pytest.raises(ValueError, match="at least 33"):
        reference_clips("v2v_head", [video[:, :20]])


@pytest.mark.parametrize("resolution", ["256px", "768px"])
def test_size_tables_are_multiples_of_16_near_the_area(resolution):
    table = aspect_ratio_sizes(resolution)
    area = resolution_pixels(resolution)
    for ratio in ASPECT_RATIOS:
        (h, w), (hv, wv) = table[ratio], table[":".join(ratio.split(":")[::-1])]
        assert (hv, wv) == (w, h) and h % 16 == 0 and w % 16 == 0
        assert 0.8 * area < h * w <= area
    training = aspect_ratio_sizes(resolution, training=True)
    assert len(set(training.values())) == len(training)  # duplicates dropped


def test_latent_geometry_of_a_video():
    """256px 16:9 at 129 frames: (129 - 1) / 4 + 1 latent frames, tokens = (H/16) (W/16) per frame."""
    h, w = sampling_size("256px", "16:9")
    shape = latent_shape(1, h, w, 129)
    assert shape.frames == 33 and shape.tokens_per_frame == (h // 16) * (w // 16)
    assert shape.shape == (1, 16, 33, h // 8, w // 8)
    assert decoded_frames(shape.frames) == 129 and latent_frames(1) == 1
    assert sampling_size(height=200, width=330) == (208, 336)


def test_frame_count_must_be_4k_plus_1():
    check_num_frames(129)
    with pytest.raises(ValueError, match="use 9 or 13"):
        check_num_frames(10)


def test_prompt_suffixes():
    assert prepare_prompt("  a cat ") == "a cat. 24 FPS. 4 motion score."
    assert add_fps_info("city at 30 FPS.") == "city at 30 FPS."
    assert prepare_prompt("a dog", fps=16, motion_score=None) == "a dog. 16 FPS."
    assert training_caption("a dog", 24, 2.5) == "a dog 24 FPS, 3 motion score."
    with pytest.raises(ValueError, match="dynamic"):
        add_motion_score("a cat.", "dynamic")
