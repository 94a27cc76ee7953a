"""The bundled demo model (demo/): shipped as the loaders read it, and it does what each workflow says.

The checks of the demo issue run on the shipped files through the public path, on seeds, positions and
images the build never used (``opensora_train.demo_eval``; ``python -m opensora_train.demo_eval`` prints the
full figures demo/README.md quotes, these tests a smaller sample of each): text-to-video shows one object of
the captioned colour and shape moving the captioned way, image-to-video keeps the given frame and its shape,
an extension round turns as its prompt says without a seam, stitching and video-to-video keep one object
and the source's motion, and the VAE reconstructs held-out synthetic clips and natural photographs.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from opensora_core import demo as demo_files
from opensora_core import media
from opensora_core.checkpoints import read_checkpoint
from opensora_train import demo, demo_eval

DEMO = REPO / "demo"


@pytest.fixture(scope="module")
def components():
    return demo_files.load_components()


def share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)


def test_demo_files_are_shipped_in_the_models_folder_layout():
    shipped = demo_files.load_demo()
    assert shipped.root == DEMO
    for key, name in demo.FILES.items():
        assert (DEMO / name).exists(), name
    folders = {p.parent.name for p in (shipped.model, shipped.vae)} | {shipped.text_encoder.parent.name}
    assert folders == {"diffusion_models", "vae", "text_encoders"}
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"demo/ holds {total / 2**20:.1f} MiB (limit 30 MiB)"


def test_demo_tokenizer_is_saved_in_the_form_every_transformers_reads():
    """Only the constructor arguments: transformers 4.40 .. 5.x rebuild the same ByT5 tokenizer from them.

    (A transformers 5 ``save_pretrained`` writes the extra ids as a list that 4.57 fails on; the ids
    were checked identical on 402 prompts with 4.40.0, 4.57.1 and 5.23.0.)
    """
    from opensora_core.text.t5 import load_t5_tokenizer
    from opensora_train.tiny_t5 import BYTE_TOKENIZER_CONFIG

    folder = demo_files.load_demo().text_encoder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    assert json.loads((folder / "tokenizer_config.json").read_text()) == BYTE_TOKENIZER_CONFIG
    ids = load_t5_tokenizer(folder)("a é")["input_ids"]
    assert ids == [b + 3 for b in "a é".encode()] + [1]  # bytes + 3 (pad, eos, unk), then </s>


def test_demo_source_video_is_browser_playable_yuv420p_h264():
    """Browsers and ComfyUI's preview play H.264 in yuv420p (RGB 4:4:4 shows wrong colours or nothing);
    the 4:2:0 chroma costs under one grey level on average against the rendered clip."""
    import av

    path = DEMO / "inputs" / "opensora_demo_source.mp4"
    with av.open(str(path)) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.name, codec.pix_fmt) == ("h264", "yuv420p")
    frames, _ = media.read_frames(path)
    rendered = media.to_uint8(demo.synthetic.render(demo.SOURCE_CLIP, 17, demo.SIZE, demo.SIZE))
    assert frames.shape == rendered.shape and (frames.float() - rendered.float()).abs().mean() < 1.0


def test_random_t5_writes_the_portable_tokenizer(tmp_path):
    from opensora_train.tiny_t5 import BYTE_TOKENIZER_CONFIG, write_random_t5

    folder = write_random_t5(tmp_path / "t5", d_model=16, layers=1, heads=2)
    assert json.loads((folder / "tokenizer_config.json").read_text()) == BYTE_TOKENIZER_CONFIG
    assert not (folder / "added_tokens.json").exists() and not (folder / "special_tokens_map.json").exists()


def test_only_the_dit_clips_move_the_shorter_distances(tmp_path, monkeypatch):
    """The DiT's clips use CLIP_TRAVEL (a start that does not give the direction away); the VAE's keep the
    generator's distances, so the shipped VAE's recipe is unchanged."""
    drawn = {}

    def record(folder, count, *, travel, **kwargs):
        drawn[folder.name] = travel
        return []

    monkeypatch.setattr(demo.synthetic, "write_dataset", record)
    monkeypatch.setattr("opensora_train.prepare.prepare_dataset", lambda folder, csv, **kw: type("R", (), {"rows": []}))
    demo.make_data(demo.Work(tmp_path), clips=2, images=2)
    assert drawn == {"clips": demo.CLIP_TRAVEL, "vae_clips": demo.synthetic.TRAVEL, "images": demo.synthetic.TRAVEL}
    assert demo.CLIP_TRAVEL[0] < demo.synthetic.TRAVEL[0]


def test_demo_json_matches_the_build_and_records_how_it_was_made():
    config = json.loads((DEMO / "demo.json").read_text())
    assert config["files"] == demo.FILES and config["sampling"] == demo.SAMPLING
    assert config["build"]["command"] == "./scripts/make_demo.sh"
    assert config["build"]["seeds"] == demo.SEEDS
    assert set(config["build"]["seconds"]) == {"data", "t5", *demo.TRAINING_STAGES}
    assert set(config["build"]["precision"]) == set(demo.TRAINING_STAGES)
    build = config["build"]
    assert build["total_seconds"] == pytest.approx(sum(build["seconds"].values()), abs=0.1)
    assert build["cpu_seconds"] == pytest.approx(sum(build["cpu_seconds_per_stage"].values()), abs=0.1)
    # The budget is 45 minutes on 2 cores; this recipe (3000 temporal VAE steps, 10000 DiT steps) took 74.1
    # minutes wall and 146.7 CPU minutes from scratch on a 2-core AVX2 CPU (~56 minutes estimated with AVX-512,
    # demo/README.md); the runs that made the shipped files took 116.7 CPU minutes. The bound admits a rebuild of
    # this recipe (two threads count busy-waiting as CPU time) and catches one that grows further
    assert build["cpu_seconds"] <= 160 * 60


def test_demo_checkpoints_carry_the_official_class_names():
    shipped = demo_files.load_demo()
    assert read_checkpoint(shipped.model).class_name == "STDiT3"
    assert read_checkpoint(shipped.vae).class_name == "VideoAutoencoderPipeline"


# What the shipped files reach on the samples below (``python -m opensora_train.demo_eval --quick`` measures the
# same samples), one case below the measured figure so that another CPU's rounding cannot flip a test; where the
# issue's target (demo/README.md) is not reached yet, the comment names it. These guard against a rebuild that
# makes the demo worse.
# text-to-video: measured 15/16, 16/16, 16/16 and 99 % of frames on these 16 prompts (over 192 prompts of three seed
# sets: 98 / 99 / 98 / 99.6 %); target 0.9 / 0.9 / 0.85 / 0.95
T2V = {"direction": 14 / 16, "color": 15 / 16, "shape": 15 / 16, "one_object": 0.95}
# shape kept in >= 90 % of frames: measured 7/8 (in every frame 6/8; 28/32 on the full sample, the VAE alone 31/32;
# before the decoder stage 23/32; the decoder stage on the VAE's clips drew 8/8 here and 28/32 too): target a square
# stays a square
I2V = {"frame0_db": 25.0, "direction": 7 / 8, "shape_kept": 6 / 8, "one_object": 0.97}
# measured 8/8, 8/8, 8/8 (before the decoder stage one object throughout 7/8); target: every round, one object in
# every frame, every seam step no larger than the steps inside the rounds
LOOPS = {"rounds": 7 / 8, "one_object_throughout": 7 / 8, "seam": 7 / 8}
# one object: measured 97 % of frames on these 4 (all 8: 96 %; before the decoder stage 88 % and 93 %); target: one
# object throughout
STITCH = {"first_db": 25.0, "one_object": 0.95}
# video-to-video: measured 4/4 edited (8/8 on the full sample), motion and colour 4/4; target: every edit, motion kept
V2V = {"edited": 3 / 4, "direction": 3 / 4, "color": 3 / 4, "track_within_3px": 3 / 4}
VAE_SYNTHETIC_DB = 33.0  # measured min 34.1 dB on 4 held-out clips (before the decoder stage: 29.5 on 8)
# the VAE alone on the 8 true clips test_2's first frames start: measured median shape 8/8 and 96 % of frames with the
# clip's shape (before the decoder stage 93 %; the previous build's 2000-step temporal stage: 5/8, 61 %; over 32 clips,
# kept in every frame: 31/32, before the decoder stage 24/32); target: a square stays a square in every frame
VAE_SHAPES = {"shape": 7 / 8, "frames": 0.95}
VAE_NATURAL_DB = 10.0  # target 22 dB: not reached (demo/README.md)


def test_1_text_to_video_shows_one_object_of_the_captioned_colour_and_shape_moving_the_captioned_way(components):
    checks = demo_eval.text_to_video(components, demo_eval.balanced_clips(16))
    failed = [c.summary() for c in checks if not all(c.right(k) for k in ("direction", "color", "shape"))]
    assert share(c.right("direction") for c in checks) >= T2V["direction"], failed
    assert share(c.right("color") for c in checks) >= T2V["color"], failed
    assert share(c.right("shape") for c in checks) >= T2V["shape"], failed
    assert share(s for c in checks for s in c.single) >= T2V["one_object"], [c.summary() for c in checks]


def test_2_image_to_video_keeps_the_given_frame_its_shape_and_moves_as_captioned(components):
    checks = demo_eval.image_to_video(components, demo_eval.held_out_clips(8, seed=demo_eval.HELD_OUT_SEED + 1))
    first = [round(c.extra["frame0_psnr"], 1) for c in checks]
    assert min(first) >= I2V["frame0_db"], first
    assert share(c.right("direction") for c in checks) >= I2V["direction"], [c.summary() for c in checks]
    kept = share(c.right("shape") and c.shape_frames >= 0.9 for c in checks)
    assert kept >= I2V["shape_kept"], [c.summary() for c in checks]
    assert share(s for c in checks for s in c.single) >= I2V["one_object"], [c.summary() for c in checks]


def test_2_the_readme_reference_image_is_kept_in_the_written_mp4(components):
    assert min(demo_eval.shipped_reference(components)) >= 25.0


def test_3_extension_rounds_turn_as_their_prompts_say_without_a_seam(components):
    loops = demo_eval.extension(components, demo_eval.loop_clips(1))
    assert len(loops) == 8 and loops[0].num_frames == 2 * demo.SAMPLING["num_frames"] - 1
    report = demo_eval.describe_loops(loops, verbose=True)
    assert share(all(r.right("direction") for r in c.rounds) for c in loops) >= LOOPS["rounds"], report
    assert share(c.seam_ok for c in loops) >= LOOPS["seam"], report
    assert share(c.objects == c.num_frames for c in loops) >= LOOPS["one_object_throughout"], report
    # the full run's heading names its seed sets; each set's line is the same summary
    throughout = sum(c.objects == c.num_frames for c in loops)
    assert demo_eval.loop_summary(loops).startswith("8 videos, every round as captioned ")
    assert f"one object in every frame {throughout}/8 " in demo_eval.loop_summary(loops)
    assert demo_eval.describe_loops(loops, sets="3 seed sets")[0] == (
        f"3. extension (i2v + 1 loop round, every turn, 3 seed sets): {demo_eval.loop_summary(loops)}")


def test_3_the_full_measure_samples_extensions_with_three_seed_sets_of_their_own(monkeypatch):
    calls = []
    monkeypatch.setattr(demo_eval, "extension", lambda components, cases, seed, compare_image_to_video:
                        calls.append((cases, seed, compare_image_to_video)) or [seed])
    assert demo_eval.extension_sets(None) == [[s] for s in demo_eval.EXTENSION_SEEDS]
    assert len({seed for _, seed, _ in calls}) == 3 and all(compare for _, _, compare in calls)
    assert all(len(cases) == 16 for cases, _, _ in calls)
    assert calls[0][0] == demo_eval.loop_clips(2)  # the first set is the one the tests and earlier figures used
    starts = [[clip.start for clip, _ in cases] for cases, _, _ in calls]
    assert starts[0] != starts[1] != starts[2] != starts[0]  # each set draws its own cases


def test_3_the_second_round_is_also_sampled_as_image_to_video_from_the_first_rounds_last_frame(components):
    """demo_eval's comparison of a loop round with a plain image-to-video from the same frame (demo/README.md)."""
    loops = demo_eval.extension(components, demo_eval.loop_clips(1)[:2], compare_image_to_video=True)
    assert all(c.plain_frame0_psnr >= 25.0 for c in loops), [c.plain_frame0_psnr for c in loops]
    assert all(0 <= c.plain_objects <= demo_eval.FRAMES for c in loops)
    # measured: one object in all 17 frames of both plain rounds (a count that broke would show fewer)
    assert all(c.plain_objects >= demo_eval.FRAMES - 2 for c in loops), [c.plain_objects for c in loops]
    assert len(loops[0].rounds[1].single) == demo_eval.FRAMES
    assert "as image-to-video from the first round's last frame" in "\n".join(demo_eval.describe_loops(loops))
    assert all(c.plain_objects is None for c in demo_eval.extension(components, demo_eval.loop_clips(1)[:1]))


