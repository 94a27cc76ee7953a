"""Trainer config: TOML loading, overrides, and validation errors that name the key."""

from __future__ import annotations

import pytest
import torch

import train_support
from conftest import REPO
from opensora_train.cli import main
from opensora_train.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_config, parse_override
from opensora_train.validate import validate_config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    clips = train_support.write_clips(root / "clips", count=2)
    return train_support.tiny_config(root, clips=clips)


def _config(base, **changes) -> TrainConfig:
    raw = apply_overrides(base, [f"{k.replace('__', '.')}={v}" for k, v in changes.items()])
    return from_dict(TrainConfig, raw)


def test_a_complete_tiny_config_validates(base):
    validate_config(_config(base))


def test_unknown_keys_and_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match=r"^optimizer\.lrr: unknown key; did you mean lr\?"):
        from_dict(TrainConfig, {"optimizer": {"lrr": 1e-4}})
    with pytest.raises(ConfigError, match=r"^run\.max_steps: expected int, got str"):
        from_dict(TrainConfig, {"run": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match=r"^ema\.enabled: expected bool"):
        from_dict(TrainConfig, {"ema": {"enabled": 1}})
    assert from_dict(TrainConfig, {"optimizer": {"lr": 1}}).optimizer.lr == 1.0  # ints are floats


def test_overrides_are_read_as_toml_values(tmp_path):
    assert parse_override("optimizer.lr=2e-5") == (["optimizer", "lr"], 2e-5)
    assert parse_override("lora.targets=[\"attn.qkv\"]")[1] == ["attn.qkv"]
    assert parse_override("run.output_dir=outputs/x")[1] == "outputs/x"  # not TOML: taken as a string
    path = tmp_path / "c.toml"
    path.write_text('[run]\nmax_steps = 5\n[data.buckets."240p"]\n"51" = [1.0, 2]\n')
    cfg = load_config(path, ["run.max_steps=7", "ema.enabled=true"])
    assert cfg.run.max_steps == 7 and cfg.ema.enabled and cfg.data.buckets == {"240p": {"51": [1.0, 2]}}
    with pytest.raises(ConfigError, match=r"^run\.max_steps: is a value"):
        load_config(path, ["run.max_steps.x=1"])


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"data__csv": '"missing.csv"'}, r"data\.csv"),
        ({"data__buckets": '{ "tiny" = { "17" = [1.0, "two"] } }'}, r"data\.buckets\.tiny\.17"),
        ({"data__buckets": '{ "huge" = { "17" = [1.0, 2] } }'}, r"data\.buckets\.huge"),
        ({"data__buckets": '{ "tiny" = { "8" = [1.0, 2] } }'}, r"data\.buckets: frame counts \[8\]"),
        ({"mask_ratios": '{ "image_sideways" = 0.1 }'}, r"mask_ratios\.image_sideways"),
        ({"lora__enabled": "true"}, r"lora\.enabled"),
        ({"vae__path": '"nowhere.safetensors"'}, r"vae\.path"),
        ({"run__mixed_precision": '"fp8"'}, r"run\.mixed_precision"),
        ({"validation__every": "5"}, r"validation\.prompts"),
        ({"validation__every": "5", "validation__prompts": '["x"]', "validation__num_frames": "9"}, r"validation: "),
        ({"model__class_name": '"STDiT"'}, r"model: STDiT cannot be trained"),
        ({"optimizer__betas": "[0.9]"}, r"optimizer\.betas"),
        ({"optimizer__lr": "inf"}, r"optimizer\.lr: must be a finite number"),
        ({"optimizer__weight_decay": "nan"}, r"optimizer\.weight_decay: must be a finite number"),
        ({"optimizer__grad_clip": "nan"}, r"optimizer\.grad_clip: must be a finite number"),
        ({"objective__scale": "0.0"}, r"objective\.scale: must be positive"),
        ({"objective__loc": "nan"}, r"objective\.loc: must be a finite number"),
        ({"vae__micro_batch_size": "0"}, r"vae\.micro_batch_size: must be >= 1"),
        ({"lora__enabled": "true", "lora__alpha": "0.0"}, r"lora\.alpha: must be positive"),
        ({"validation__every": "5", "validation__prompts": '["x"]', "validation__cfg_scale": "nan"},
         r"validation: cfg_scale must be a finite number"),
        ({"model__config": "{ hidden_size = 64, depth = 1, num_heads = 4, caption_channels = 48, "
                           "model_max_length = 24 }"},
         r"text_encoder\.path: the T5 gives 32-wide"),
    ],
)
def test_validation_errors_name_the_key(base, changes, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate_config(_config(base, **changes))


def test_a_vae_of_the_wrong_family_is_named(base, tmp_path):
    sd = train_support.write_vae(tmp_path / "sd.safetensors", "sd")
    with pytest.raises(ConfigError, match=r"^vae\.path: STDiT3 was trained with the Open-Sora VAE v1\.2"):
        validate_config(_config(base, vae__path=f'"{sd}"'))


def test_cli_reports_config_errors_with_the_key(base, tmp_path, capsys):
    path = train_support.write_toml(base, tmp_path / "c.toml")
    assert main(["check", "--config", str(path)]) == 0
    assert main(["check", "--config", str(path), "--set", "optimizer.lr=-1"]) == 2
    assert "optimizer.lr: must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(str(p.relative_to(REPO / "train" / "configs"))
                                        for p in (REPO / "train" / "configs").rglob("*.toml")))
