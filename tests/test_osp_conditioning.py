"""Open-Sora-Plan v1.3 inpainting condition: mask types, condition paths, masked pixels, mask compression."""

from __future__ import annotations

import json
import random

import pytest
import torch

from opensora_core.conditioning.osp_inpaint import (
    TRAINING_VIDEO_MASK_WEIGHTS,
    MaskType,
    build_inpaint_condition,
    center_crop_box,
    center_crop_resize,
    choose_mask_type,
    compress_mask,
    frame_mask,
    inpaint_pixels,
    max_area_size,
    resize_condition_frames,
    resolve_mask_type,
    stride_crop,
)

TABLE = "osp/tables/inpaint_masks.json"


def _table(reference) -> dict:
    return json.loads((reference / TABLE).read_text())


def _video(frames: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, size, size), generator=generator, dtype=torch.uint8)


# ---------------------------------------------------------------------------
# Mask types (tables/inpaint_masks.json)
# ---------------------------------------------------------------------------


def test_mask_type_enum_values_equal_the_table(reference):
    assert {t["name"]: t["enum_value"] for t in _table(reference)["mask_types"]} == {m.name: m.value for m in MaskType}


def _table_pixels(example: dict):
    T = example["num_frames"]
    if example["condition"] == "images":
        count = len(example["conditional_pixel_values_indices"])
        kind, indices = resolve_mask_type("images", count, T, None, example["conditional_pixel_values_indices"])
        return kind, inpaint_pixels(_video(count), T, kind, indices)
    kind, _ = resolve_mask_type("video", 1, T, example["mask_type_resolved"])
    seed = example["python_random_seed"]
    return kind, inpaint_pixels(_video(T), T, kind, rng=None if seed is None else random.Random(seed))


def test_every_measured_example_of_the_table(reference):
    """Pixel mask per frame and the 4 latent-mask channels per latent frame, for all types at 9 and 17 frames
    (random types replayed from their recorded Python seeds)."""
    for example in _table(reference)["examples_measured"]["cases"]:
        kind, pixels = _table_pixels(example)
        assert kind.name == example["mask_type_resolved"], example["tag"]
        assert pixels.pixel_mask[0, 0, :, 0, 0].tolist() == example["pixel_mask_per_frame"], example["tag"]
        latent = compress_mask(pixels.pixel_mask)[0, :, :, 0, 0]  # (4, t)
        assert latent.tolist() == example["latent_mask_channels_by_latent_frame"], example["tag"]


def test_fixed_mask_types():
    assert frame_mask("t2iv", 5).tolist() == [1, 1, 1, 1, 1]
    assert frame_mask(MaskType.i2v, 5).tolist() == [0, 1, 1, 1, 1]
    assert frame_mask("transition", 5).tolist() == [0, 1, 1, 1, 0]
    assert frame_mask("clear", 5).tolist() == [0, 0, 0, 0, 0]


def test_random_mask_types_follow_the_clear_ratio_bounds():
    for seed in range(20):
        kept = 17 - int(frame_mask("continuation", 17, rng=random.Random(seed)).sum())
        assert kept in (8, 9)  # randint(floor(17 * 0.5), ceil(17 * 0.5))
        mask = frame_mask("continuation", 17, rng=random.Random(seed), clear_ratios=(0.0, 1.0))
        assert mask.tolist() == sorted(mask.tolist())  # a prefix is given
        assert 17 - int(frame_mask("random_temporal", 17, rng=random.Random(seed)).sum()) in (8, 9)


def test_random_mask_types_need_a_random_source():
    with pytest.raises(ValueError, match="rng"):
        frame_mask("continuation", 9)


def test_training_mask_type_draw_uses_the_weights():
    rng = random.Random(0)
    drawn = {choose_mask_type(TRAINING_VIDEO_MASK_WEIGHTS, rng) for _ in range(300)}
    assert MaskType.clear not in drawn and MaskType.i2v in drawn


def test_unknown_mask_type_name_raises():
    with pytest.raises(ValueError, match="unknown mask type"):
        frame_mask("random_spatial", 9)


# ---------------------------------------------------------------------------
# Condition paths and masked pixels
# ---------------------------------------------------------------------------


