"""Trainer data side: prepare's report, the official bucket and mask tables, frame windows, the sampler."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import train_support  # noqa: F401  (imports this checkout's opensora_train)
from opensora_core.media import write_video
from opensora_train.buckets import BucketTable
from opensora_train.config import ConfigError
from opensora_core.families import for_class
from opensora_train.data import Clip, MetadataEntry, frame_window, plan_epoch, read_metadata, size_args
from opensora_train.masks import MaskGenerator, parse_mask_ratios
from opensora_train.prepare import prepare_dataset
from opensora_train.sampler import BucketBatchSampler
from train_support import moving_square

# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Two good clips, one image, and one of each kind of bad file."""
    root = tmp_path_factory.mktemp("messy")
    for name, frames in (("good_a", 12), ("good_b", 20), ("short", 3)):
        write_video(moving_square(frames, seed=1), root / f"{name}.mp4", fps=24)
        (root / f"{name}.txt").write_text(f"caption of {name}")
    write_video(moving_square(1, seed=2), root / "still.png", fps=1)
    (root / "still.txt").write_text("an image")
    write_video(moving_square(8, seed=3), root / "nocaption.mp4", fps=24)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    (root / "corrupt.txt").write_text("broken")
    (root / "empty.mp4").write_bytes(b"")
    (root / "empty.txt").write_text("nothing")
    return root


def test_prepare_writes_official_columns_and_reports_bad_files_by_name(messy_folder, tmp_path):
    report = prepare_dataset(messy_folder, tmp_path / "meta.csv", min_frames=5, workers=2)
    skipped = {s.path.rsplit("/", 1)[-1]: s.kind for s in report.skipped}
    assert skipped == {"corrupt.mp4": "unreadable", "nocaption.mp4": "no caption", "short.mp4": "too short",
                       "empty.mp4": "too short"}
    with (tmp_path / "meta.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "text", "num_frames", "height", "width", "aspect_ratio", "fps"]
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"good_a.mp4", "good_b.mp4", "still.png"}
    assert (by_name["good_b.mp4"]["num_frames"], by_name["good_b.mp4"]["height"], by_name["good_b.mp4"]["width"]) == (
        "20", "32", "48")
    assert float(by_name["good_a.mp4"]["aspect_ratio"]) == pytest.approx(32 / 48)
    summary = report.summary()
    for name in skipped:
        assert name in summary
    assert "kept              3" in summary


def test_prepare_reads_a_path_text_csv_with_relative_paths(messy_folder, tmp_path):
    source = tmp_path / "list.csv"
    source.write_text(f"path,text\n{messy_folder}/good_a.mp4,first\n{messy_folder}/good_b.mp4,\n")
    report = prepare_dataset(source, tmp_path / "out" / "meta.csv", relative=True, workers=1)
    assert [s.kind for s in report.skipped] == ["no caption"]
    entries = read_metadata(tmp_path / "out" / "meta.csv")
    assert entries[0].path.resolve() == (messy_folder / "good_a.mp4").resolve() and entries[0].text == "first"


# ---------------------------------------------------------------------------
# buckets
# ---------------------------------------------------------------------------


def _official_buckets(reference):
    table = json.loads((reference / "v1_1" / "tables" / "bucket_examples.json").read_text())
    official = table["bucket_config"]  # (0.0, None) entries: batch size 0 here
    config = {res: {t: [v[0], v[1] or 0] for t, v in entries.items()} for res, entries in official.items()}
    return table, BucketTable(config)


def test_bucket_ids_order_and_count_match_the_official_table(reference):
    table, buckets = _official_buckets(reference)
    assert list(buckets.entries) == table["resolution_order_tried"]
    assert buckets.bucket_id == {r: {int(t): i for t, i in ids.items()} for r, ids in table["bucket_ids"].items()}
    assert buckets.num_buckets == table["num_buckets"]


def test_bucket_assignment_reproduces_every_official_example(reference):
    table, buckets = _official_buckets(reference)
    for row in table["rows"]:
        key = buckets.assign(row["T"], row["H"], row["W"], row["frame_interval"], row["seed"])
        got = None if key is None else [key.resolution, key.num_frames, key.aspect]
        assert got == row["bucket"], row
        if key is not None:
            assert list(buckets.size(key)) == row["bucket_thw"] and buckets.batch_size(key) == row["batch_size"]


