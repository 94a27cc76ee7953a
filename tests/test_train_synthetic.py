"""The procedural demo dataset and the motion measurement the demo checks rely on."""

from __future__ import annotations

import random

import pytest
import torch

from opensora_core import media
from opensora_train import synthetic


@pytest.mark.parametrize("direction", list(synthetic.DIRECTIONS))
def test_rendered_motion_is_measured_in_the_captioned_direction(direction):
    clip = synthetic.ShapeClip("circle", "red", "black", direction, (0.5, 0.5), 0.15, 0.02)
    frames = synthetic.render(clip, 17, 64, 64)
    assert synthetic.motion_direction(synthetic.track_shape(frames)) == direction
    assert clip.caption.startswith("a red circle moves")


def test_random_clips_stay_inside_the_frame():
    rng = random.Random(0)
    for _ in range(200):
        clip = synthetic.random_clip(rng, 17)
        for t in (0, 16):
            x, y = clip.centre(t)
            assert clip.radius <= x <= 1 - clip.radius and clip.radius <= y <= 1 - clip.radius


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shapes_cover_a_plausible_area(shape):
    clip = synthetic.ShapeClip(shape, "white", "black", "right", (0.5, 0.5), 0.2, 0.0)
    frame = synthetic.render(clip, 1, 50, 50)[0]
    area = float((frame[..., 0] > 0.5).float().mean())
    assert 0.05 < area < 0.2  # circle ~0.126, square 0.16, triangle ~0.08 of the frame


def test_track_is_nan_without_a_shape():
    frames = torch.full((3, 16, 16, 3), 0.3)
    assert torch.isnan(synthetic.track_shape(frames)).all()
    assert synthetic.motion_direction(synthetic.track_shape(frames)) is None


def test_dataset_is_written_in_the_prepare_folder_format_and_is_reproducible(tmp_path):
    a = synthetic.write_dataset(tmp_path / "a", 3, seed=5, num_frames=9, height=32, width=32)
    b = synthetic.write_dataset(tmp_path / "b", 3, seed=5, num_frames=9, height=32, width=32)
    assert [p.with_suffix(".txt").read_text() for p in a] == [p.with_suffix(".txt").read_text() for p in b]
    frames, fps = media.read_frames(a[0])
    assert frames.shape == (9, 32, 32, 3) and round(fps) == 8
    assert a[0].with_suffix(".txt").read_text().startswith("a ")
