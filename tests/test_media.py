"""Video/image IO with PyAV and frame fitting."""

from __future__ import annotations

import pytest
import torch

from opensora_core import media


def _clip(t=9, h=32, w=48) -> torch.Tensor:
    """A smooth moving gradient (compresses well, so H.264 round trips closely)."""
    ys = torch.linspace(0, 1, h).view(1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, w)
    ts = torch.linspace(0, 1, t).view(t, 1, 1)
    r, g, b = (xs + ts) % 1, ys.expand(t, h, w), (0.5 + 0.5 * torch.sin(6 * xs + ts)).expand(t, h, w)
    return torch.stack([r.expand(t, h, w), g, b], dim=-1)


def test_mp4_roundtrip_keeps_frames_fps_and_size(tmp_path):
    path = media.write_video(_clip(), tmp_path / "a.mp4", fps=12)
    info = media.probe(path)
    assert (info.num_frames, info.height, info.width, round(info.fps)) == (9, 32, 48, 12)
    frames, fps = media.read_frames(path)
    assert frames.shape == (9, 32, 48, 3) and frames.dtype == torch.uint8
    err = (frames.float() / 255 - _clip()).abs().mean()
    assert err < 0.03


def test_lossless_mp4_decodes_to_the_written_frames(tmp_path):
    written = media.to_uint8(_clip())
    path = media.write_video(written, tmp_path / "a.mp4", fps=8, lossless=True)
    frames, _ = media.read_frames(path)
    assert torch.equal(frames, written)


def test_single_frame_is_saved_as_png(tmp_path):
    path = media.save_output(_clip(t=1), tmp_path / "one.mp4", fps=24)
    assert path.suffix == ".png"
    frames, _ = media.read_frames(path)
    assert frames.shape == (1, 32, 48, 3)
    assert media.probe(path).num_frames == 1


def test_read_with_step_and_limit(tmp_path):
    path = media.write_video(_clip(t=10), tmp_path / "a.mp4", fps=10)
    frames, _ = media.read_frames(path, start=1, step=3, max_frames=2)
    assert frames.shape[0] == 2


def test_unreadable_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(media.MediaError, match="bad.mp4"):
        media.probe(bad)
    with pytest.raises(media.MediaError, match="not found"):
        media.read_frames(tmp_path / "missing.png")


def test_odd_size_is_rejected_before_writing(tmp_path):
    with pytest.raises(media.MediaError, match="even sizes"):
        media.write_video(_clip(h=31), tmp_path / "odd.mp4", fps=8)
    assert not any(tmp_path.iterdir())


def test_resize_cover_crop_fills_target_and_centres():
    frames = torch.zeros(1, 20, 40, 3, dtype=torch.uint8)
    frames[:, :, 10:30] = 255  # a centred bright band
    out = media.resize_cover_crop(frames, 16, 16)
    assert out.shape == (1, 16, 16, 3) and out.dtype == torch.uint8
    assert out[0, 8, 8, 0] == 255 and out[0, 8, 0, 0] < 255  # band centred, cropped at the sides


def test_model_range_roundtrip():
    clip = _clip(t=2)
    x = media.to_model_range(clip)
    assert x.shape == (3, 2, 32, 48) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(media.from_model_range(x), clip)


def test_write_video_keeps_metadata_tags(tmp_path):
    import av

    path = media.write_video(_clip(), tmp_path / "tagged.mp4", fps=12, metadata={"workflow": '{"nodes": []}'})
    with av.open(str(path)) as container:
        assert container.metadata.get("workflow") == '{"nodes": []}'


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    path = media.write_video(_clip(t=2), tmp_path / "p.mp4", fps=8)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["p.mp4"]
