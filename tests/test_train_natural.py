"""Natural imagery for the demo VAE (train/natural.py): photographs of scikit-image as stills and pan/zoom clips."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("skimage")

from opensora_core import media  # noqa: E402
from opensora_train import natural, synthetic  # noqa: E402


def test_held_out_photographs_are_never_trained_on():
    assert not set(natural.HELD_OUT) & set(natural.TRAINING)


def test_a_photograph_loads_as_rgb_in_0_1_grey_ones_too():
    for name in ("astronaut", "camera"):  # colour, grey
        image = natural.load(name)
        assert image.shape[0] == 3 and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.5


def test_pan_zoom_moves_a_window_smoothly_over_the_photograph():
    frames = natural.pan_zoom(natural.load("astronaut"), random.Random(3), 32, 9)
    assert frames.shape == (9, 32, 32, 3)
    steps = [float((frames[t + 1] - frames[t]).abs().mean()) for t in range(8)]
    jump = float((frames[-1] - frames[0]).abs().mean())
    assert max(steps) < jump  # each frame is close to the one before; the clip as a whole moves


def test_dead_leaves_pictures_differ_per_draw_and_stay_in_range():
    a, b = natural.dead_leaves(random.Random(0), 32), natural.dead_leaves(random.Random(1), 32)
    assert a.shape == (3, 32, 32) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert float((a - b).abs().mean()) > 0.05


def test_write_dataset_writes_cropped_captioned_stills(tmp_path):
    paths = natural.write_dataset(tmp_path, 3, seed=0, num_frames=1, size=32, crop=16, names=("astronaut",))
    assert [p.suffix for p in paths] == [".png"] * 3
    frames, _ = media.read_frames(paths[0])
    assert frames.shape == (1, 16, 16, 3)
    assert paths[0].with_suffix(".txt").read_text().startswith("a picture")


def test_synthetic_still_windows_hold_the_shape(tmp_path):
    paths = synthetic.write_dataset(tmp_path, 4, seed=0, num_frames=1, height=64, width=64, crop=32)
    for path in paths:
        frame = media.read_frames(path)[0][0]  # (32, 32, 3) uint8
        assert frame.shape == (32, 32, 3)
        assert synthetic.measure_frame(frame.float() / 255).count >= 1, path  # all or part of the shape is seen
