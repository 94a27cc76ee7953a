"""``opensora-generate`` end to end on tiny model files: every task writes the right frames."""

from __future__ import annotations

import re

import pytest
import torch

import tiny
from opensora_core import media
from opensora_core.checkpoints import save_checkpoint
from opensora_core.cli.generate import main

H, W = 32, 48


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_checkpoint(tiny.stdit3().state_dict(), root / "dit.safetensors", class_name="STDiT3", config=tiny.STDIT3)
    groups = {"norm_num_groups": tiny.SD_VAE.norm_num_groups}
    save_checkpoint(tiny.vae_v1_2().state_dict(), root / "vae.safetensors", config=groups)
    save_checkpoint(tiny.sd_vae().module.state_dict(), root / "sd_vae.safetensors", config=groups)
    t5 = root / "t5"
    tiny.t5_model().save_pretrained(t5)
    tiny.t5_tokenizer().save_pretrained(t5)
    image = torch.rand(1, 40, 56, 3)
    media.write_video(image, root / "first.png", fps=1)
    media.write_video(torch.rand(1, 40, 56, 3), root / "last.png", fps=1)
    media.write_video(torch.rand(17, 32, 48, 3), root / "clip.mp4", fps=8)
    return root


def _args(files, out, *extra):
    return ["--model", str(files / "dit.safetensors"), "--vae", str(files / "vae.safetensors"),
            "--text-encoder", str(files / "t5"), "--height", str(H), "--width", str(W), "--steps", "2",
            "--quiet", "-o", str(out), *extra]


@pytest.mark.parametrize(
    "task, extra, frames",
    [
        ("t2v", ["--prompt", "a red circle", "--num-frames", "17"], 17),
        ("i2v", ["--prompt", "a red circle", "--num-frames", "17", "--reference", "first.png", "--mask-strategy", "0"], 17),
        ("stitch", ["--prompt", 'a red circle{"reference_path": "first.png;last.png", "mask_strategy": "0;0,1,0,-1,1"}',
                    "--num-frames", "34"], 34),
        ("extend", ["--prompt", "|0|a red circle|1|a blue square", "--num-frames", "17", "--reference", "first.png",
                    "--mask-strategy", "0", "--loops", "3", "--condition-frame-length", "2"], 17 + 2 * 12),
        ("v2v", ["--prompt", "a red circle", "--num-frames", "17", "--reference", "clip.mp4",
                 "--mask-strategy", "0,0,0,0,5,0.5"], 17),
    ],
)
def test_tasks_write_videos_with_the_requested_frames(files, tmp_path, monkeypatch, task, extra, frames):
    monkeypatch.chdir(files)  # reference paths in prompts are relative
    out = tmp_path / f"{task}.mp4"
    assert main(_args(files, out, *extra)) == 0
    info = media.probe(out)
    assert (info.num_frames, info.height, info.width, round(info.fps)) == (frames, H, W, 24)


def test_single_frame_is_written_as_png(files, tmp_path):
    assert main(_args(files, tmp_path / "img.mp4", "--prompt", "a cat", "--num-frames", "1")) == 0
    assert media.probe(tmp_path / "img.png").num_frames == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-frames", "8"], "2..16|frames"),
        (["--num-frames", "17", "--reference", "missing.png", "--mask-strategy", "0"], "reference file not found"),
        (["--num-frames", "17", "--height", "30"], "--width"),
        (["--num-frames", "17", "--reference", "first.png", "--mask-strategy", "0,0,0,0,1,2"], "edit"),
    ],
)
def test_bad_requests_fail_before_loading_weights(files, tmp_path, capsys, monkeypatch, extra, message):
    import opensora_core.cli.generate as cli

    monkeypatch.chdir(files)
    monkeypatch.setattr(cli, "load_components", lambda *a: pytest.fail("weights loaded before the check"))
    args = _args(files, tmp_path / "x.mp4", "--prompt", "a cat", *extra)
    if "--height" in extra:  # drop the default width so only the height is given
        i = args.index("--width")
        del args[i : i + 2]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_wrong_vae_for_the_model_is_refused(files, tmp_path, capsys):
    args = _args(files, tmp_path / "x.mp4", "--prompt", "a cat", "--num-frames", "17")
    args[args.index("--vae") + 1] = str(files / "sd_vae.safetensors")
    assert main(args) == 2
    assert "needs the Open-Sora VAE v1.2" in capsys.readouterr().err


