"""Open-Sora 2.0 LoRA through the config trainer (train/mmdit_task.py) on tiny models: the 2.0 buckets, the
caches, the loss going down, exact resume, the export in the pack's and ComfyUI's LoRA layout, the training
conditions and the caption dropout."""

from __future__ import annotations

import pytest
import torch

import tiny_v2_files
import train_support
from opensora_core.geometry import opensora_v2
from opensora_core.loading import load_dit
from opensora_core.lora import COMFY_PREFIX, load_lora, merge_lora
from opensora_core.families import by_release
from opensora_core.models.mmdit import prepare_inputs
from opensora_core.sampling.v2_losses import V2FlowObjective
from opensora_train.buckets import BucketTable
from opensora_train.config import ConfigError, TrainConfig, from_dict
from opensora_train.mmdit_task import MMDiTLoRATask
from opensora_train.rng import StepRandomness
from opensora_train.trainer import make_task, train
from opensora_train.validate import validate_config

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny ops on shared cores: one thread
H, W = train_support.H, train_support.W
TARGETS = ["img_attn.q_proj", "img_attn.v_proj", "txt_attn.q_proj", "img_mlp.0", "single_blocks.*.q_proj", "v_mlp"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("train_v2")
    models = tiny_v2_files.write_models(root / "models")
    clips = train_support.write_clips(root / "clips", count=2, frames=20)
    from opensora_train.prepare import prepare_dataset

    prepare_dataset(clips, root / "meta.csv", workers=1)
    return root, models


def _raw(workspace, name: str, **sections) -> dict:
    root, models = workspace
    text = models / "text_encoders"
    raw = {
        "run": {"output_dir": str(root / name), "max_steps": 6, "tensorboard": False, "progress_bar": False, "seed": 3},
        "model": {"checkpoint": str(models / "diffusion_models" / "Open_Sora_v2.safetensors"), "fp8": True,
                  "blocks_on_device": 1},
        "vae": {"path": str(models / "vae" / "hunyuan_vae.safetensors")},
        "text_encoder": {"path": str(text / "t5"), "clip": str(text / "clip")},
        "data": {"csv": str(root / "meta.csv"), "buckets": {"tiny": {"17": [1.0, 1]}},
                 "resolutions": {"tiny": {"pixels": H * W, "sizes": {"0.67": [H, W]}}}},
        "cache": {"dir": str(root / "cache")},
        "condition_config": {"t2v": 1, "i2v_head": 1, "i2v_tail": 1, "i2v_loop": 1},
        "lora": {"enabled": True, "rank": 2, "alpha": 2.0, "targets": TARGETS},
        "optimizer": {"lr": 1e-2},
        "checkpoint": {"every": 0, "keep_last": 3},
    }
    for key, values in sections.items():  # sections merge; the two weight tables are replaced
        raw[key] = values if key in ("condition_config", "dropout_ratio") else {**raw.get(key, {}), **values}
    return raw


def _cfg(workspace, name: str, **sections) -> TrainConfig:
    return from_dict(TrainConfig, _raw(workspace, name, **sections))


# ---------------------------------------------------------------------------
# Buckets and config
# ---------------------------------------------------------------------------


def test_buckets_use_the_2_0_tables_and_draws():
    """256px / 768px come from geometry.opensora_v2 (training sizes); a video takes the largest t with T >= t."""
    training = by_release("v2.0").training
    table = BucketTable({"256px": {"1": [1.0, 4], "33": [1.0, 1], "65": [1.0, 1]}, "768px": {"33": [1.0, 1]}},
                        training=training)
    for name in ("256px", "768px"):
        assert table.resolutions[name].sizes == opensora_v2.aspect_ratio_sizes(name, training=True)
    key = table.assign(65, 360, 640, seed=0)  # 65 frames: exactly enough for t = 65 (the v1 rule needs more)
    assert (key.resolution, key.num_frames, key.aspect) == ("256px", 65, "16:9")
    assert table.size(key) == (65, *opensora_v2.aspect_ratio_sizes("256px", training=True)["16:9"])
    assert table.assign(64, 360, 640, seed=0).num_frames == 33
    assert table.assign(40, 1080, 1920, seed=0).resolution == "768px"  # the larger resolution first


def test_buckets_refuse_frame_counts_the_causal_vae_cannot_take(workspace):
    cfg = _cfg(workspace, "bad_frames", data={"buckets": {"tiny": {"18": [1.0, 1]}}})
    with pytest.raises(ConfigError, match=r"data.buckets: tiny 18 frames: .*1 \+ 4k"):
        validate_config(cfg)


def test_the_config_names_what_2_0_needs(workspace):
    with pytest.raises(ConfigError, match="lora.enabled"):
        validate_config(_cfg(workspace, "no_lora", lora={"enabled": False}))
    with pytest.raises(ConfigError, match="condition_config.v2v_head"):
        validate_config(_cfg(workspace, "v2v", condition_config={"v2v_head": 1}))
    with pytest.raises(ConfigError, match="model.blocks_on_device"):
        validate_config(_cfg(workspace, "swap", model={"gradient_checkpointing": False}))


def test_the_shipped_configs_read():
    from opensora_train.config import load_config

    from conftest import REPO

    full = load_config(REPO / "train" / "configs" / "v2_lora.toml")
    assert full.model.checkpoint.endswith("Open_Sora_v2.safetensors") and full.model.fp8
    assert full.vae.path.endswith("hunyuan_vae.safetensors") and full.text_encoder.clip.endswith("clip_l.safetensors")
    assert "256px" in full.data.buckets and load_config(REPO / "train" / "configs" / "tiny_cpu_v2_lora.toml").lora.enabled


# ---------------------------------------------------------------------------
# Conditions and caption dropout
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(workspace):
    cfg = _cfg(workspace, "task", condition_config={"i2v_loop": 1}, dropout_ratio={"t5": 1.0, "clip": 0.0})
    task = make_task(cfg)
    assert isinstance(task, MMDiTLoRATask)
    task.prepare_data(_Accelerator())
    return task


class _Accelerator:
    device, process_index, num_processes, is_main_process = torch.device("cpu"), 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


def test_the_cache_holds_the_clip_its_end_frames_and_both_captions(task):
    item = task.prepare_data(_Accelerator()).dataset[0]
    assert item["x0"].shape == (16, 5, H // 8, W // 8)  # 17 frames -> 5 latent frames
    assert item["head"].shape == item["tail"].shape == (16, 1, H // 8, W // 8)
    assert item["txt"].shape == (512, tiny_v2_files.T5_WIDTH) and item["y_vec"].shape == (tiny_v2_files.CLIP_WIDTH,)


def test_i2v_loop_places_the_first_and_last_frame_encoded_alone(task):
    batch = {k: v[None] for k, v in task.prepare_data(_Accelerator()).dataset[0].items()}
    condition = task.draw_condition(batch, StepRandomness.for_step(0, 0, 0, "cpu"))
    assert condition.masks[0, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 1]
    torch.testing.assert_close(condition.masked_ref[0, :, 0], batch["head"][0, :, 0])
    torch.testing.assert_close(condition.masked_ref[0, :, -1], batch["tail"][0, :, 0])
    assert not condition.masked_ref[0, :, 1:-1].any()


def test_caption_dropout_draws_t5_and_clip_apart(task):
    """dropout_ratio t5 = 1, clip = 0: every T5 state becomes the empty caption's, no CLIP vector does."""
    batch = {k: v[None] for k, v in task.prepare_data(_Accelerator()).dataset[0].items()}
    txt, y_vec = task.drop_captions(batch["txt"], batch["y_vec"], StepRandomness.for_step(0, 0, 0, "cpu"))
    torch.testing.assert_close(txt[0], task.null_caption()["txt"])
    torch.testing.assert_close(y_vec, batch["y_vec"])
    assert not torch.equal(batch["txt"][0], task.null_caption()["txt"])


# ---------------------------------------------------------------------------
# Training, resume, export
# ---------------------------------------------------------------------------


def _fixed_loss(model, batch) -> float:
    """The t2v loss at three fixed times with fixed noise on a cached latent (no training draws)."""
    g = torch.Generator().manual_seed(7)
    x0, txt, y_vec = batch["x0"][None], batch["txt"][None], batch["y_vec"][None]
    with torch.no_grad():
        return sum(float(V2FlowObjective().loss(model, x0, txt, y_vec, t=torch.tensor([t]),
                                                noise=torch.randn(x0.shape, generator=g)))
                   for t in (0.3, 0.6, 0.9)) / 3


def test_training_lowers_the_loss_and_the_export_loads_in_the_lora_loaders(workspace, task):
    cfg = _cfg(workspace, "fit", run={"max_steps": 30}, condition_config={"t2v": 1}, dropout_ratio={"t5": 0, "clip": 0})
    result = train(cfg)
    (path,) = result.exports
    assert path.name == "fit-lora.safetensors"
    batch = task.prepare_data(_Accelerator()).dataset[0]
    base = load_dit(cfg.model.checkpoint).model
    before = _fixed_loss(base, batch)
    names = merge_lora(base, path)  # what the Open-Sora LoRA Loader node does
    assert len(names) == len(TARGETS)  # the tiny model has one double and one single block
    assert _fixed_loss(base, batch) < 0.9 * before  # 30 steps on 2 clips; unchanged if the LoRA did nothing
    # ComfyUI maps "diffusion_model.<key without .weight>" of every model weight: every LoRA key must hit one
    weights = {f"{COMFY_PREFIX}{k[: -len('.weight')]}" for k in load_dit(cfg.model.checkpoint).model.state_dict()
               if k.endswith(".weight")}
    assert set(load_lora(path).layers) and {COMFY_PREFIX + n for n in load_lora(path).layers} <= weights


def test_resume_repeats_the_uninterrupted_run(workspace):
    """6 steps straight vs 3 + resume + 3 (fp8 base, block swap, i2v conditions and caption dropout drawn)."""
    straight = train(_cfg(workspace, "straight", checkpoint={"every": 3}))
    first = train(_cfg(workspace, "resumed", run={"max_steps": 3}, checkpoint={"every": 3}))
    second = train(_cfg(workspace, "resumed", checkpoint={"every": 3, "resume": "latest"}))
    assert sorted(first.losses) == [1, 2, 3] and sorted(second.losses) == [4, 5, 6]
    resumed = {**first.losses, **second.losses}
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight.losses[step], rel=1e-6, abs=1e-7), step
    a, b = load_lora(straight.exports[0]).layers, load_lora(second.exports[0]).layers
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].up, b[name].up, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a[name].down, b[name].down, rtol=1e-6, atol=1e-7)