def test_a_clip_never_lands_in_a_bucket_larger_than_itself():
    buckets = BucketTable({"240p": {"16": [1.0, 4], "51": [0.5, 2], "1": [1.0, 8]}, "144p": {"16": [1.0, 8]}})
    for seed in range(40):
        T, H, W = 10 + seed * 3, 200 + seed * 7, 300 + seed * 11
        key = buckets.assign(T, H, W, frame_interval=1, seed=seed)
        if key is not None:
            assert buckets.size(key)[0] < T  # frames strictly fewer than the clip has
            assert H * W >= 0.8 * buckets.resolutions[key.resolution].pixels


def test_v1_2_frame_probability_pairs_and_bad_entries():
    buckets = BucketTable({"144p": {"51": [[1.0, 0.0], 2], "17": [1.0, 4]}})
    key = buckets.assign(60, 144, 256, frame_interval=1, seed=0)
    assert key.num_frames == 17  # the 51 entry is never considered with frame_prob 0
    with pytest.raises(ConfigError, match=r"data\.buckets\.144p\.17"):
        BucketTable({"144p": {"17": [1.5, 4]}})
    with pytest.raises(ConfigError, match=r"data\.buckets\.999p"):
        BucketTable({"999p": {"17": [1.0, 4]}})


# ---------------------------------------------------------------------------
# clips, windows, sampler
# ---------------------------------------------------------------------------


def test_frame_window_follows_temporal_random_crop():
    """A window of T * interval frames from a random start, T indices spread over it with int()."""
    rng = random.Random(0)
    frames = frame_window(100, 16, 3, rng)
    assert len(frames) == 16 and frames[1] - frames[0] in (3, 4)
    assert frames[-1] - frames[0] == 47  # linspace(begin, begin + 47, 16)
    assert frame_window(17, 17, 1, random.Random(1)) == tuple(range(17))


def test_size_arguments_follow_the_official_datasets():
    """v1.2: ar = H/W, fps = source fps // interval; v1.1: ar = W/H (its training quirk), fps = source fps."""
    from opensora_train.buckets import BucketKey

    video = MetadataEntry(0, Path("/v.mp4"), "t", 100, 240, 426, 30.0)
    clip = Clip(video, BucketKey("240p", 16, "0.56"), 16, 240, 426, tuple(range(16)), 0)
    v12, v11 = size_args(clip, for_class("STDiT3").training, 3), size_args(clip, for_class("STDiT2").training, 3)
    assert v12 == {"height": 240.0, "width": 426.0, "num_frames": 16.0, "ar": 240 / 426, "fps": 10.0}
    assert v11["ar"] == 426 / 240 and v11["fps"] == 30.0
    assert size_args(clip, for_class("STDiT2").training, 3, ar="height/width")["ar"] == 240 / 426
    image = Clip(MetadataEntry(1, Path("/i.png"), "t", 1, 240, 426, 0.0), clip.bucket, 1, 240,
                 426, (), 0)
    assert size_args(image, for_class("STDiT3").training, 3)["fps"] == 120.0


def _entries(n):
    return [MetadataEntry(i, Path(f"/v{i}.mp4"), "t", 40 + i, 240, 426, 24.0) for i in range(n)]


