"""``opensora-generate`` with Open-Sora-Plan v1.3 files in their released layout (tiny models)."""

from __future__ import annotations

import re

import pytest
import torch

import tiny_osp
import opensora_core.cli.generate as cli
from opensora_core import media
from opensora_core.cli.generate import collect_jobs, main, make_spec, parse_args, resolve_size
from opensora_core.families import by_name


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("osp")
    folders = tiny_osp.save_release(root)
    media.write_video(torch.rand(1, 40, 56, 3), root / "first.png", fps=1)
    media.write_video(torch.rand(1, 40, 56, 3), root / "last.png", fps=1)
    return folders, root


def _args(release, model: str, out, *extra) -> list[str]:
    folders, _ = release
    return ["--model", str(folders[model]), "--vae", str(folders["vae"]), "--text-encoder", str(folders["mt5"]),
            "--height", "32", "--width", "64", "--num-frames", "9", "--steps", "2", "--quiet", "-o", str(out),
            "--prompt", "a red circle", *extra]


@pytest.mark.parametrize("model, extra", [
    ("t2v", []),
    ("i2v", ["--reference", "first.png"]),  # one image: mask type i2v
    ("i2v", ["--reference", "first.png", "--reference", "last.png"]),  # two images: transition
])
def test_t2v_and_i2v_write_4n_plus_1_frames_at_the_release_fps(release, tmp_path, monkeypatch, model, extra):
    monkeypatch.chdir(release[1])
    out = tmp_path / "out.mp4"
    assert main(_args(release, model, out, *extra)) == 0
    info = media.probe(out)
    assert (info.num_frames, info.height, info.width, round(info.fps)) == (9, 32, 64, 18)


def test_the_weights_file_of_a_released_folder_loads_with_its_config(release, tmp_path):
    folders, _ = release
    args = _args(release, "t2v", tmp_path / "out.mp4")
    args[1] = str(folders["t2v"] / "diffusion_pytorch_model.safetensors")
    args[3] = str(folders["vae"] / "diffusion_pytorch_model.safetensors")
    assert main(args) == 0


def _files(release) -> list[str]:
    folders, _ = release
    return ["--model", str(folders["t2v"]), "--vae", str(folders["vae"]), "--text-encoder", str(folders["mt5"]),
            "--prompt", "a cat"]


def test_the_release_size_and_frames_are_the_defaults(release):
    args = parse_args(_files(release))
    assert resolve_size(args, by_name("open-sora-plan-v1.3")) == (352, 640, 93)


def test_size_presets_are_refused_for_the_release_without_them(release):
    args = parse_args([*_files(release), "--resolution", "480p"])
    with pytest.raises(ValueError, match="no size presets: give --height and --width"):
        resolve_size(args, by_name("open-sora-plan-v1.3"))


def test_the_family_template_applies_unless_turned_off(release):
    size = (352, 640, 93)
    args = parse_args(_files(release))
    assert make_spec(args, collect_jobs(args)[0], size).prompt_template == "auto"  # the family's template
    plain = parse_args([*_files(release), "--no-prompt-template"])
    assert make_spec(plain, collect_jobs(plain)[0], size).prompt_template is None


@pytest.mark.parametrize("extra, message", [
    (["--num-frames", "10"], "4n\\+1|4k\\+1|frames"),
    (["--width", "72"], "multiple of 16|width 72"),
    (["--aesthetic-score", "6"], "not trained with score phrases"),
    (["--loops", "2"], "no loop"),
])
def test_requests_the_release_cannot_take_fail_before_loading(release, tmp_path, capsys, monkeypatch, extra,
                                                               message):

    monkeypatch.setattr(cli, "load_components", lambda *a: pytest.fail("weights loaded before the check"))
    args = _args(release, "t2v", tmp_path / "x.mp4")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
