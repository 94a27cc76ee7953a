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


def test_short_travel_lets_opposite_directions_start_anywhere_in_between():
    """The demo DiT's clips: a start must not give the direction away (only the caption does)."""
    from opensora_train.demo import CLIP_TRAVEL

    rng = random.Random(0)
    starts = {"right": [], "left": []}
    for _ in range(400):
        clip = synthetic.random_clip(rng, 17, travel=CLIP_TRAVEL)
        for t in (0, 16):
            x, y = clip.centre(t)
            assert clip.radius <= x <= 1 - clip.radius and clip.radius <= y <= 1 - clip.radius
        if clip.direction in starts:
            starts[clip.direction].append(clip.start[0])
    shared = (min(starts["left"]), max(starts["right"]))  # starts both a rightward and a leftward clip can have
    assert shared[1] - shared[0] > 0.15  # ~0.19: the middle fifth of the frame
    default = [synthetic.random_clip(random.Random(i), 17) for i in range(200)]
    assert max(c.start[0] for c in default if c.direction == "right") < min(
        c.start[0] for c in default if c.direction == "left")  # the generator's default: the start tells


def test_travel_that_cannot_fit_is_refused():
    with pytest.raises(ValueError, match="travel"):
        synthetic.random_clip(random.Random(0), 17, travel=(0.3, 0.8))
    with pytest.raises(ValueError, match="travel"):
        synthetic.random_clip(random.Random(0), 17, travel=(0.0, 0.3))


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


@pytest.mark.parametrize("shape, low, high", [("circle", 0.74, 0.82), ("square", 0.95, 1.05)])
def test_fill_of_drawn_shapes_names_the_shape(shape, low, high):
    rng = random.Random(1)
    for _ in range(10):
        clip = synthetic.random_clip(rng, 17, shapes=(shape,))
        seen = synthetic.measure_frame(synthetic.render(clip, 1, 64, 64)[0])
        assert low <= seen.fill <= high and seen.shape == shape, seen
        assert seen.single and seen.color == clip.color and seen.background == clip.background


def test_a_second_blob_or_a_smear_is_not_one_object():
    one = synthetic.render(synthetic.ShapeClip("square", "red", "black", "right", (0.3, 0.5), 0.12, 0.0), 1, 64, 64)[0]
    other = synthetic.render(synthetic.ShapeClip("circle", "red", "black", "right", (0.75, 0.5), 0.08, 0.0), 1, 64, 64)[0]
    assert synthetic.measure_frame(one).single
    assert synthetic.measure_frame(torch.maximum(one, other)).count == 2
    smear = one.clone()
    smear[30:34, 45:60] += 0.15  # a faint trail beside the object
    seen = synthetic.measure_frame(smear)
    assert seen.count == 1 and seen.stray > synthetic.STRAY_LIMIT and not seen.single
    assert (synthetic.measure_frame(one).fault, synthetic.measure_frame(torch.maximum(one, other)).fault,
            seen.fault) == ("", "blobs", "smear")
    assert synthetic.measure_frame(torch.zeros_like(one)).fault == "none"  # nothing drawn is not one object either


def test_a_colour_fringe_is_not_one_object():
    frame = synthetic.render(synthetic.ShapeClip("circle", "red", "black", "right", (0.5, 0.5), 0.15, 0.0), 1, 64, 64)[0]
    fringed = frame.clone()
    fringed[20:44, 22:24] = torch.tensor([0.1, 0.8, 0.1])  # a green edge on a red disc
    assert synthetic.measure_frame(frame).single
    assert not synthetic.measure_frame(fringed).single and synthetic.measure_frame(fringed).fault == "fringe"


def test_measurement_survives_the_written_mp4(tmp_path):
    rng = random.Random(2)
    for index in range(6):
        clip = synthetic.random_clip(rng, 17, colors=("red", "green", "blue", "yellow"), shapes=("circle", "square"),
                                     backgrounds=("black", "gray"))
        path = media.write_video(synthetic.render(clip, 17, 64, 64), tmp_path / f"{index}.mp4", fps=8)
        frames, _ = media.read_frames(path)
        seen = synthetic.measure_video(frames)
        assert all(s.single and s.shape == clip.shape and s.color == clip.color for s in seen), clip
        track = torch.tensor([s.centre for s in seen])
        assert synthetic.motion_direction(track) == clip.direction