def test_plans_and_batches_are_deterministic_per_seed_and_epoch():
    buckets = BucketTable({"240p": {"17": [0.5, 2], "34": [0.5, 2]}, "144p": {"17": [1.0, 3]}})
    entries = _entries(12)
    plan = lambda seed, epoch: plan_epoch(entries, buckets, 1, seed, epoch)  # noqa: E731
    assert plan(1, 0) == plan(1, 0)
    assert plan(1, 0) != plan(1, 1)  # keep_prob draws and windows change per epoch

    def groups(epoch):
        found = {}
        for clip in plan(1, epoch):
            if clip is not None:
                found.setdefault(clip.bucket, []).append(clip.entry.row)
        return found

    sampler = BucketBatchSampler(groups, buckets.batch_size, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and second != first
    assert all(len(b) == buckets.batch_size(next(k for k, v in groups(0).items() if b[0] in v)) for b in first)
    assert sorted({i for b in first for i in b}) == sorted(i for v in groups(0).values() for i in v)


def test_small_buckets_are_padded_cyclically_or_dropped():
    sampler = BucketBatchSampler(lambda e: {"a": [7]}, lambda k: 4, seed=0)
    assert list(sampler) == [[7, 7, 7, 7]]
    dropping = BucketBatchSampler(lambda e: {"a": [7, 8, 9, 10, 11]}, lambda k: 4, seed=0, drop_last=True)
    assert len(dropping) == 1 and len(next(iter(dropping))) == 4


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def test_mask_generator_reproduces_the_official_draws(reference):
    table = json.loads((reference / "v1_1" / "tables" / "mask_generator_examples.json").read_text())
    generator = MaskGenerator(table["mask_ratios"])
    rng = random.Random(table["python_random_seed_before_draws"])
    for draw in table["draws"]:
        masks = generator.masks(len(draw["masks"]), draw["T"], rng)
        assert masks.int().tolist() == draw["masks"], draw["T"]


def test_mask_kinds_v1_2_names_and_guards():
    rng = random.Random(0)
    head = MaskGenerator({"image_head": 1.0}).mask(5, rng)
    assert head.tolist() == [False, True, True, True, True]
    inter = MaskGenerator({"intepolate": 1.0}).mask(6, rng)
    assert inter.sum() == 3 and not (inter[::2].all() and inter[1::2].all())
    two = MaskGenerator({"quarter_head_tail": 1.0}).mask(2, rng)  # official randint(1, 0) fails here
    assert two.any()
    rand = MaskGenerator({"random": 1.0}).mask(16, rng, torch.Generator().manual_seed(0))
    assert rand.any() and not rand.all()
    assert parse_mask_ratios({"image_head": 0.25})["identity"] == pytest.approx(0.75)
    with pytest.raises(ConfigError, match=r"mask_ratios\.image_middle"):
        parse_mask_ratios({"image_middle": 0.1})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_mask_ratios({"image_head": 0.8, "mask_no": 0.5})


def test_cached_clips_are_held_in_memory_up_to_the_budget(tmp_path, monkeypatch):
    from opensora_core.checkpoints import save_checkpoint
    from opensora_train import cache
    from opensora_train.dit import CachedClipDataset

    latents = [tmp_path / f"latent{i}.safetensors" for i in range(3)]
    for i, path in enumerate(latents):
        save_checkpoint({"latent": torch.full((4, 2, 3, 3), float(i))}, path)  # 72 floats: 288 bytes each
    caption = tmp_path / "caption.safetensors"
    save_checkpoint({"y": torch.ones(5, 8)}, caption)  # 160 bytes
    opened = []
    real = cache.read_tensor
    monkeypatch.setattr(cache, "read_tensor", lambda path, name: opened.append(path.name) or real(path, name))

    def epoch(dataset):
        opened.clear()
        items = [dataset[i] for i in range(len(latents))]
        return items, list(opened)

    sizes = [{"height": 64.0}] * 3
    held = CachedClipDataset([None] * 3, latents, [caption] * 3, 6, sizes, memory_bytes=160 + 2 * 288)
    items, first = epoch(held)
    assert sorted(first) == ["caption.safetensors"] + [p.name for p in latents]  # the shared caption once
    assert [float(item["x0"][0, 0, 0, 0]) for item in items] == [0.0, 1.0, 2.0]
    assert items[0]["mask"].tolist() == [1, 1, 1, 1, 1, 0] and items[0]["y"].shape == (1, 6, 8)
    items_again, second = epoch(held)
    assert second == ["latent2.safetensors"]  # the caption and two latents fit the budget; the third is read again
    assert all(torch.equal(a["x0"], b["x0"]) and torch.equal(a["y"], b["y"]) for a, b in zip(items, items_again))
    assert held.held.used == 160 + 2 * 288
    _, every_time = epoch(CachedClipDataset([None] * 3, latents, [caption] * 3, 6, sizes, memory_bytes=0))
    assert len(every_time) == 6  # cache.memory_gb = 0: read from disk each time
