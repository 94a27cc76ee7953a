"""The data pipeline of ``opensora-train prepare`` on small generated videos with known content.

A long video of five scenes (cuts at known frames; camera pans, tilts, zooms or stays; text drawn on one
scene; one scene too short to keep) goes through scene cut, scores, filters, captions and the report.
The stages need the ``[data]`` extra, which scripts/setup_env.sh installs: without it these tests fail
(with the install hint), they are never skipped.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import train_support  # noqa: F401  (imports this checkout's opensora_train)
from conftest import REPO
from data_support import Scene, render, write_long_video
from opensora_train.pipeline.filters import apply_filters, parse_filter
from opensora_train.pipeline.run import PipelineOptions, run_pipeline
from opensora_train.pipeline.scenes import SceneOptions, clip_ranges, detect_scenes

SCENES = [Scene(40, "pan left", seed=1), Scene(36, "static", seed=2), Scene(44, "tilt up", text="SALE 50%", seed=3),
          Scene(16, "static", seed=4), Scene(40, "zoom in", seed=5)]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    cuts = write_long_video(folder / "holiday.mp4", SCENES)
    (folder / "holiday.txt").write_text("a holiday video")
    return folder, cuts


def _options(source, out, **changes):
    base = dict(scene_cut=True, scenes=SceneOptions(min_seconds=1.0), scores=("motion", "text", "quality"),
                workers=2, progress=False)
    return PipelineOptions(source, out / "meta.csv", **{**base, **changes})


@pytest.fixture(scope="module")
def prepared(long_video, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    options = _options(long_video[0], out, filters=("flow>=1", "text_area<=0.02"), caption_scores=("motion", "camera"))
    return options, run_pipeline(options)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------
# Stages on their own
# ---------------------------------------------------------------------------


def test_scene_detection_finds_the_cuts_where_they_are(long_video):
    folder, cuts = long_video
    scenes = detect_scenes(folder / "holiday.mp4", SceneOptions())
    starts = [start for start, _ in scenes[1:]]
    assert len(starts) == len(cuts) and all(abs(a - b) <= 1 for a, b in zip(starts, cuts)), (starts, cuts)
    assert scenes[0][0] == 0 and scenes[-1][1] == sum(s.frames for s in SCENES)


def test_clip_lengths_follow_the_official_min_and_max_seconds():
    """cut.py: scenes under min_seconds are dropped, longer ones keep their first max_seconds (round(fps * s))."""
    scenes = [(0, 15), (15, 100), (100, 500)]
    ranges, short = clip_ranges(scenes, 10.0, SceneOptions(min_seconds=2, max_seconds=15))
    assert short == 1 and [(r.start, r.stop) for r in ranges] == [(15, 100), (100, 250)]
    split, _ = clip_ranges(scenes, 10.0, SceneOptions(min_seconds=2, max_seconds=15, split_long=True))
    assert [(r.start, r.stop) for r in split] == [(15, 100), (100, 250), (250, 400), (400, 500)]
    assert [r.suffix() for r in split[1:]] == ["_scene-2-0", "_scene-2-1", "_scene-2-2"]


@pytest.mark.parametrize("camera", ["pan left", "pan right", "tilt up", "tilt down", "zoom in", "static"])
def test_camera_motion_is_read_from_the_direction_the_picture_moves(camera):
    """Content moving right means the camera pans left (official labels), and so on."""
    from opensora_train.pipeline.clips import ClipSpec
    from opensora_train.pipeline.motion import MotionStage

    frames = render(Scene(32, camera, seed=7))
    clip = ClipSpec("c", REPO / "c.mp4", 0, 32, 24.0, frames.shape[1], frames.shape[2], "", REPO / "c.mp4")
    stage = MotionStage()
    values = stage.run(clip, {i: frames[i] for i in stage.frames(clip)}, {})
    assert values["cmotion"] == camera
    assert (values["flow"] < 0.1) if camera == "static" else (values["flow"] > 2.0)


def test_motion_score_orders_clips_by_how_much_they_move(monkeypatch):
    import data_support
    from opensora_train.pipeline.clips import ClipSpec
    from opensora_train.pipeline.motion import MotionStage

    stage = MotionStage()
    scores = []
    for speed in (0, 1, 3):
        monkeypatch.setitem(data_support.CONTENT_MOTION, "test", (speed, 0))
        frames = render(Scene(32, "test", seed=8))
        clip = ClipSpec("c", REPO / "c.mp4", 0, 32, 24.0, frames.shape[1], frames.shape[2], "", REPO / "c.mp4")
        scores.append(stage.run(clip, {i: frames[i] for i in stage.frames(clip)}, {})["flow"])
    assert scores[0] < 0.1 < scores[1] < scores[2], scores


def test_text_stage_finds_text_drawn_on_the_frames():
    from opensora_train.pipeline.clips import ClipSpec
    from opensora_train.pipeline.text import TextStage

    stage = TextStage()
    found = {}
    for text in ("", "OPEN 24 HOURS"):
        frames = render(Scene(20, "static", text=text, seed=9))
        clip = ClipSpec("c", REPO / "c.mp4", 0, 20, 24.0, frames.shape[1], frames.shape[2], "", REPO / "c.mp4")
        found[text] = stage.run(clip, {i: frames[i] for i in stage.frames(clip)}, {})
    assert found[""] == {"ocr": 0, "text_area": 0.0}
    assert found["OPEN 24 HOURS"]["ocr"] >= 1 and 0.05 < found["OPEN 24 HOURS"]["text_area"] < 0.6


def test_sharpness_drops_when_the_picture_is_blurred():
    import cv2

    from opensora_train.pipeline.clips import ClipSpec
    from opensora_train.pipeline.quality import QualityStage

    sharp = render(Scene(10, "static", text="EDGES", seed=3))
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.5) for f in sharp])
    clip = ClipSpec("c", REPO / "c.mp4", 0, 10, 24.0, sharp.shape[1], sharp.shape[2], "", REPO / "c.mp4")
    stage = QualityStage()
    a, b = (stage.run(clip, {i: f[i] for i in stage.frames(clip)}, {}) for f in (sharp, blurred))
    assert b["sharpness"] < 0.5 * a["sharpness"] and abs(a["brightness"] - b["brightness"]) < 0.02


def test_filters_use_readable_names_and_count_each_removal():
    columns = {"flow", "cmotion", "text_area", "num_frames"}
    filters = [parse_filter("motion >= 1", columns), parse_filter("camera!=static", columns),
               parse_filter("text<=0.02", columns)]
    assert [f.column for f in filters] == ["flow", "cmotion", "text_area"]
    rows = [{"flow": 3.0, "cmotion": "pan left", "text_area": 0.0}, {"flow": 0.2, "cmotion": "static"},
            {"flow": 5.0, "cmotion": "static", "text_area": 0.0}, {"flow": 5.0, "cmotion": "zoom in", "text_area": 0.3}]
    kept, removed, reasons = apply_filters(rows, filters)
    assert kept == [0] and removed == {"motion >= 1": 1, "camera!=static": 1, "text<=0.02": 1}
    assert reasons[1] == "flow = 0.2, fails motion >= 1"
    with pytest.raises(ValueError, match="no column 'aes'.*--scores"):
        parse_filter("aes>=5", columns)
    with pytest.raises(ValueError, match="expected COLUMN OP VALUE"):
        parse_filter("flow=>1", columns)


# ---------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------


def test_pipeline_cuts_scores_filters_and_writes_score_phrases(prepared):
    options, report = prepared
    rows = _rows(options.output)
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    names = [r["path"].rsplit("/", 1)[-1] for r in rows]
    assert names == ["holiday_scene-0.mp4", "holiday_scene-4.mp4"]  # static and text scenes filtered out
    assert report.removed == {"flow>=1": 1, "text_area<=0.02": 1}
    assert rows[0]["cmotion"] == "pan left" and rows[1]["cmotion"] == "zoom in"
    flow = float(rows[0]["flow"])
    assert rows[0]["text"] == f"a holiday video motion score: {flow:.1f}. camera motion: pan left."
    assert [int(r["num_frames"]) for r in rows] == [40, 40]
    assert "1 shorter than 1 s dropped" in report.summary()


def test_report_shows_every_clip_with_its_thumbnail_and_the_reason_it_was_removed(prepared):
    options, report = prepared
    page = options.report.read_text()
    for i in range(4):
        assert f"holiday_scene-{i if i < 3 else 4}" in page
    assert "fails text_area&lt;=0.02" in page and "fails flow&gt;=1" in page
    thumbs = sorted(p.name for p in options.thumbs_dir.iterdir())
    assert thumbs == [f"holiday_scene-{i}.png" for i in (0, 1, 2, 4)]


def test_a_second_run_reuses_the_work_folder(prepared, monkeypatch):
    from opensora_train.pipeline import motion, scenes

    options, _ = prepared
    monkeypatch.setattr(motion.MotionStage, "run", lambda *a: pytest.fail("motion recomputed"))
    monkeypatch.setattr(scenes, "detect_scenes", lambda *a: pytest.fail("scenes detected again"))
    again = run_pipeline(options)
    assert again.reused["scores"] == 4 and [r.removed for r in again.records] == [
        r.removed for r in prepared[1].records]


def test_scene_rows_point_into_the_long_video(long_video, tmp_path):
    from opensora_train.buckets import BucketTable
    from opensora_train.data import plan_clip, read_metadata

    report = run_pipeline(_options(long_video[0], tmp_path, scene_rows=True, scores=(), no_report=True))
    rows = _rows(tmp_path / "meta.csv")
    cuts = long_video[1]
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in rows] == [
        (0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], cuts[2]), (cuts[3], sum(s.frames for s in SCENES))]
    assert len(report.kept) == 4 and not (tmp_path / "meta_clips").exists()
    entry = read_metadata(tmp_path / "meta.csv")[3]
    table = BucketTable({"tiny": {"17": [1.0, 1]}}, {"tiny": {"pixels": 96 * 160, "sizes": {"0.60": [96, 160]}}})
    clip = plan_clip(entry, table, 1, seed=0, epoch=0)
    assert cuts[3] <= clip.frames[0] and clip.frames[-1] < cuts[3] + 40


def test_captioner_hook_captions_clips_without_a_caption(long_video, tmp_path):
    source = tmp_path / "clips"
    source.mkdir()
    (source / "holiday.mp4").symlink_to(long_video[0] / "holiday.mp4")  # no .txt beside it
    with pytest.raises(ValueError, match="no clip is left"):
        run_pipeline(PipelineOptions(source, tmp_path / "a" / "meta.csv", scores=("quality",), progress=False,
                                     no_report=True))
    report = run_pipeline(PipelineOptions(source, tmp_path / "b" / "meta.csv", captioner="data_support:fake_captioner",
                                          progress=False, no_report=True))
    [row] = _rows(tmp_path / "b" / "meta.csv")
    assert row["text"].startswith("a ") and row["text"].endswith("clip of 3 frames")
    assert report.passes["captions"] == ["caption"]


def test_model_stages_need_local_files_and_are_reported_as_skipped(long_video, tmp_path):
    report = run_pipeline(_options(long_video[0], tmp_path, scores=("all",), scene_cut=False, no_report=True))
    assert set(report.stages_skipped) == {"aesthetic", "match"}
    assert "never downloaded" in report.summary()
    with pytest.raises(ValueError, match="--scores aesthetic: needs --clip-model"):
        run_pipeline(_options(long_video[0], tmp_path, scores=("aesthetic",)))


def test_aesthetic_and_match_scores_from_local_clip_files(long_video, tmp_path):
    """aes = the LAION head on the normalised CLIP image embedding (mean over frames); match = CLIP's own
    logits_per_image of the middle frame and the caption (CLIPModel.forward, an independent path)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from data_support import write_tiny_clip
    from opensora_core.media import iter_frames
    from opensora_train.pipeline.clip_models import AestheticHead

    clip_dir = write_tiny_clip(tmp_path / "clip")
    torch.manual_seed(1)
    head = AestheticHead(16)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    options = _options(long_video[0], tmp_path, scores=("aesthetic", "match"), clip_model=clip_dir,
                       aesthetic_model=tmp_path / "head.pth", device="cpu", no_report=True)
    report = run_pipeline(options)
    record = next(r for r in report.records if r.clip.name == "holiday_scene-0")
    assert set(_rows(options.output)[0]) >= {"aes", "match"}
    frames = dict(iter_frames(record.clip.path))
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        middle = frames[record.clip.num_frames // 2]
        out = model(**processor(text=[record.text], images=[middle], return_tensors="pt", padding=True))
        assert record.values["match"] == pytest.approx(float(out.logits_per_image[0, 0]), abs=1e-3)
        points = [frames[int(p * record.clip.num_frames)] for p in (0.1, 0.5, 0.9)]
        embeds = model(**processor(text=["x"], images=points, return_tensors="pt")).image_embeds  # normalised
        assert record.values["aes"] == pytest.approx(float(head.eval()(embeds).mean()), abs=1e-3)
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not the LAION aesthetic head"):
        run_pipeline(_options(long_video[0], tmp_path, scores=("aesthetic",), clip_model=clip_dir,
                              aesthetic_model=tmp_path / "bad.pth", device="cpu"))


def test_a_missing_library_names_the_extra_to_install(monkeypatch):
    import importlib

    from opensora_train.pipeline import deps

    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name == "cv2" else real(name, *a))
    with pytest.raises(ImportError, match=r"the motion stage needs the opencv-python package.*\[data\]"):
        deps.require("cv2", "motion")


