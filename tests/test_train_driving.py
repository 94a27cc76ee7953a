"""Driving the trainer: check's plan and warnings, --resume / --fresh, finished runs, the step-0 sample, the
prompt file, score phrases, several datasets with caption options, exports that are never overwritten silently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import train_support
from conftest import REPO
from opensora_core.media import write_video
from opensora_train.cli import main
from opensora_train.config import TrainConfig, ValidationConfig, from_dict, load_config
from opensora_train.data import MetadataEntry
from opensora_train.datasets import CaptionOptions, caption_variant, read_datasets
from opensora_train.validation import caption_phrases, validation_items

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("driving")
    clips = train_support.write_clips(root / "clips", count=4, frames=20)
    write_video(train_support.moving_square(10, seed=5), clips / "short.mp4", fps=24)  # fits no 17-frame bucket
    (clips / "short.txt").write_text("a short clip")
    return root, clips


def _toml(workspace, name, **sections) -> Path:
    root, clips = workspace
    raw = train_support.tiny_config(root, clips=clips, **sections)
    raw["run"]["output_dir"] = str(root / name)
    raw["cache"] = {"dir": str(root / "cache")}
    return train_support.write_toml(raw, root / f"{name}.toml")


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------


def test_check_prints_the_bucket_table_dropped_clips_and_the_run_arithmetic(workspace, capsys):
    config = _toml(workspace, "check", run={"max_steps": 10, "gradient_accumulation_steps": 2})
    assert main(["check", "-c", str(config), "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "tiny     17   0.67       32x48     2       4       2" in out  # 4 clips of 20 frames, batch 2
    assert "dropped (1):" in out and "short.mp4: too few frames: 10; the smallest video bucket needs more than " \
                                    "17 x 1 = 17" in out
    assert "batch size per step: 2 per process x 2 process(es) x 2 accumulation = 8 samples" in out
    assert "steps per epoch: 1 (2 batches)" in out and "run.max_steps = 10: 10.0 epoch(s)" in out
    assert "time: no step timed yet" in out


def test_check_warns_when_the_settings_do_not_match_the_demo_model(workspace, capsys):
    """The example config for the demo model, pointed at 24 fps clips with frame interval 1 and a 240p sample."""
    root, clips = workspace
    demo = {k: str(REPO / v) for k, v in (("model.checkpoint", "demo/models/diffusion_models/opensora-demo-stdit3"
                                                                ".safetensors"),
                                           ("vae.path", "demo/models/vae/opensora-demo-vae-v1.2.safetensors"),
                                           ("text_encoder.path", "demo/models/text_encoders/opensora-demo-t5"))}
    sets = [f'{k}="{v}"' for k, v in demo.items()] + [f'data.csv="{root / "meta.csv"}"']
    config = str(REPO / "train" / "configs" / "demo_finetune.toml")
    assert main(["check", "-c", config, *sum((["--set", s] for s in sets), [])]) == 0
    assert "warning" not in capsys.readouterr().out  # the example as shipped (frame interval 3) fits the model
    bad = sets + ["data.frame_interval=1", "validation.height=240", "validation.width=426"]
    assert main(["check", "-c", config, *sum((["--set", s] for s in bad), [])]) == 0
    out = capsys.readouterr().out
    assert "warning: data.frame_interval = 1: your clips (24 fps) are trained at 24 fps, but the demo model was " \
           "trained at 8 fps; set data.frame_interval = 3" in out
    assert "warning: validation: 17 frames 240x426 at 8 fps; the demo model samples 17 frames 64x64" in out


# ---------------------------------------------------------------------------
# train: resume, fresh, finished, baseline sample, prompt file, exports
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(workspace):
    root = workspace[0]
    prompts = root / "prompts.txt"
    prompts.write_text("# per-prompt settings\na square --seed 5 --size 32x48 --frames 17 --cfg 3 --steps 2\n")
    config = _toml(workspace, "driven", run={"max_steps": 2, "tensorboard": True},
                   validation={"every": 2, "prompts": ["a red square"], "prompt_file": str(prompts), "height": 32,
                               "width": 48, "num_frames": 17, "steps": 2})
    assert main(["train", "-c", str(config)]) == 0
    return config, root / "driven"


def test_a_baseline_sample_is_made_at_step_0_for_every_prompt(finished):
    _, out = finished
    for step in ("step-00000000", "step-00000002"):
        assert sorted(p.name for p in (out / "validation" / step).iterdir()) == ["sample-0.mp4", "sample-1.mp4"]


def test_rerunning_a_finished_run_says_so_and_touches_nothing(finished, capsys):
    config, out = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["train", "-c", str(config), "--resume"]) == 0
    assert "nothing to train:" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # no new TensorBoard run, export or state


def test_export_never_overwrites_silently(finished, capsys):
    config, out = finished
    assert main(["export", "-c", str(config)]) == 1
    assert "already exist" in capsys.readouterr().err
    assert main(["export", "-c", str(config), "--overwrite"]) == 0


def test_fresh_starts_over(finished, capsys):
    config, out = finished
    assert main(["train", "-c", str(config), "--fresh", "--set", "validation.every=0", "--set", "run.max_steps=1"]) == 0
    assert "trained to step 1" in capsys.readouterr().out
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-00000001"]
    assert not (out / "validation").exists()
    assert [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()] == [1]


# ---------------------------------------------------------------------------
# score phrases, datasets, caption options
# ---------------------------------------------------------------------------


def test_validation_appends_the_aesthetic_phrase_only_when_the_captions_carry_it():
    cfg = ValidationConfig(prompts=["a dog"])
    assert caption_phrases(["a cat", "a dog aesthetic score: 6.1."]) == {"aesthetic score:"}
    assert caption_phrases(["a cat", "a dog", "a cow aesthetic score: 6.1."]) == frozenset()
    assert validation_items(cfg)[0].spec.aesthetic_score is None
    assert validation_items(cfg, frozenset({"aesthetic score:"}))[0].spec.aesthetic_score == 6.5
    cfg.score_phrases = "never"
    assert validation_items(cfg, frozenset({"aesthetic score:"}))[0].spec.aesthetic_score is None


def test_prompt_file_errors_name_the_line(tmp_path):
    from opensora_train.prompt_file import read_prompt_file

    path = tmp_path / "p.txt"
    path.write_text("fine --seed 1\nbroken --size big\n")
    with pytest.raises(ValueError, match=r"p\.txt:2: .*HEIGHTxWIDTH"):
        read_prompt_file(path, ValidationConfig(), None)


def test_several_datasets_with_repeats_and_a_trigger_word(workspace, tmp_path):
    root, _ = workspace
    other = tmp_path / "other.csv"
    with open(root / "meta.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(other, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])
    cfg = from_dict(TrainConfig, {"data": {"csv": str(root / "meta.csv"), "datasets": [
        {"csv": str(other), "repeats": 3, "trigger": "sks"}]}})
    entries = read_datasets(cfg.data)
    assert len(entries) == len(rows) + 3 and [e.row for e in entries] == list(range(len(entries)))
    assert caption_variant(entries[-1], seed=0, epoch=0) == f"sks, {rows[0]['text']}"
    assert caption_variant(entries[0], seed=0, epoch=0) == rows[0]["text"]  # data.csv: no options
    with pytest.raises(Exception, match=r"data\.datasets\[0\]\.repeats"):
        from opensora_train.datasets import dataset_specs

        dataset_specs(load_config(None, [f'data.datasets=[{{csv="{other}", repeats=0}}]']).data)


def test_caption_shuffle_dropout_and_score_dropout_are_seeded_per_epoch():
    text = "a dog, a ball, a park, sunny aesthetic score: 6.5. motion score: 3.0."
    entry = MetadataEntry(7, Path("v.mp4"), text, 40, 64, 64, 24.0,
                          captions=CaptionOptions(shuffle_captions=True, keep_tokens=1))
    variants = {caption_variant(entry, 0, epoch) for epoch in range(12)}
    assert len(variants) > 1 and all(v.startswith("a dog, ") for v in variants)
    assert all(v.endswith(" aesthetic score: 6.5. motion score: 3.0.") for v in variants)
    assert caption_variant(entry, 0, 3) == caption_variant(entry, 0, 3)
    dropped = MetadataEntry(7, Path("v.mp4"), text, 40, 64, 64, 24.0,
                            captions=CaptionOptions(caption_dropout=1.0))
    assert caption_variant(dropped, 0, 0) == ""
    no_scores = MetadataEntry(7, Path("v.mp4"), text, 40, 64, 64, 24.0, captions=CaptionOptions(score_dropout=1.0))
    assert caption_variant(no_scores, 0, 0) == "a dog, a ball, a park, sunny"


def test_export_records_what_the_model_was_trained_at(finished):
    from opensora_train.model_facts import trained_settings

    _, out = finished
    [export] = (out / "export").glob("*.safetensors")
    settings = trained_settings(str(export))
    assert (settings.height, settings.width, settings.num_frames, settings.fps) == (32, 48, 17, 24.0)
    assert settings.score_phrases == ()  # the tiny captions carry no score phrase


def test_generate_appends_no_aesthetic_phrase_to_a_model_trained_without_one(finished):
    from opensora_core.checkpoints import trained_score_phrases
    from opensora_core.cli.generate import Job, make_spec, parse_args

    _, out = finished
    [export] = (out / "export").glob("*.safetensors")
    phrases = trained_score_phrases(export)
    args = parse_args(["--model", str(export), "--vae", "v", "--text-encoder", "t", "--prompt", "a dog"])
    job = Job("a dog", [], "", Path("o.mp4"))
    assert phrases == () and make_spec(args, job, (32, 48, 17), phrases).aesthetic_score is None
    assert make_spec(args, job, (32, 48, 17), ("aesthetic score:",)).aesthetic_score == "auto"  # v1.2: 6.5
    assert make_spec(args, job, (32, 48, 17), None).aesthetic_score == "auto"  # a released checkpoint