def test_example_configs_use_only_known_keys(name):
    cfg = load_config(REPO / "train" / "configs" / name)
    assert cfg.data.buckets and cfg.run.output_dir.startswith("outputs/")


def test_accelerate_configs_load_in_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.name: load_config_from_file(str(p)).distributed_type.value
             for p in (REPO / "train" / "configs").glob("accelerate_*.yaml")}
    assert kinds == {"accelerate_ddp.yaml": "MULTI_GPU", "accelerate_fsdp.yaml": "FSDP"}


def test_adamw_takes_the_fused_kernel_and_makes_the_same_update(base):
    from opensora_train.trainer import build_optimizer, fused_adamw_supported

    weights = [torch.nn.Parameter(torch.randn(3, 5, generator=torch.Generator().manual_seed(i))) for i in range(2)]
    reference = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    fused = build_optimizer(_config(base, optimizer__weight_decay=0.1), torch.nn.ParameterList(weights))
    plain = torch.optim.AdamW(reference, lr=fused.defaults["lr"], weight_decay=0.1)
    assert fused.defaults["fused"] is True
    for step in range(3):
        for a, b in zip(weights, reference):
            a.grad = b.grad = torch.randn(3, 5, generator=torch.Generator().manual_seed(10 + step))
        fused.step()
        plain.step()
    for a, b in zip(weights, reference):  # one kernel vs per-tensor ops: the same update up to float rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not fused_adamw_supported([torch.zeros(2, device="meta")])


