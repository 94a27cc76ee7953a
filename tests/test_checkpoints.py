"""Checkpoint IO: formats, prefixes, strict loading and atomic saving (generic modules)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from opensora_core import checkpoints as ck
from opensora_core import families


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.register_buffer("table", torch.arange(4.0))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def _weights(seed=1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"proj.weight": torch.randn(4, 3, generator=g), "proj.bias": torch.randn(4, generator=g),
            "table": torch.randn(4, generator=g)}


def _assert_loaded(module: nn.Module, weights: dict[str, torch.Tensor]):
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, weights[name].to(value.dtype))


def test_safetensors_roundtrip_keeps_config(tmp_path):
    path = ck.save_checkpoint(_weights(), tmp_path / "w.safetensors", class_name="Tiny", config={"a": [1, None]})
    got = ck.read_checkpoint(path)
    assert isinstance(got.state_dict, ck.LazyStateDict)
    assert got.class_name == "Tiny" and got.config == {"a": [1, None]}
    module = Tiny()
    ck.load_into(module, got.state_dict)
    _assert_loaded(module, _weights())


def test_lazy_state_dict_reports_shapes_without_loading(tmp_path):
    path = ck.save_checkpoint(_weights(), tmp_path / "w.safetensors")
    state = ck.read_checkpoint(path).state_dict
    assert ck.shape_of(state, "proj.weight") == (4, 3)
    assert sorted(state) == sorted(_weights())


def test_huggingface_folder_with_config(tmp_path):
    ck.save_checkpoint(_weights(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["STDiT3"], "model_type": "STDiT3",
                                                      "torch_dtype": "float32", "depth": 2}))
    got = ck.read_checkpoint(tmp_path)
    assert got.class_name == "STDiT3" and got.config == {"depth": 2}


def test_sharded_folder(tmp_path):
    w = _weights()
    ck.save_checkpoint({"proj.weight": w["proj.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    ck.save_checkpoint({"proj.bias": w["proj.bias"], "table": w["table"]}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"proj.weight": "model-00001-of-00002.safetensors",
                            "proj.bias": "model-00002-of-00002.safetensors", "table": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    module = Tiny()
    ck.load_into(module, ck.read_checkpoint(tmp_path).state_dict)
    _assert_loaded(module, w)


@pytest.mark.parametrize("wrap", [
    lambda w: w,
    lambda w: {"ema": w, "step": 3},
    lambda w: {"state_dict": {f"module.{k}": v for k, v in w.items()}},
    lambda w: {f"model.diffusion_model.{k}": v for k, v in w.items()},
    lambda w: {f"_orig_mod.module.{k}": v for k, v in w.items()},
])
def test_pth_wrappers_and_prefixes_are_unwrapped(tmp_path, wrap):
    torch.save(wrap(_weights()), tmp_path / "w.pth")
    module = Tiny()
    ck.load_into(module, ck.read_checkpoint(tmp_path / "w.pth").state_dict)
    _assert_loaded(module, _weights())


def test_prefix_inside_keys_is_kept():
    state = {"spatial_vae.module.a": torch.zeros(1), "temporal_vae.b": torch.zeros(1)}
    assert ck.strip_prefixes(state) is state


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ck.CheckpointError, match="weights_only=True"):
        ck.read_checkpoint(path)


def test_mismatch_lists_missing_unexpected_and_misshaped():
    w = _weights()
    w["proj.weight"] = torch.zeros(5, 3)
    w["extra"] = w.pop("table")
    with pytest.raises(ck.CheckpointMismatchError) as err:
        ck.load_into(Tiny(), w, source="w.safetensors")
    text = str(err.value)
    assert "missing keys (1): table" in text
    assert "unexpected keys (1): extra" in text
    assert "('proj.weight', (5, 3), (4, 3))" in text


def test_dtype_cast_on_load():
    module = Tiny().to(torch.bfloat16)
    ck.load_into(module, _weights())
    assert module.proj.weight.dtype == torch.bfloat16


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(_weights(), tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix_and_missing_path(tmp_path):
    (tmp_path / "w.gguf").write_bytes(b"x")
    with pytest.raises(ck.CheckpointError, match="unsupported checkpoint type"):
        ck.read_checkpoint(tmp_path / "w.gguf")
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.read_checkpoint(tmp_path / "nope.safetensors")


def test_detect_family_names_vae_and_t5():
    vae = {"temporal_vae.encoder.conv_in.conv.weight": torch.zeros(1), "spatial_vae.module.encoder.conv_in.weight": torch.zeros(1)}
    assert families.detect(vae).kind.class_name == "VideoAutoencoderPipeline"
    ldm = {"encoder.down.0.block.0.norm1.weight": torch.zeros(1)}
    assert families.detect(ldm).kind.class_name == "AutoencoderKL"
    t5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(1)}
    assert families.detect(t5).kind.class_name == "T5"
    with pytest.raises(ck.CheckpointError, match="this is a VAE file"):
        families.expect(vae, [families.for_class("STDiT3").model], "vae.safetensors")


# ---------------------------------------------------------------------------
# Damaged files
# ---------------------------------------------------------------------------


def _damaged(tmp_path, kind: str):
    """A weights file as a failed download leaves it: empty, cut short, or something else entirely."""
    good = ck.save_checkpoint(_weights(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "html": b"<!DOCTYPE html><html>Not found</html>",
               "lfs": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n"}[kind]
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    return path, len(content)


DAMAGE = ["empty", "truncated", "html", "lfs"]


def _loaders():
    from opensora_core.loading import load_dit, load_vae
    from opensora_core.lora import load_lora
    from opensora_core.text.t5 import load_t5_file

    return {
        "read_checkpoint": ck.read_checkpoint,
        "load_dit": load_dit,
        "load_vae": load_vae,
        "load_t5_file": lambda p: load_t5_file(p, dtype=torch.float32, device="cpu"),
        "load_lora": load_lora,
    }


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("loader", ["read_checkpoint", "load_dit", "load_vae", "load_t5_file", "load_lora"])
def test_a_damaged_safetensors_file_is_named_with_its_size_and_the_fix(tmp_path, kind, loader):
    path, size = _damaged(tmp_path, kind)
    with pytest.raises(ck.CheckpointError) as err:
        _loaders()[loader](path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a valid safetensors file ({size} bytes") and message.endswith(
        "download it again")
    assert ("Git LFS pointer" in message) == (kind == "lfs")


def test_a_damaged_t5_folder_names_the_weights_file(tmp_path):
    import tiny
    from opensora_core.text.t5 import load_t5_encoder

    folder = tmp_path / "t5"
    tiny.t5_model().save_pretrained(folder)
    tiny.t5_tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match=f"{weights}: not a valid safetensors file \\(100 bytes"):
        load_t5_encoder(folder, max_length=8)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut"], ids=["empty", "truncated"])
def test_a_damaged_pickle_checkpoint_is_named_as_damaged_not_unsafe(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(ck.CheckpointError, match=r"model\.pth: not a valid PyTorch checkpoint .*download it again"):
        ck.read_checkpoint(path)


def test_a_damaged_config_json_is_named(tmp_path):
    ck.save_checkpoint(_weights(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"hidden_size": 7,')
    with pytest.raises(ck.CheckpointError, match=r"config\.json: not a valid JSON file .*download it again"):
        ck.read_checkpoint(tmp_path)