def test_4_stitching_goes_from_the_first_image_to_the_last_with_one_object(components):
    checks = demo_eval.stitching(components, demo_eval.held_out_clips(4, seed=demo_eval.HELD_OUT_SEED + 3))
    assert min(c.extra["first_psnr"] for c in checks) >= STITCH["first_db"], [c.extra for c in checks]
    assert all(c.right("direction") for c in checks), [c.summary() for c in checks]
    assert share(s for c in checks for s in c.single) >= STITCH["one_object"], [c.summary() for c in checks]


def test_4_video_to_video_keeps_the_motion_and_the_colour_and_changes_the_shape(components):
    checks = demo_eval.video_to_video(components, demo_eval.held_out_clips(4, seed=demo_eval.HELD_OUT_SEED + 4),
                                      demo.V2V_EDIT_RATIO)
    edited = share(c.right("shape") and c.extra["source_shape"] != c.shape for c in checks)
    assert edited >= V2V["edited"], [c.summary() for c in checks]
    assert share(c.right("direction") for c in checks) >= V2V["direction"], [c.summary() for c in checks]
    assert share(c.right("color") for c in checks) >= V2V["color"], [c.summary() for c in checks]
    assert share(c.extra["track_offset"] <= 3.0 for c in checks) >= V2V["track_within_3px"], [c.extra for c in checks]


