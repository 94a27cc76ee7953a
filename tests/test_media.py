"""Video/image IO with PyAV and frame fitting."""

from __future__ import annotations

import numpy as np
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


def test_planar_rgb_frames_read_as_libswscale_converts_them(tmp_path):
    """Lossless MP4s decode as planar RGB (gbrp), read plane by plane; a width whose rows are padded included."""
    import av

    written = torch.randint(0, 256, (3, 16, 30, 3), dtype=torch.uint8)
    path = media.write_video(written, tmp_path / "padded.mp4", fps=8, lossless=True)
    with av.open(str(path)) as container:
        decoded = list(container.decode(container.streams.video[0]))
    assert decoded[0].format.name == "gbrp" and decoded[0].planes[0].line_size > 30
    converted = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in decoded])
    # uint8 pixels moved, not computed (a plane permutation): equal bytes on every CPU
    assert torch.equal(media.read_frames(path)[0], converted)
    assert torch.equal(torch.stack([torch.from_numpy(f) for _, f in media.iter_frames(path)]), converted)


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


def _official_video_fit(frames: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """video_transforms.resize_crop_to_fill (v1.2) on ToTensorVideo's output, step by step as written there."""
    clip = frames.permute(0, 3, 1, 2).float() / 255.0  # (T, C, H, W) in 0..1
    h, w = clip.shape[-2:]
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        clip = torch.nn.functional.interpolate(clip, size=(sh, sw), mode="bilinear", align_corners=False)
        i, j = 0, int(round(sw - tw) / 2.0)
    else:
        sh, sw = round(h * rw), tw
        clip = torch.nn.functional.interpolate(clip, size=(sh, sw), mode="bilinear", align_corners=False)
        i, j = int(round(sh - th) / 2.0), 0
    return clip[..., i : i + th, j : j + tw].permute(0, 2, 3, 1)


@pytest.mark.parametrize("size, target", [((100, 151), (240, 426)), ((37, 50), (20, 20)), ((48, 33), (24, 33))])
def test_video_fit_is_the_official_resize_crop(size, target):
    """Videos: round() sizes, bilinear without antialiasing on 0..1 floats, crop offset floor(excess / 2).
    The same torch calls on the same numbers as the official transform, so the result is exact."""
    frames = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = media.resize_cover_crop(frames, *target, mode="bilinear")
    assert out.dtype == torch.float32 and out.shape == (2, *target, 3)
    torch.testing.assert_close(out, _official_video_fit(frames, *target), rtol=0, atol=0)


@pytest.mark.parametrize("mode, left", [("bilinear", 1), ("bicubic", 2)])
def test_crop_offsets_of_the_official_video_and_image_paths(mode, left):
    """13 columns cut to 10 (no resize): the video path drops floor(3 / 2) = 1 column on the left, the image
    path (PIL, datasets/utils.py) int(round(3 / 2.0)) = 2."""
    frames = torch.arange(13, dtype=torch.uint8).repeat(1, 10, 1)[..., None].expand(1, 10, 13, 3).contiguous()
    out = media.resize_cover_crop(frames, 10, 10, mode=mode)
    first = out[0, 0, 0, 0] * (255 if mode == "bilinear" else 1)
    assert round(float(first)) == left


def test_image_fit_follows_pil_bicubic():
    """Images: torch's antialiased bicubic (PIL's kernel, a = -0.5) against PIL itself, within 2 of 255
    (PIL resamples in 8-bit fixed point); sizes and the crop as the official resize_crop_to_fill."""
    image_module = pytest.importorskip("PIL.Image")
    frames = torch.randint(0, 256, (1, 61, 97, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours = media.resize_cover_crop(frames, 24, 32)
    pil = image_module.fromarray(frames[0].numpy())
    (h, w), (th, tw) = (61, 97), (24, 32)
    rh, rw = th / h, tw / w  # datasets/utils.py resize_crop_to_fill
    if rh > rw:
        sh, sw, i, j = th, round(w * rh), 0, int(round((round(w * rh) - tw) / 2.0))
    else:
        sh, sw, i, j = round(h * rw), tw, int(round((round(h * rw) - th) / 2.0)), 0
    resized = torch.from_numpy(np.array(pil.resize((sw, sh), image_module.BICUBIC)))
    expected = resized[i : i + th, j : j + tw]
    assert ours.dtype == torch.uint8 and (ours[0].int() - expected.int()).abs().max() <= 2


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
