"""The bundled demo model (demo/): shipped as the loaders read it, and its output is real video.

The four quality checks of the demo issue run on the shipped files through the public path
(``opensora_train.demo_eval``, which ``python -m opensora_train.demo_eval`` prints):
(a) VAE round trip of held-out clips, (b) image-to-video keeps the image as frame 0,
(c) text-to-video moves the shape the captioned way, (d) a loop continues the motion.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from opensora_core import demo as demo_files
from opensora_core import media
from opensora_core.checkpoints import read_checkpoint
from opensora_train import demo, demo_eval

DEMO = REPO / "demo"


@pytest.fixture(scope="module")
def components():
    return demo_files.load_components()


def test_demo_files_are_shipped_in_the_models_folder_layout():
    shipped = demo_files.load_demo()
    assert shipped.root == DEMO
    for key, name in demo.FILES.items():
        assert (DEMO / name).exists(), name
    folders = {p.parent.name for p in (shipped.model, shipped.vae)} | {shipped.text_encoder.parent.name}
    assert folders == {"diffusion_models", "vae", "text_encoders"}
    total = sum(p.stat().st_size for p in (DEMO / "models").rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"demo models are {total / 2**20:.1f} MiB (limit 20 MiB)"


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


def test_demo_json_matches_the_build_and_records_how_it_was_made():
    config = json.loads((DEMO / "demo.json").read_text())
    assert config["files"] == demo.FILES and config["sampling"] == demo.SAMPLING
    assert config["build"]["command"] == "./scripts/make_demo.sh"
    assert config["build"]["seeds"] == demo.SEEDS
    assert config["build"]["total_seconds"] <= 30 * 60


def test_demo_checkpoints_carry_the_official_class_names():
    shipped = demo_files.load_demo()
    assert read_checkpoint(shipped.model).class_name == "STDiT3"
    assert read_checkpoint(shipped.vae).class_name == "VideoAutoencoderPipeline"


def test_a_vae_reconstructs_held_out_clips(components):
    scores = demo_eval.vae_psnr(components)
    assert min(scores) >= 25.0, scores


def test_b_image_to_video_keeps_the_image_as_frame_0(components):
    scores = demo_eval.shipped_i2v_first_frame_psnr(components)  # the README command's image, three seeds
    assert min(scores) >= 25.0, scores


def test_b_held_out_images_stay_close_to_the_given_frame(components):
    scores = demo_eval.i2v_first_frame_psnr(components, 8)
    assert sum(scores) / len(scores) >= 22.0, scores  # measured 23.1 mean (see demo/README.md)


def test_c_text_to_video_moves_the_captioned_way(components):
    checks = demo_eval.t2v_directions(components)
    right = [c for c in checks if c.got == c.wanted]
    assert len(right) >= 0.75 * len(checks), [(c.wanted, c.got, c.travel) for c in checks]


@pytest.mark.parametrize("first, second, start", demo_eval.LOOPS)
def test_d_extension_loop_continues_the_motion(components, first, second, start):
    check = demo_eval.loop_continuation(components, first, second, start)
    assert check.num_frames == 2 * demo.SAMPLING["num_frames"] - 1
    assert check.continues, check


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