# ---------------------------------------------------------------------------
# End to end: a long video to an exported model
# ---------------------------------------------------------------------------


def test_long_video_to_exported_model(prepared, tmp_path):
    """Cut, scored and filtered clips (with score phrases in their captions) train a tiny STDiT3 that exports."""
    from opensora_core.loading import load_dit
    from opensora_train.cli import main

    options, _ = prepared
    raw = train_support.tiny_config(tmp_path, clips=options.source, run={"max_steps": 2},
                                    data={"csv": str(options.output)})
    config = train_support.write_toml(raw, tmp_path / "run.toml")
    assert main(["check", "-c", str(config)]) == 0
    assert main(["train", "-c", str(config)]) == 0
    [export] = (tmp_path / "out" / "export").glob("*.safetensors")
    assert load_dit(export).class_name == "STDiT3"
    assert main(["export", "-c", str(config)]) == 1  # the export is there: not replaced without --overwrite


def test_without_the_data_extra_the_report_still_works_and_stages_name_the_extra(long_video, tmp_path, monkeypatch):
    for module in ("cv2", "scenedetect", "rapidocr_onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # as if `pip install .[data]` had not been run
    report = run_pipeline(PipelineOptions(long_video[0], tmp_path / "meta.csv", progress=False))
    assert len(report.kept) == 1 and (tmp_path / "meta_report_thumbs" / "holiday.png").is_file()
    with pytest.raises(ImportError, match=r"scene cut stage needs the scenedetect package.*\[data\]"):
        run_pipeline(PipelineOptions(long_video[0], tmp_path / "meta.csv", scene_cut=True, progress=False))