def test_lora_changes_the_video_and_strength_zero_does_not(files, tmp_path):
    from opensora_core.loading import load_dit
    from opensora_core.lora import add_lora, lora_layers, save_lora

    model = load_dit(files / "dit.safetensors").model
    add_lora(model, rank=2, targets=("attn.qkv", "mlp.fc2"))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.normal_(0, 0.2)
    lora = save_lora(model, tmp_path / "style-lora.safetensors")
    base = ["--prompt", "a red circle", "--num-frames", "1", "--seed", "3"]  # one frame: a lossless PNG
    outputs = {}
    for name, extra in {"plain": [], "lora": ["--lora", str(lora)], "zero": ["--lora", f"{lora}:0"]}.items():
        assert main(_args(files, tmp_path / f"{name}.png", *base, *extra)) == 0
        outputs[name] = media.read_frames(tmp_path / f"{name}.png")[0]
    assert torch.equal(outputs["plain"], outputs["zero"])
    assert not torch.equal(outputs["plain"], outputs["lora"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-frames", "0"], "num_frames must be a positive integer, got 0"),
        (["--height", "0", "--width", "0"], "size 0x0 .* too small"),
        (["--steps", "0"], "steps must be >= 1 for STDiT3"),
        (["--condition-frame-length", "0", "--loops", "2"], "condition_frame_length must be >= 1"),
        (["--save-fps", "0"], "--save-fps must be a positive number"),
        (["--align", "0"], "align must be >= 1"),
    ],
    ids=["num-frames", "height", "steps", "condition-frame-length", "save-fps", "align"],
)
def test_zero_is_a_value_not_a_missing_option(files, tmp_path, capsys, extra, message):
    args = _args(files, tmp_path / "x.mp4", "--prompt", "a cat", "--num-frames", "17")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "opensora-generate: error:" in err and re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cfg-scale", "nan"], "--cfg-scale must be a finite number >= 0"),
        (["--cfg-scale", "-1"], "--cfg-scale must be a finite number >= 0"),
        (["--cfg-scale", "inf"], "--cfg-scale must be a finite number >= 0"),
        (["--seed", "-1"], r"--seed must be from 0 to 18446744073709551615"),
        (["--seed", str(2**64)], r"--seed must be from 0 to 18446744073709551615"),
        (["--fps", "inf"], "--fps must be a positive number"),
        (["--width", "70"], "width 70 is not a multiple of 8.*use width 64 or 72"),
        (["--reference", "first.png"], "reference.* mask strategy is empty"),
        (["--prompt-file", "missing.txt"], "--prompt-file missing.txt: cannot be read"),
        (["--device", "gpu7"], "--device gpu7: not a device name"),
        (["--lora", "x.safetensors:nan"], "strength must be a finite number"),
        (["--height", "100000", "--width", "100000"], r"cannot fit: .* needs about .* GiB"),
    ],
    ids=["cfg-nan", "cfg-negative", "cfg-inf", "seed-negative", "seed-2**64", "fps-inf", "width-70", "reference",
         "prompt-file", "device", "lora-nan", "huge"],
)
def test_bad_options_are_refused_naming_the_option(files, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(files)
    args = _args(files, tmp_path / "x.mp4", "--prompt", "a cat", "--num-frames", "17")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_a_v1_1_prompt_drops_a_trailing_json_array(files, tmp_path):
    from opensora_core.cli.generate import collect_jobs, parse_args

    args = parse_args(_args(files, tmp_path / "x.mp4", "--prompt", "a cat [1, 2]"))
    assert collect_jobs(args, "v1.1")[0].prompt == "a cat "
    assert collect_jobs(args, "v1.2")[0].prompt == "a cat [1, 2]"


def test_the_prompt_syntax_comes_from_the_model_family(files, tmp_path):
    """run() reads prompts with the syntax of the model's family: a v1.1 checkpoint splits off the array."""
    from opensora_core.cli.generate import check_model, collect_jobs, parse_args

    v11 = save_checkpoint(tiny.stdit2().state_dict(), tmp_path / "v11.safetensors", class_name="STDiT2",
                          config=tiny.STDIT2)
    for model, prompt in ((v11, "a cat "), (files / "dit.safetensors", "a cat [1, 2]")):
        args = parse_args([*_args(files, tmp_path / "x.mp4", "--prompt", "a cat [1, 2]"), "--model", str(model)])
        assert collect_jobs(args, check_model(args).prompt_syntax)[0].prompt == prompt


@pytest.mark.parametrize("flag", ["--model", "--vae", "--text-encoder", "--lora"])
def test_a_damaged_model_file_is_named_not_a_safetensors_error(files, tmp_path, capsys, flag):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"")
    if flag == "--text-encoder":  # a Hugging Face folder whose weights file is empty
        import shutil

        shutil.copytree(files / "t5", tmp_path / "t5")
        broken = tmp_path / "t5" / "model.safetensors"
        broken.write_bytes(b"")
    args = _args(files, tmp_path / "x.png", "--prompt", "a cat", "--num-frames", "1")
    if flag == "--lora":
        args += ["--lora", str(broken)]
    else:
        args[args.index(flag) + 1] = str(broken.parent if flag == "--text-encoder" else broken)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"opensora-generate: error: {broken}: not a valid safetensors file (0 bytes" in err, err
    assert "download it again" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-o", "{tmp}/x.txt"], "--output .*x.txt: give a file name ending in .mp4"),
        (["-o", "{tmp}/file.mp4/x.mp4"], "--output .*file.mp4 is a file, so no folder can be made there"),
        (["-o", "{tmp}/x.png"], "a PNG holds one frame, not 17"),
        (["--pixel-positions"], "--pixel-positions only changes --mask-strategy"),
        (["--camera-motion", " "], "--camera-motion is empty"),
        (["--tokenizer", "{tmp}/nowhere"], "--tokenizer .*nowhere: not a folder"),
    ],
    ids=["suffix", "parent-is-file", "png-video", "pixel-positions", "camera-motion", "tokenizer"],
)
def test_options_that_would_fail_late_or_be_ignored_are_refused_first(files, tmp_path, capsys, extra, message):
    (tmp_path / "file.mp4").write_text("")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    args = _args(files, tmp_path / "out.mp4", "--prompt", "a cat", "--num-frames", "17")
    if extra[0] == "-o":
        args[args.index("-o") + 1] = extra[1]
    else:
        args += extra
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
