"""Training Open-Sora-Plan's OpenSoraT2V_v1_3: the v-prediction objective, the config checks, and tiny CPU
fine-tune / LoRA runs from the released folder layout to an export that loads and generates."""

from __future__ import annotations

import pytest
import torch

import tiny_osp
import train_support
from opensora_core.loading import load_dit, load_vae
from opensora_core.lora import load_lora, merge_lora
from opensora_core.media import write_video
from opensora_core.pipeline import Components, GenerationSpec, generate
from opensora_core.sampling.losses import build_objective
from opensora_core.sampling.vpred_losses import (
    VPredictionObjective,
    add_noise,
    min_snr_weights,
    snr,
    v_prediction_loss,
    velocity,
)
from opensora_core.text.t5 import load_t5_encoder
from opensora_train.config import ConfigError, TrainConfig, from_dict
from opensora_train.trainer import train
from opensora_train.validate import validate_config

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny ops on shared cores: one thread
H, W, FRAMES = 32, 64, 9  # a 32-pixel-multiple bucket, 4n+1 frames
LORA_TARGETS = ["attn1.to_q", "attn1.to_v", "attn2.to_k", "ff.net.2"]


# ---------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8, 3, 4, 8, generator=g), torch.randn(3, 8, 3, 4, 8, generator=g), g


def test_the_batch_mean_is_the_official_min_snr_weighted_v_loss():
    x0, noise, g = _batch()
    objective = build_objective("vprediction")
    t = torch.tensor([10, 500, 990])
    prediction = torch.randn(x0.shape, generator=g)
    ac = objective.alphas_cumprod
    official = v_prediction_loss(prediction, velocity(x0, noise, t, ac), min_snr_weights(snr(t, ac), 5.0))
    ours = objective.losses(prediction, x0, objective.noisy_input(x0, noise, t), noise, t)["loss"].mean()
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=1e-5)  # same sums, grouped per sample first


def test_zero_terminal_snr_makes_the_last_step_pure_noise_with_zero_weight():
    x0, noise, _ = _batch()
    objective = VPredictionObjective()
    last = torch.full((3,), 999)
    torch.testing.assert_close(objective.noisy_input(x0, noise, last), noise, atol=1e-6, rtol=0)
    assert objective.losses(torch.zeros_like(x0), x0, noise, noise, last)["loss"].abs().max() == 0
    assert VPredictionObjective(zero_snr=False).alphas_cumprod[-1] > 0


def test_timesteps_are_integers_over_the_whole_range():
    t = VPredictionObjective().sample_timesteps(4096, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999 and t.float().std() > 250


def test_frame_masks_are_refused():
    x0, noise, _ = _batch()
    with pytest.raises(ValueError, match="no frame masks"):
        VPredictionObjective().noisy_input(x0, noise, torch.tensor([1, 2, 3]), torch.ones(3, 3, dtype=torch.bool))


def test_add_noise_matches_the_ddpm_formula():
    x0, noise, _ = _batch()
    objective = VPredictionObjective()
    t = torch.tensor([0, 400, 800])
    ac = objective.alphas_cumprod[t].reshape(3, 1, 1, 1, 1)
    torch.testing.assert_close(add_noise(x0, noise, t, objective.alphas_cumprod),
                               ac.sqrt() * x0 + (1 - ac).sqrt() * noise)


# ---------------------------------------------------------------------------
# Tiny runs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from opensora_train.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("osp_train")
    clips = root / "clips"
    clips.mkdir()
    for i in range(4):
        write_video(train_support.moving_square(FRAMES + 1, seed=i, height=H, width=W), clips / f"clip{i}.mp4", fps=16)
        (clips / f"clip{i}.txt").write_text(f"a square of colour {i} moves right")
    prepare_dataset(clips, root / "meta.csv", workers=1)
    return root, tiny_osp.save_release(root / "release")


def _config(workspace, name: str, **sections) -> TrainConfig:
    root, release = workspace
    raw = {
        "run": {"output_dir": str(root / name), "max_steps": 4, "tensorboard": False, "progress_bar": False,
                "seed": 3},
        "model": {"checkpoint": str(release["t2v"]), "gradient_checkpointing": False},
        "vae": {"path": str(release["vae"])},
        "text_encoder": {"path": str(release["mt5"])},
        "data": {"csv": str(root / "meta.csv"), "buckets": {"tiny": {str(FRAMES): [1.0, 2]}},
                 "resolutions": {"tiny": {"pixels": H * W, "sizes": {"0.50": [H, W]}}}},
        "optimizer": {"lr": 1e-3},
        "checkpoint": {"every": 0, "keep_last": 1},
        "cache": {"dir": str(root / "cache")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return from_dict(TrainConfig, raw)


def _generate(model, release) -> torch.Tensor:
    components = Components(model, load_vae(release["vae"]), load_t5_encoder(release["mt5"], max_length=512))
    spec = GenerationSpec(prompts=["a square moves right"], height=H, width=W, num_frames=FRAMES, steps=2, seed=1)
    return generate(components, spec).frames


def test_fine_tune_exports_a_v1_3_file_that_loads_and_generates(workspace):
    cfg = _config(workspace, "finetune")
    result = train(cfg)
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    [path] = result.exports
    loaded, base = load_dit(path), load_dit(workspace[1]["t2v"])
    assert loaded.class_name == "OpenSoraT2V_v1_3" and loaded.family.name == "open-sora-plan-v1.3"
    changed = [k for k, v in base.model.state_dict().items() if not torch.equal(v, loaded.model.state_dict()[k])]
    assert changed
    assert _generate(loaded.model, workspace[1]).shape == (1, FRAMES, H, W, 3)


def test_lora_trains_only_adapters_and_merges_into_the_released_model(workspace):
    cfg = _config(workspace, "lora", lora={"enabled": True, "rank": 2, "alpha": 2.0, "targets": LORA_TARGETS})
    [path] = train(cfg).exports
    layers = set(load_lora(path).layers)
    assert "transformer_blocks.0.attn1.to_q" in layers and len(layers) == len(LORA_TARGETS) * tiny_osp.T2V["num_layers"]
    model = load_dit(workspace[1]["t2v"]).model
    before = model.transformer_blocks[0].attn1.to_q.weight.clone()
    merge_lora(model, path)
    assert not torch.equal(before, model.transformer_blocks[0].attn1.to_q.weight)


@pytest.mark.parametrize("sections, key, message", [
    (dict(mask_ratios={"image_head": 0.5}), "mask_ratios", "without condition-frame masks"),
    (dict(data={"resolutions": {"tiny": {"pixels": 48 * 64, "sizes": {"0.75": [48, 64]}}}}), "data.resolutions",
     "multiples of 32"),
    (dict(data={"buckets": {"tiny": {"10": [1.0, 2]}}}), "data.buckets", "4n\\+1|4k\\+1|frame"),
    (dict(objective={"kind": "rflow"}), "objective.kind", "vprediction"),
])
def test_configs_the_release_cannot_train_are_refused(workspace, sections, key, message):
    cfg = _config(workspace, "check", **sections)
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(cfg)
    assert err.value.key == key


def test_the_image_to_video_model_is_not_trainable_here(workspace):
    cfg = _config(workspace, "check", model={"checkpoint": str(workspace[1]["i2v"])})
    with pytest.raises(ConfigError, match="OpenSoraInpaint_v1_3 cannot be trained"):
        validate_config(cfg)