def test_pipeline_default_resolution():
    assert resolve_mask_type("images", 1, 93) == (MaskType.i2v, [0])
    assert resolve_mask_type("images", 2, 93) == (MaskType.transition, [0, -1])
    assert resolve_mask_type("images", 3, 93, None, [0, 40, 92]) == (MaskType.random_temporal, [0, 40, 92])
    assert resolve_mask_type("video", 1, 93) == (MaskType.continuation, None)
    assert resolve_mask_type("images", 1, 93, "transition") == (MaskType.transition, [0])
    with pytest.raises(ValueError, match="indices"):
        resolve_mask_type("images", 3, 93)


def test_image_path_places_frames_at_indices_and_ignores_the_mask_type():
    images = _video(2)
    pixels = inpaint_pixels(images, 9, MaskType.clear, [0, -1])
    assert pixels.pixel_mask[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]
    torch.testing.assert_close(pixels.masked_pixels[0, :, 8], images[1].float() / 255.0 * 2 - 1)


def test_hidden_frames_become_minus_one():
    pixels = inpaint_pixels(_video(9), 9, "i2v")
    assert torch.all(pixels.masked_pixels[:, :, 1:] == -1.0)
    assert pixels.masked_pixels.shape == (1, 3, 9, 16, 16) and pixels.pixel_mask.shape == (1, 1, 9, 16, 16)


def test_indices_outside_the_video_raise():
    with pytest.raises(ValueError, match="outside"):
        inpaint_pixels(_video(1), 9, "i2v", [9])


# ---------------------------------------------------------------------------
# Mask compression and the latent condition
# ---------------------------------------------------------------------------


def test_compressed_channel_c_of_latent_frame_j_is_pixel_frame_4j_plus_c_minus_3():
    T = 13
    pixel = torch.arange(T, dtype=torch.float32)[None, None, :, None, None].expand(1, 1, T, 8, 8)
    latent = compress_mask(pixel)[0, :, :, 0, 0]  # (4, 4)
    for j in range(latent.shape[1]):
        for c in range(4):
            assert latent[c, j] == max(4 * j + c - 3, 0)


def test_compression_resizes_to_the_latent_grid_and_rejects_other_frame_counts():
    assert compress_mask(torch.ones(2, 1, 9, 48, 80)).shape == (2, 4, 3, 6, 10)
    assert compress_mask(torch.ones(1, 1, 8, 16, 16)).shape == (1, 4, 2, 2, 2)
    with pytest.raises(ValueError, match="4n\\+1"):
        compress_mask(torch.ones(1, 1, 7, 16, 16))


def test_condition_encodes_the_masked_pixels_once_per_sample():
    seen = []

    def encode(x):  # stand-in VAE: 4x8x8 average pooling of the first frame-padded video, 8 channels
        seen.append(x)
        x = torch.cat([x[:, :, :1].expand(-1, -1, 3, -1, -1), x], dim=2)
        return torch.nn.functional.avg_pool3d(x, (4, 8, 8)).repeat(1, 3, 1, 1, 1)[:, :8]

    cond = build_inpaint_condition(inpaint_pixels(_video(9), 9, "i2v"), encode, batch=2)
    assert seen[0].shape == (2, 3, 9, 16, 16) and len(seen) == 1
    assert cond.masked_latent.shape == (2, 8, 3, 2, 2) and cond.latent_mask.shape == (2, 4, 3, 2, 2)
    assert cond.channels().shape == (2, 12, 3, 2, 2)


# ---------------------------------------------------------------------------
# Resizing condition frames
# ---------------------------------------------------------------------------


def test_center_crop_box_keeps_the_target_aspect_ratio():
    assert center_crop_box(40, 96, 48, 80) == (0, 15, 40, 66)  # width int(40 / 0.6) = 66, offset round(15)
    assert center_crop_box(720, 1280, 320, 640) == (40, 0, 640, 1280)


def test_center_crop_resize_works_on_uint8_and_keeps_a_constant_image():
    frames = torch.full((1, 3, 40, 96), 77, dtype=torch.uint8)
    out = center_crop_resize(frames, 48, 80)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 48, 80) and torch.all(out == 77)


def test_uncropped_path_limits_the_area_and_crops_to_the_stride():
    assert max_area_size(1080, 1920) == (364, 648)  # sqrt(236544 / (1080 * 1920)) scaling, int-truncated
    assert max_area_size(100, 200) == (100, 200)
    assert stride_crop(torch.zeros(1, 3, 364, 648)).shape[-2:] == (352, 640)
    out = resize_condition_frames([torch.zeros(1, 3, 1080, 1920, dtype=torch.uint8)])
    assert out.shape == (1, 3, 352, 640)
