"""End-to-end training on CPU with tiny models and a tiny synthetic dataset written in the test.

One module-wide workspace (clips, tiny T5 / VAE / DiT files, a shared cache) serves every run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import tiny
import train_support
from opensora_core.loading import load_dit, load_vae
from opensora_core.lora import add_lora, load_lora, merge_lora
from opensora_core.media import write_video
from opensora_core.pipeline import Components, GenerationSpec, generate
from opensora_core.text.t5 import load_t5_encoder
from opensora_train.config import TrainConfig, from_dict
from opensora_train.trainer import train

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny ops on shared cores: one thread


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    clips = train_support.write_clips(root / "clips", count=4, frames=20)
    train_support.write_dit(root / "assets" / "stdit3.safetensors", "STDiT3")
    train_support.write_dit(root / "assets" / "stdit2.safetensors", "STDiT2")
    write_video(train_support.moving_square(1, seed=9), root / "ref.png", fps=1)  # image-to-video reference
    return root, clips


def _run(workspace, name, **sections):
    root, clips = workspace
    raw = train_support.tiny_config(root, clips=clips, **sections)
    raw["run"]["output_dir"] = str(root / name)
    raw.setdefault("cache", {})["dir"] = str(root / "cache")
    cfg = from_dict(TrainConfig, raw)
    return cfg, train(cfg)


# ---------------------------------------------------------------------------
# From scratch: loss, validation, export
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(workspace):
    return _run(
        workspace, "scratch",
        run={"max_steps": 24, "tensorboard": True, "log_every": 4},
        validation={"every": 24, "prompts": ["a red square", "a square moves"], "height": 32, "width": 48,
                    "num_frames": 17, "steps": 2, "reference_images": ["", str(workspace[0] / "ref.png")]},
        mask_ratios={"image_head": 0.3},
    )


def test_training_from_scratch_lowers_the_loss(scratch):
    cfg, result = scratch
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-6:]) / 6 < 0.7 * sum(losses[:6]) / 6
    logged = [json.loads(line) for line in (cfg.output_dir / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 25))


def test_validation_samples_are_saved_and_logged(scratch):
    cfg, _ = scratch
    folder = cfg.output_dir / "validation" / "step-00000024"
    assert sorted(p.name for p in folder.iterdir()) == ["sample-0.mp4", "sample-1.mp4"]
    assert any((cfg.output_dir / "logs").rglob("events.out.tfevents.*"))


def test_export_loads_with_load_dit_and_generates_through_the_pipeline(scratch, workspace):
    cfg, result = scratch
    [path] = result.exports
    loaded = load_dit(path)
    assert loaded.class_name == "STDiT3" and loaded.config["hidden_size"] == tiny.STDIT3["hidden_size"]
    state = train_support_state(cfg)
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    root = workspace[0]
    vae = load_vae(root / "assets" / "vae_v1_2.safetensors", norm_num_groups=4)
    t5 = load_t5_encoder(root / "assets" / "t5", max_length=tiny.MAX_LENGTH)
    spec = GenerationSpec(prompts=["a red square"], height=32, width=48, num_frames=17, steps=2)
    out = generate(Components(loaded.model, vae, t5), spec)
    assert out.frames.shape == (1, 17, 32, 48, 3) and torch.isfinite(out.frames).all()


def test_export_command_rewrites_the_export_from_the_latest_state(scratch, workspace):
    from opensora_train.cli import main

    cfg, result = scratch
    [path] = result.exports
    before = load_dit(path).model.state_dict()
    path.unlink()
    raw = json.loads(cfg.to_json())
    config = train_support.write_toml(raw, workspace[0] / "export.toml")
    assert main(["export", "--config", str(config)]) == 0
    after = load_dit(path).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def train_support_state(cfg):
    """The model weights of the last training state."""
    from safetensors.torch import load_file

    [state] = sorted((cfg.output_dir / "checkpoints").glob("checkpoint-*"))
    return load_file(str(state / "model.safetensors"))


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------


def test_resume_repeats_the_uninterrupted_run(workspace):
    """6 steps straight vs 3 + resume + 3 (4 batches per epoch, 2 per step: the resume lands mid-epoch),
    with masks, EMA, warm-up and gradient accumulation."""
    common = dict(data={"buckets": {"tiny": {"17": [1.0, 1]}}}, mask_ratios={"quarter_head": 0.5},
                  run={"gradient_accumulation_steps": 2},
                  ema={"enabled": True, "decay": 0.9}, optimizer={"lr": 1e-3, "warmup_steps": 2},
                  checkpoint={"every": 3, "keep_last": 5})
    run = common.pop("run")
    _, straight = _run(workspace, "straight", run={**run, "max_steps": 6}, **common)
    _, first = _run(workspace, "resumed", run={**run, "max_steps": 3}, **common)
    common["checkpoint"] = {**common["checkpoint"], "resume": "latest"}
    cfg, second = _run(workspace, "resumed", run={**run, "max_steps": 6}, **common)
    assert sorted(first.losses) == [1, 2, 3] and sorted(second.losses) == [4, 5, 6]
    resumed = {**first.losses, **second.losses}
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(straight.losses[step], rel=1e-6, abs=1e-7), step
    a, b = load_dit(straight.exports[0]).model.state_dict(), load_dit(second.exports[0]).model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    assert [p.name for p in sorted((cfg.output_dir / "checkpoints").glob("checkpoint-*"))] == [
        "checkpoint-00000003", "checkpoint-00000006"]


# ---------------------------------------------------------------------------
# LoRA, v1.1, VAE
# ---------------------------------------------------------------------------


def test_lora_export_has_comfyui_keys_and_merging_reproduces_the_trained_model(workspace):
    root = workspace[0]
    base_path = root / "assets" / "stdit3.safetensors"
    cfg, result = _run(workspace, "lora", run={"max_steps": 3},
                       model={"checkpoint": str(base_path), "config": {}, "gradient_checkpointing": True},
                       lora={"enabled": True, "rank": 4, "alpha": 8.0, "targets": ["attn.qkv", "cross_attn.kv_linear"]})
    [path] = result.exports
    tensors = load_lora(path)
    assert set(tensors.layers) == {f"{b}_blocks.0.{m}" for b in ("spatial", "temporal")
                                   for m in ("attn.qkv", "cross_attn.kv_linear")}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert "diffusion_model.spatial_blocks.0.attn.qkv.lora_A.weight" in set(handle.keys())
        assert handle.get_tensor("diffusion_model.spatial_blocks.0.attn.qkv.alpha").item() == 8.0
    trained = load_dit(base_path).model  # the trained model: base + adapters from the training state
    add_lora(trained, 4, 8.0, targets=["attn.qkv", "cross_attn.kv_linear"])
    trained.load_state_dict(train_support_state(cfg), strict=False)
    assert trained.spatial_blocks[0].attn.qkv.lora_B.weight.abs().max() > 0
    merged = load_dit(base_path).model
    merge_lora(merged, path)
    inputs = _model_inputs()
    torch.testing.assert_close(merged(**inputs), trained(**inputs), atol=2e-5, rtol=1e-5)


def _model_inputs():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, tiny.MAX_LENGTH, dtype=torch.int64)
    mask[:, :6] = 1
    return dict(x=torch.randn(1, 4, 5, 4, 6, generator=g), timestep=torch.tensor([700.0]),
                y=torch.randn(1, 1, tiny.MAX_LENGTH, tiny.CAPTION_CHANNELS, generator=g), mask=mask,
                fps=torch.tensor([24.0]), height=torch.tensor([32.0]), width=torch.tensor([48.0]))


def test_stdit2_iddpm_fine_tune_with_masks_exports_a_v1_1_checkpoint(workspace):
    root = workspace[0]
    _, result = _run(workspace, "v11", class_name="STDiT2", run={"max_steps": 3},
                     model={"checkpoint": str(root / "assets" / "stdit2.safetensors"), "config": {}},
                     data={"frame_interval": 3, "buckets": {"tiny": {"4": [1.0, 2]}}},
                     mask_ratios={"mask_no": 0.5, "mask_image_head": 0.5})
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    loaded = load_dit(result.exports[0])
    assert loaded.class_name == "STDiT2" and loaded.config["qk_norm"] is True


def test_vae_training_exports_a_file_load_vae_reads(workspace):
    spatial = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}
    temporal = {"filters": 8, "num_res_blocks": 1, "channel_multipliers": [1, 2, 2, 2],
                "temporal_downsample": [False, True, True], "num_groups": 4}
    _, result = _run(workspace, "vae", run={"max_steps": 2, "task": "vae"},
                       vae_training={"spatial": spatial, "temporal": temporal, "latent_weight": 1.0,
                                     "calibrate_batches": 2},
                       data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    assert set(result.losses) == {1, 2}
    vae = load_vae(result.exports[0], norm_num_groups=4)
    assert type(vae).__name__ == "VideoAutoencoderPipeline"
    assert not torch.equal(vae.scale.flatten(), torch.ones(4))  # calibrated to the latents' spread
    from opensora_core.media import to_model_range

    video = to_model_range(train_support.moving_square(17, seed=0))[None]  # a training clip, (1, 3, 17, 32, 48)
    z = vae.encode(video, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 4, 5, 4, 6)
    assert abs(float(z.mean())) < 0.5 and abs(float(z.std()) - 1.0) < 0.35  # calibrated: about unit scale
    assert vae.decode(z, 17).shape == video.shape


def test_vae_v1_2_is_built_in_two_stages_as_the_demo_does(workspace):
    """Spatial SD-VAE first (images), then the pipeline around it with the spatial stage frozen."""
    from opensora_core.checkpoints import read_checkpoint

    spatial = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 2}
    temporal = {"filters": 8, "num_res_blocks": 1, "channel_multipliers": [1, 2, 2, 2],
                "temporal_downsample": [False, True, True], "num_groups": 2}
    _, first = _run(workspace, "vae_spatial", run={"max_steps": 2, "task": "vae"},
                    vae_training={"class_name": "VideoAutoencoderKL", "spatial": spatial, "init_logvar": -6.0},
                    data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    _, second = _run(workspace, "vae_temporal", run={"max_steps": 2, "task": "vae"},
                     vae_training={"spatial": spatial, "temporal": temporal, "spatial_checkpoint": str(first.exports[0]),
                                   "freeze_spatial": True, "pixel_weight": 0.0, "latent_weight": 1.0,
                                   "first_frame_weight": 1.0, "calibrate_batches": 1},
                     data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    vae = load_vae(second.exports[0])  # the group count travels in the file's metadata
    stage_one = load_vae(first.exports[0])
    for key, value in stage_one.module.state_dict().items():  # frozen: exactly the stage-1 weights
        assert torch.equal(vae.spatial_vae.module.state_dict()[key], value), key
    assert read_checkpoint(second.exports[0]).class_name == "VideoAutoencoderPipeline"
    log = [json.loads(line) for line in (second.exports[0].parents[1] / "loss.jsonl").read_text().splitlines()]
    assert all(entry["pixel"] == 0.0 and entry["first_frame"] >= 0.0 for entry in log)

    # third stage: only the temporal encoder moves, held to its start; decoder and shift/scale stay
    _, third = _run(workspace, "vae_first_frame", run={"max_steps": 2, "task": "vae"},
                    vae_training={"checkpoint": str(second.exports[0]), "freeze_spatial": True,
                                  "train_only": ["temporal_vae.encoder", "temporal_vae.quant_conv"],
                                  "pixel_weight": 0.0, "latent_weight": 1.0, "first_frame_weight": 1.0,
                                  "encoder_anchor_weight": 1.0, "calibrate_batches": 0},
                    optimizer={"lr": 1e-2}, data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    tuned = load_vae(third.exports[0])
    before, after = vae.state_dict(), tuned.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("temporal_vae.encoder", "temporal_vae.quant_conv")) for k in moved), moved
    log = [json.loads(line) for line in (third.exports[0].parents[1] / "loss.jsonl").read_text().splitlines()]
    assert log[0]["anchor"] == pytest.approx(0.0, abs=1e-9) and log[-1]["anchor"] > 0.0  # starts at the teacher


def _frozen_spatial_pipeline():
    """A tiny VAE v1.2 with its spatial stage frozen (the temporal stage's training) and its training config."""
    from opensora_train.config import VAETrainingConfig
    from opensora_train.vae_task import build_vae

    vt = VAETrainingConfig(spatial={"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 2},
                           temporal={"filters": 8, "num_res_blocks": 1, "channel_multipliers": [1, 2, 2, 2],
                                     "temporal_downsample": [False, True, True], "num_groups": 2},
                           freeze_spatial=True, pixel_weight=0.0, latent_weight=1.0)
    vae = build_vae(vt)
    vae.spatial_vae.requires_grad_(False)
    return vt, vae


def test_frozen_spatial_moments_are_encoded_once_per_clip_and_give_the_same_loss():
    from opensora_train.vae_task import VAEWithLoss

    vt, vae = _frozen_spatial_pipeline()
    cached = VAEWithLoss(vae, vt)
    uncached = VAEWithLoss(vae, dataclasses.replace(vt, spatial_cache_gb=0.0))
    video = torch.rand(2, 3, 17, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    spatial = vae.spatial_vae.module
    calls = []
    encode = spatial.encode_moments
    spatial.encode_moments = lambda x: calls.append(x.shape[0]) or encode(x)
    losses = []
    for step in range(3):  # the same clips every step, as every epoch of a small set
        losses.append(float(cached(video, torch.Generator().manual_seed(step), ["a", "b"])["loss"]))
    assert calls == [34]  # both clips' 17 frames, once
    assert cached._spatial_cache.used == 2 * 17 * 8 * 2 * 2 * 4  # (T, 2C, h, w) float32 per clip
    for step, loss in enumerate(losses):  # the posterior is still sampled every step: the loss of no cache
        assert float(uncached(video, torch.Generator().manual_seed(step))["loss"]) == pytest.approx(loss, rel=1e-5)
    assert len(set(losses)) == 3
    full = VAEWithLoss(vae, dataclasses.replace(vt, spatial_cache_gb=(17 * 8 * 2 * 2 * 4) / 2**30))  # room for one
    calls.clear()
    full(video, torch.Generator().manual_seed(0), ["a", "b"])
    full(video, torch.Generator().manual_seed(0), ["a", "b"])
    assert calls == [34, 17] and list(full._spatial_cache.moments) == ["a"]


def test_a_batch_of_cached_clips_needs_no_frames_and_a_clip_neither_cached_nor_read_is_an_error():
    from opensora_train.vae_task import VAEWithLoss

    vt, vae = _frozen_spatial_pipeline()
    model = VAEWithLoss(vae, vt)
    video = torch.rand(2, 3, 17, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    read_all = float(model(video, torch.Generator().manual_seed(1), ["a", "b"])["loss"])
    none_read = float(model(None, torch.Generator().manual_seed(1), ["a", "b"], [False, False])["loss"])
    assert none_read == pytest.approx(read_all, rel=1e-6)  # the moments of the first call, the same draws
    calls = []
    encode = vae.spatial_vae.module.encode_moments
    vae.spatial_vae.module.encode_moments = lambda x: calls.append(x.shape[0]) or encode(x)
    mixed = model(video[1:], torch.Generator().manual_seed(1), ["a", "c"], [False, True])  # "c": new, read
    assert calls == [17] and torch.isfinite(mixed["loss"])
    with pytest.raises(RuntimeError, match=r"\['d'\] are neither cached nor read"):
        model(None, torch.Generator().manual_seed(1), ["a", "d"], [False, False])


def test_frozen_spatial_training_reads_each_clip_once(workspace, monkeypatch):
    """With the spatial stage frozen its moments are cached, and the loader skips the frames of cached clips."""
    from opensora_train import vae_task

    spatial = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 2}
    temporal = {"filters": 8, "num_res_blocks": 1, "channel_multipliers": [1, 2, 2, 2],
                "temporal_downsample": [False, True, True], "num_groups": 2}
    _, first = _run(workspace, "vae_spatial_once", run={"max_steps": 1, "task": "vae"},
                    vae_training={"class_name": "VideoAutoencoderKL", "spatial": spatial},
                    data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    reads = []
    read_clip = vae_task.read_clip
    monkeypatch.setattr(vae_task, "read_clip", lambda clip: reads.append((clip.entry.row, tuple(clip.frames)))
                        or read_clip(clip))
    _, second = _run(workspace, "vae_temporal_once", run={"max_steps": 16, "task": "vae"},
                     vae_training={"spatial": spatial, "temporal": temporal, "spatial_checkpoint": str(first.exports[0]),
                                   "freeze_spatial": True, "pixel_weight": 0.0, "latent_weight": 1.0,
                                   "calibrate_batches": 0},
                     checkpoint={"every": 0}, data={"buckets": {"tiny": {"17": [1.0, 1]}}})
    assert len(second.losses) == 16
    assert len(reads) == len(set(reads)) < 16  # 16 clips drawn from 4 videos: the repeats were not read again


def test_one_process_can_run_trainings_of_different_precisions_one_after_the_other(workspace):
    """accelerate keeps one precision per process; the demo build runs its bf16 VAE stage between fp32 ones."""
    for name, precision in (("fp32_first", "no"), ("bf16_next", "bf16"), ("fp32_again", "no")):
        _, result = _run(workspace, name, run={"max_steps": 1, "mixed_precision": precision}, checkpoint={"every": 0})
        assert result.final_step == 1 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))


def test_train_only_freezes_everything_else_and_names_unknown_prefixes():
    from opensora_train.config import VAETrainingConfig
    from opensora_train.vae_task import build_vae, freeze_all_but

    vt = VAETrainingConfig(spatial={"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 2},
                           temporal={"filters": 8, "num_res_blocks": 1, "channel_multipliers": [1, 2, 2, 2],
                                     "temporal_downsample": [False, True, True], "num_groups": 2})
    vae = build_vae(vt)
    freeze_all_but(vae, ["temporal_vae.encoder"])
    trainable = {name.split(".")[1] for name, p in vae.named_parameters() if p.requires_grad}
    assert trainable == {"encoder"}
    with pytest.raises(ValueError, match="train_only: no parameter starts with 'temporal.encoder'"):
        freeze_all_but(vae, ["temporal.encoder"])


# ---------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------


def test_two_process_cpu_run_completes_and_writes_one_checkpoint(workspace):
    root, clips = workspace
    raw = train_support.tiny_config(root, clips=clips, run={"max_steps": 2})
    raw["run"]["output_dir"] = str(root / "ddp")
    raw["cache"] = {"dir": str(root / "cache")}
    config = train_support.write_toml(raw, root / "ddp.toml")
    script = train_support.launcher_script(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "train", "--config", str(config)]  # torchrun; the trainer picks accelerate's MULTI_CPU
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    states = sorted((root / "ddp" / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in states] == ["checkpoint-00000002"]
    assert sorted(p.name for p in states[0].glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    assert len(list((root / "ddp" / "export").glob("*.safetensors"))) == 1
    logged = [json.loads(line) for line in (root / "ddp" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
