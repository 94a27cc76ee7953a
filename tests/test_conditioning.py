"""Mask strategies: parsing, both official placement rules, validation, pixel positions, reports, loops."""

from __future__ import annotations

import pytest
import torch

from opensora_core.conditioning import (
    PIXEL,
    MaskGroup,
    apply_mask_strategy,
    describe_mask_strategy,
    edit_strategy,
    extend_strategy,
    extension_drop_frames,
    extension_total_frames,
    first_frame_strategy,
    first_last_strategy,
    format_mask_strategy,
    parse_mask_strategy,
    to_latent_groups,
    validate_mask_strategy,
)
from opensora_core.geometry import PER_FRAME, VAE_V1_2
from opensora_core.parity.strategies import append_generated, gradio_v1_1_length_plan, loop_strategies, loops_for_length


def tagged(*frames: int) -> list[torch.Tensor]:
    """References (1, T, 1, 1) whose frame f of reference j holds 1000*(j+1)+f."""
    return [
        (1000.0 * (j + 1) + torch.arange(n, dtype=torch.float32))[None, :, None, None] for j, n in enumerate(frames)
    ]


def values(z: torch.Tensor) -> list[float]:
    return z[0, 0, :, 0, 0].tolist()


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_missing_fields_take_the_official_defaults():
    assert parse_mask_strategy("0,1") == [
        MaskGroup(loop_id=0, ref_id=1, ref_start=0, target_start=0, length=1, edit_ratio=0.0)
    ]


def test_empty_strategy_has_no_groups():
    assert parse_mask_strategy("") == [] and parse_mask_strategy(None) == []


def test_groups_format_back_to_official_strings():
    text = "0,0,0,0,1,0.0;0,1,0,-1,1,0.0"
    assert format_mask_strategy(parse_mask_strategy(text)) == text
    assert format_mask_strategy(parse_mask_strategy("1,0,-4,0,4"), "v1.1") == "1,0,-4,0,4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,a", r"group 1 '0,a': ref_id 'a' is not an integer"),
        ("0;0,0,0,0,1,0.5,3", r"group 2 .* has 7 fields, at most 6"),
        ("0;;0", r"group 2 '' is empty: remove the extra ';'"),
        ("0,0,0,0,1,x", r"edit_ratio 'x' is not a number"),
    ],
)
def test_unparsable_strategies_name_the_group(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mask_strategy(text)


# ---------------------------------------------------------------------------
# Applying (exact official rules)
# ---------------------------------------------------------------------------


def test_apply_copies_reference_frames_and_returns_a_new_latent():
    z = torch.full((1, 1, 5, 1, 1), -1.0)
    out, mask = apply_mask_strategy(z, [tagged(3)], ["0,0,-2,1,2,0.5"])
    assert values(out) == [-1.0, 1001.0, 1002.0, -1.0, -1.0]
    assert mask.tolist() == [[1.0, 0.5, 0.5, 1.0, 1.0]]
    assert values(z) == [-1.0] * 5


def test_v1_2_clips_the_length_and_v1_1_rejects_the_overrun():
    z = torch.full((1, 1, 5, 1, 1), -1.0)
    out, mask = apply_mask_strategy(z, [tagged(3)], ["0,0,1,2,10"], version="v1.2")
    assert values(out) == [-1.0, -1.0, 1001.0, 1002.0, -1.0]
    with pytest.raises(ValueError, match="does not fit"):
        apply_mask_strategy(z, [tagged(3)], ["0,0,1,2,10"], version="v1.1")


def test_v1_1_broadcasts_a_single_reference_frame_over_the_length():
    z = torch.full((1, 1, 4, 1, 1), -1.0)
    out, _ = apply_mask_strategy(z, [tagged(1)], ["0,0,0,0,3"], version="v1.1")
    assert values(out) == [1000.0, 1000.0, 1000.0, -1.0]


def test_align_snaps_the_last_frame_target_as_the_v1_2_sample_config_does():
    """align=5 turns target -1 of 15 latent frames (14) into 10 (find_nearest_point)."""
    z = torch.full((1, 1, 15, 1, 1), -1.0)
    _, mask = apply_mask_strategy(z, [tagged(1, 1)], ["0;0,1,0,-1,1"], align=5)
    assert mask[0].tolist().index(0.0, 1) == 10
    with pytest.raises(ValueError, match="v1.2 option"):
        apply_mask_strategy(z, [tagged(1, 1)], ["0"], version="v1.1", align=5)


def test_groups_of_other_loops_are_skipped():
    z = torch.zeros(1, 1, 4, 1, 1)
    _, idle = apply_mask_strategy(z, [tagged(2)], ["1,0,0,0,2"], loop_i=0)
    _, used = apply_mask_strategy(z, [tagged(2)], ["1,0,0,0,2"], loop_i=1)
    assert idle.tolist() == [[1.0] * 4] and used.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_an_empty_strategy_list_gives_no_mask():
    z = torch.zeros(1, 1, 4, 1, 1)
    assert apply_mask_strategy(z, [], [])[1] is None


def test_unknown_version_is_rejected():
    with pytest.raises(ValueError, match="v1.1"):
        apply_mask_strategy(torch.zeros(1, 1, 2, 1, 1), [[]], [""], version="1.2")


# ---------------------------------------------------------------------------
# Validation (user-facing)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,1", r"uses reference 1, but only 1 reference\(s\) were given"),
        ("0,0,0,0,0", r"length 0; a group covers at least 1 latent frame"),
        ("0,0,0,20", r"target_start lies beyond the latent video: 20 with 15 frame\(s\); use 0..14"),
        ("0,0,-3", r"ref_start lies beyond the reference 0: -3 with 1 frame"),
        ("0,0,0,0,1,1.5", r"edit_ratio 1.5; use 0 \(keep\) .. 1"),
        ("1", r"is for loop 1 but 1 loop\(s\) run"),
    ],
)
def test_validation_names_the_group_and_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        validate_mask_strategy(text, latent_frames=15, ref_latent_frames=[1])