def test_4_the_video_to_video_workflow_edits_with_the_measured_ratio():
    """The Mask Builder's 'edit whole video' preset reads its edit_ratio widget (the strategy text is for 'custom')."""
    workflow = json.loads((REPO / "workflows" / "opensora_demo_video_to_video.json").read_text())
    [builder] = [n for n in workflow["nodes"] if n["type"] == "OpenSoraMaskBuilder"]
    preset, strategy, _, _, ratio = builder["widgets_values"]
    assert preset == "edit whole video (video to video)" and ratio == demo.V2V_EDIT_RATIO
    assert strategy.endswith(f",{demo.V2V_EDIT_RATIO}")
    prompts = [v for n in workflow["nodes"] for v in n.get("widgets_values") or [] if isinstance(v, str) and "moves" in v]
    assert prompts == [demo.v2v_edit(demo.SOURCE_CLIP).caption]  # the source video's circle, asked for as a square


def test_5_vae_reconstructs_held_out_clips_and_natural_photographs(components):
    assert min(demo_eval.vae_synthetic(components, 4)) >= VAE_SYNTHETIC_DB
    pairs = demo_eval.vae_pairs(components.vae, per_shape=1)  # a rebuild's VAE once kept green on gray at 19 dB
    assert len(pairs) == 8 and min(pairs.values()) >= demo_eval.WORST_PAIR_DB, pairs
    assert "below" not in demo_eval.describe_pairs(pairs) and "below 27 dB" in demo_eval.describe_pairs({"a": 20.0})
    natural = demo_eval.vae_natural(components)
    assert min(sum(natural[k]) / len(natural[k]) for k in ("stills", "clips")) >= VAE_NATURAL_DB, natural


