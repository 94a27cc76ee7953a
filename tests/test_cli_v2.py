"""``opensora-generate`` with Open-Sora 2.0 files (tiny models of the real classes under the official names):
t2v and the i2v condition types, the memory settings (fp8 weights, block swap, tiled decode), and the refusals."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from tiny_v2_files import write_models  # noqa: E402

from opensora_core import media  # noqa: E402
from opensora_core.cli.generate import main  # noqa: E402

H, W = 32, 48


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = write_models(tmp_path_factory.mktemp("models"))
    media.write_video(torch.rand(1, 40, 56, 3), root / "first.png", fps=1)
    return root


def _args(root, out, *extra):
    text = root / "text_encoders"
    return ["--model", str(root / "diffusion_models" / "Open_Sora_v2.safetensors"),
            "--vae", str(root / "vae" / "hunyuan_vae.safetensors"),
            "--text-encoder", str(text / "t5xxl_fp16.safetensors"), "--tokenizer", str(text / "t5xxl_fp16_tokenizer"),
            "--clip", str(text / "clip_l.safetensors"), "--clip-tokenizer", str(text / "clip_l_tokenizer"),
            "--height", str(H), "--width", str(W), "--num-frames", "9", "--steps", "2", "--quiet", "-o", str(out),
            "--prompt", "a cat", *extra]


@pytest.mark.parametrize("extra", [
    [],
    ["--reference", "first.png", "--condition-type", "i2v_head"],
    ["--reference", "first.png", "--condition-type", "i2v_loop", "--image-cfg-scale", "2", "--no-oscillation"],
    ["--fp8", "--blocks-on-device", "1", "--tile"],
], ids=["t2v", "i2v_head", "i2v_loop", "low_memory"])
def test_v2_files_generate_a_video(models, tmp_path, monkeypatch, extra):
    monkeypatch.chdir(models)
    out = tmp_path / "v2.mp4"
    assert main(_args(models, out, *extra)) == 0
    info = media.probe(out)
    assert (info.num_frames, info.height, info.width, round(info.fps)) == (9, H, W, 24)


def test_the_folders_load_as_well_as_the_single_files(models, tmp_path):
    text = models / "text_encoders"
    args = _args(models, tmp_path / "f.mp4")
    for flag, folder in (("--text-encoder", text / "t5"), ("--clip", text / "clip")):
        args[args.index(flag) + 1] = str(folder)
    for flag in ("--tokenizer", "--clip-tokenizer"):
        del args[args.index(flag): args.index(flag) + 2]
    assert main(args) == 0


@pytest.mark.parametrize("extra, message", [
    (["--reference", "first.png"], "--condition-type i2v_head"),
    (["--condition-type", "v2v_head_half", "--reference", "first.png"], "v2v_head_half"),
    (["--num-frames", "8"], "4k"),
    (["--aesthetic-score", "6"], "no aesthetic score"),
    (["--blocks-on-device", "-1"], "0 or more"),
])
def test_bad_v2_requests_fail_before_loading_weights(models, tmp_path, capsys, monkeypatch, extra, message):
    import opensora_core.cli.generate as cli

    monkeypatch.chdir(models)
    monkeypatch.setattr(cli, "load_components", lambda *a: pytest.fail("weights loaded before the check"))
    args = _args(models, tmp_path / "x.mp4", *extra)
    if "--num-frames" in extra:
        i = args.index("--num-frames")
        del args[i: i + 2]
        args += extra[extra.index("--num-frames"): extra.index("--num-frames") + 2]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_v2_model_without_clip_names_the_flag(models, tmp_path, capsys):
    args = _args(models, tmp_path / "x.mp4")
    i = args.index("--clip")
    del args[i: i + 4]  # --clip and --clip-tokenizer
    assert main(args) == 2
    assert "--clip (CLIP-L" in capsys.readouterr().err


def test_fp8_is_refused_for_a_v1_model(tmp_path, capsys):
    import tiny
    from opensora_core.checkpoints import save_checkpoint

    save_checkpoint(tiny.stdit3().state_dict(), tmp_path / "dit.safetensors", class_name="STDiT3", config=tiny.STDIT3)
    save_checkpoint(tiny.vae_v1_2().state_dict(), tmp_path / "vae.safetensors",
                    config={"norm_num_groups": tiny.SD_VAE.norm_num_groups})
    (tmp_path / "t5").mkdir()
    assert main(["--model", str(tmp_path / "dit.safetensors"), "--vae", str(tmp_path / "vae.safetensors"),
                 "--text-encoder", str(tmp_path / "t5"), "--prompt", "a", "--fp8", "-o", str(tmp_path / "o.mp4")]) == 2
    assert "--fp8 is not available" in capsys.readouterr().err