def test_validation_without_references_says_so():
    with pytest.raises(ValueError, match="no reference was given"):
        validate_mask_strategy("0", latent_frames=15, ref_latent_frames=[])


def test_validation_of_a_v1_1_overrun_suggests_a_length():
    with pytest.raises(ValueError, match="shorten length to 2"):
        validate_mask_strategy("0,0,0,6,3", latent_frames=8, ref_latent_frames=[3], version="v1.1")


@pytest.mark.parametrize("text", ["", "0", "0;0,1,0,-1,1", "0,0,0,0,15,0.4", "0,0,-5,0,5"])
def test_documented_strategies_validate(text):
    groups = validate_mask_strategy(text, latent_frames=15, ref_latent_frames=[15, 1])
    assert groups == parse_mask_strategy(text)


# ---------------------------------------------------------------------------
# Pixel positions and reports
# ---------------------------------------------------------------------------


def test_pixel_frames_map_to_latent_frames_of_vae_v1_2():
    """51 frames = 3 chunks of 17 -> 15 latent frames; pixel 50 is in latent 14; pixels 17..33 are latents 5..9."""
    groups = to_latent_groups(
        [MaskGroup(target_start=-1, units=PIXEL), MaskGroup(ref_id=1, target_start=17, length=17, edit_ratio=0.5, units=PIXEL)],
        geometry=VAE_V1_2,
        num_frames=51,
        ref_num_frames=[1, 17],
    )
    assert groups == [MaskGroup(target_start=14), MaskGroup(ref_id=1, target_start=5, length=5, edit_ratio=0.5)]


def test_pixel_frames_are_latent_frames_for_the_per_frame_vae():
    [group] = to_latent_groups(
        [MaskGroup(ref_start=-4, target_start=0, length=4, units=PIXEL)], geometry=PER_FRAME, num_frames=16, ref_num_frames=[16]
    )
    assert group == MaskGroup(ref_start=12, length=4)


def test_pixel_condition_past_the_end_is_rejected():
    with pytest.raises(ValueError, match="shorten length to 1"):
        to_latent_groups(
            [MaskGroup(target_start=50, length=3, units=PIXEL)], geometry=VAE_V1_2, num_frames=51, ref_num_frames=[51]
        )