def test_5_vae_keeps_colour_and_motion_of_moving_shapes_and_most_of_their_shape(components):
    """Image-to-video decodes through this VAE: what it keeps of the true clips is that workflow's ceiling."""
    clips = demo_eval.held_out_clips(8, seed=demo_eval.HELD_OUT_SEED + 1)  # test_2's first frames
    checks = demo_eval.vae_shapes(components.vae, clips, demo.SAMPLING["fps"])
    assert [c.prompt for c in checks] == [c.caption for c in clips]
    assert all(c.right("color") and c.right("direction") for c in checks), [c.summary() for c in checks]
    assert all(s for c in checks for s in c.single), [c.summary() for c in checks]
    assert share(c.right("shape") for c in checks) >= VAE_SHAPES["shape"], [c.summary() for c in checks]
    assert sum(c.shape_frames for c in checks) / len(checks) >= VAE_SHAPES["frames"], [c.fills for c in checks]


def test_frames_that_are_not_one_object_are_counted_by_cause_and_colour_pair():
    """``demo_eval`` says why frames fail "one object" and which colour/background pair fails most."""
    shape = demo.synthetic.ShapeClip
    red = shape("square", "red", "black", "right", (0.3, 0.5), 0.12, 0.03)
    blue = shape("circle", "blue", "gray", "up", (0.3, 0.6), 0.12, 0.03)
    frames = demo.synthetic.render(blue, 5, 64, 64)  # (T, H, W, 3)
    second = demo.synthetic.render(shape("square", "blue", "gray", "up", (0.8, 0.2), 0.08, 0.0), 1, 64, 64)[0]
    frames[2:] = torch.where((second - frames[0, :1, :1]).abs().amax(-1, keepdim=True) > 0.2, second, frames[2:])
    checks = [demo_eval.check_video(demo.synthetic.render(red, 5, 64, 64), red.caption, demo_eval._wanted(red)),
              demo_eval.check_video(frames, blue.caption, demo_eval._wanted(blue))]  # a second blob in frames 2-4
    assert checks[0].faults == [""] * 5 and checks[1].faults == ["", "", "blobs", "blobs", "blobs"], checks[1].faults
    assert demo_eval.describe_faults(checks) == "3 frames (a second blob 3); most in blue on gray: 3/5 (60 %) of its frames"
    assert "    not one object: 3 frames" in "\n".join(demo_eval.describe_checks("x", checks))
    assert not any("not one object" in line for line in demo_eval.describe_checks("x", checks[:1]))