def test_learning_rate_warms_up_then_decays_to_the_floor():
    from opensora_train.trainer import warmup_scheduler

    def lrs(decay):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = warmup_scheduler(opt, 4, decay=decay, total_steps=14, min_ratio=0.1)
        values = []
        for _ in range(14):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return values

    constant, cosine, linear = lrs("constant"), lrs("cosine"), lrs("linear")
    assert constant[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and constant[-1] == 1.0  # official warm-up
    assert cosine[4] == pytest.approx(1.0) and cosine[9] == pytest.approx(0.55) and cosine[-1] > 0.1
    assert linear[9] == pytest.approx(0.55) and all(a >= b for a, b in zip(linear[4:], linear[5:]))


def test_decay_and_first_frame_settings_are_validated(base):
    with pytest.raises(ConfigError, match="optimizer.decay"):
        validate_config(_config(base, optimizer__decay='"exp"'))
    with pytest.raises(ConfigError, match="vae_training.first_frame_weight"):
        validate_config(_config(base, run__task='"vae"', vae_training__class_name='"VideoAutoencoderKL"',
                                vae_training__first_frame_weight=1.0))
    for bad in ("-1.0", "nan"):  # a size of memory: not negative, not NaN
        with pytest.raises(ConfigError, match="vae_training.spatial_cache_gb"):
            validate_config(_config(base, run__task='"vae"', vae_training__spatial_cache_gb=bad))
        with pytest.raises(ConfigError, match="cache.memory_gb"):
            validate_config(_config(base, cache__memory_gb=bad))


def test_output_dir_that_is_a_file_is_named(base, tmp_path):
    taken = tmp_path / "run.txt"
    taken.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"^run\.output_dir: {taken} is a file, not a folder"):
        validate_config(_config(base, run__output_dir=f'"{taken}"'))
    with pytest.raises(ConfigError, match=rf"^run\.output_dir: {taken / 'sub'} cannot be created: {taken} is a file"):
        validate_config(_config(base, run__output_dir=f'"{taken / "sub"}"'))


def test_a_vae_given_as_the_model_checkpoint_is_named(base):
    vae = base["vae"]["path"]
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: .* holds the Open-Sora VAE v1\.2.*in vae\.path"):
        validate_config(_config(base, model__checkpoint=f'"{vae}"', model__class_name='""', model__config="{}"))


@pytest.mark.parametrize("key", ["model.checkpoint", "vae.path"])
def test_damaged_weight_files_are_named_at_config_time(base, tmp_path, key):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 12)
    changes = {key.replace(".", "__"): f'"{broken}"'}
    if key == "model.checkpoint":
        changes |= {"model__class_name": '""', "model__config": "{}"}
    with pytest.raises(ConfigError, match=rf"^{key}: {broken}: not a valid safetensors file \(12 bytes; .*download"):
        validate_config(_config(base, **changes))


def test_unreadable_data_is_named_at_config_time(base, tmp_path):
    binary = tmp_path / "meta.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(ConfigError, match=r"^data\.csv: .* cannot be read as a UTF-8 CSV"):
        validate_config(_config(base, data__csv=f'"{binary}"'))
    rows = (tmp_path / "rows.csv")
    rows.write_text("path,text,num_frames,height,width\nclips/gone.mp4,a cat,20,32,48\n")
    with pytest.raises(ConfigError, match=r"^data\.csv: 1 of 1 files it lists are missing, e\.g\. row 2: .*gone\.mp4"):
        validate_config(_config(base, data__csv=f'"{rows}"'))


def test_vae_reconstruction_losses_and_their_names(base):
    from opensora_train.vae_task import reconstruction

    out, target = torch.tensor([0.0, 0.5, 3.0]), torch.tensor([0.0, 0.0, 0.0])
    l1, mse = reconstruction("l1", out, target), reconstruction("mse", out, target)
    assert float(l1) == pytest.approx(3.5 / 3) and float(mse) == pytest.approx(9.25 / 3)
    assert float(reconstruction("l1+mse", out, target)) == pytest.approx(float(l1 + mse))
    assert float(reconstruction("l1+mse", out, target, mse_weight=10)) == pytest.approx(float(l1 + 10 * mse))
    validate_config(_config(base, run__task='"vae"', vae_training__class_name='"VideoAutoencoderKL"',
                            vae_training__recon_loss='"l1+mse"'))
    with pytest.raises(ConfigError, match="vae_training.recon_loss"):
        validate_config(_config(base, run__task='"vae"', vae_training__class_name='"VideoAutoencoderKL"',
                                vae_training__recon_loss='"huber"'))
    for weight, wanted in (("-1", ">= 0"), ("nan", "finite"), ("10", 'recon_loss = "l1\\+mse"')):
        with pytest.raises(ConfigError, match=f"vae_training.mse_weight.*{wanted}"):
            validate_config(_config(base, run__task='"vae"', vae_training__class_name='"VideoAutoencoderKL"',
                                    vae_training__mse_weight=weight))