def test_report_gives_latent_and_pixel_positions_and_alignment():
    text = describe_mask_strategy(
        "0;0,1,0,-1,1", latent_frames=15, ref_latent_frames=[1, 1], align=5, geometry=VAE_V1_2, num_frames=51
    )
    first, last = text.splitlines()
    assert "latent frame 0 of 15 = pixel frame 0 of 51; kept as given" in first
    assert "latent frame 10 of 15 = pixel frame 34 of 51" in last and "snapped to 10 by align" in last


def test_report_mentions_clipping_and_other_loops():
    assert "length 10 clipped to 2" in describe_mask_strategy("0,0,1,2,10", latent_frames=5, ref_latent_frames=[3])
    assert "not used in loop 0" in describe_mask_strategy("1,0", latent_frames=5, ref_latent_frames=[3])


# ---------------------------------------------------------------------------
# Builders and loop bookkeeping
# ---------------------------------------------------------------------------


def test_builders_match_the_documented_strings():
    assert first_frame_strategy() == parse_mask_strategy("0")
    assert first_last_strategy() == parse_mask_strategy("0;0,1,0,-1,1")
    assert extend_strategy(5) == parse_mask_strategy("0,0,-5,0,5")
    assert edit_strategy(15, 0.4) == parse_mask_strategy("0,0,0,0,15,0.4")


def test_append_generated_writes_the_version_format():
    assert append_generated(None, 0, 1, 5) == "1,0,-5,0,5,0.0"
    assert append_generated("0", 1, 1, 4, version="v1.1") == "0;1,1,-4,0,4"


def test_loop_strategies_grow_by_one_group_per_round():
    assert loop_strategies("0", 3, 4, num_refs=1, version="v1.1") == ["0", "0;1,1,-4,0,4", "0;1,1,-4,0,4;2,2,-4,0,4"]


def test_extension_length_v1_1_is_loops_times_new_frames_plus_condition():
    assert extension_total_frames(16, 3, 4, PER_FRAME) == 3 * (16 - 4) + 4


def test_extension_length_v1_2_drops_17_pixel_frames_per_5_latent_frames():
    """num_frames + (loop - 1) * (num_frames - 17 * L / 5) (FACTS.md v1.2 section 7)."""
    assert [extension_drop_frames(n, 102, VAE_V1_2) for n in (5, 10, 15)] == [17, 34, 51]
    assert extension_total_frames(51, 3, 5, VAE_V1_2) == 51 + 2 * (51 - 17)


def test_extension_needs_new_frames_each_round():
    with pytest.raises(ValueError, match="between 1 and 14"):
        extension_total_frames(51, 2, 15, VAE_V1_2)


def test_gradio_length_plan_loops_16_frame_clips_beyond_16_seconds():
    assert gradio_v1_1_length_plan(8) == (64, 1)
    assert gradio_v1_1_length_plan(20) == (16, 13)
    with pytest.raises(ValueError, match="must exceed"):
        loops_for_length(100, 4, 4)


# -- named tasks --------------------------------------------------------------


@pytest.mark.parametrize(
    "task, refs, expected",
    [
        ("first_frame", [1], "0,0,0,0,1,0.0"),
        ("first_last", [1, 1], "0,0,0,0,1,0.0;0,1,0,-1,1,0.0"),  # the official stitching string
        ("first_last", [51], "0,0,0,0,1,0.0;0,0,-1,-1,1,0.0"),  # one video: its first and last frames
        ("extend", [51], "0,0,-5,0,5,0.0"),  # 17 pixel frames = 5 latent frames of the VAE v1.2
        ("edit", [34], "0,0,0,0,10,0.4"),  # a 34-frame video covers 10 of the clip's 15 latent frames
    ],
)
def test_task_groups_resolve_with_the_clip_length(task, refs, expected):
    from opensora_core.conditioning import task_groups

    groups = task_groups(task, geometry=VAE_V1_2, num_frames=51, ref_num_frames=refs, frames=17, edit_ratio=0.4)
    assert format_mask_strategy(groups) == expected
    validate_mask_strategy(groups, latent_frames=15, ref_latent_frames=[VAE_V1_2.latent_frames(n) for n in refs])


def test_task_groups_need_a_reference():
    from opensora_core.conditioning import task_groups

    with pytest.raises(ValueError, match="at least one reference"):
        task_groups("edit", geometry=PER_FRAME, num_frames=16, ref_num_frames=[])