def test_the_latent_grid_reference_keeps_what_the_grid_can_hold():
    """The yardstick the natural-image figures are reported with: block averages, bicubic back."""
    flat = torch.full((2, 64, 64, 3), 0.3)
    torch.testing.assert_close(demo_eval.latent_grid_reference(flat, 8), flat)  # constant in a block: kept
    ramp = torch.linspace(0, 1, 64)[None, None, :, None].expand(1, 64, 64, 3)
    assert demo_eval.psnr(demo_eval.latent_grid_reference(ramp, 8), ramp) > 35  # smooth: nearly kept
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float()[None, :, :, None].expand(1, 64, 64, 3)
    assert demo_eval.psnr(demo_eval.latent_grid_reference(checker, 8), checker) < 7  # finer than the grid: lost


def test_the_readme_demo_command_writes_an_mp4_and_says_where(tmp_path, capsys):
    from opensora_core.cli.generate import main

    target = tmp_path / "demo.mp4"
    assert main(["--demo", "--output", str(target), "--quiet"]) == 0
    assert str(target.resolve()) in capsys.readouterr().out
    info = media.probe(target)
    assert (info.num_frames, info.height, info.width) == (17, 64, 64) and info.fps == 8


def test_demo_without_its_files_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    from opensora_core.cli.generate import main

    monkeypatch.setenv(demo_files.DEMO_DIR_ENV, str(tmp_path))
    assert main(["--demo"]) == 2
    assert "demo files not found" in capsys.readouterr().err
