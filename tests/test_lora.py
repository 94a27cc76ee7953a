"""LoRA layers, the ComfyUI key format, loading and merging (opensora_core.lora)."""

from __future__ import annotations

import pytest
import torch

import tiny
from opensora_core.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    add_lora,
    comfy_lora_from_state,
    fuse_lora,
    fuse_lora_state,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
)


def _inputs(batch=1, frames=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, frames, 4, 6, generator=g)
    y = torch.randn(batch, 1, tiny.MAX_LENGTH, tiny.CAPTION_CHANNELS, generator=g)
    mask = torch.zeros(batch, tiny.MAX_LENGTH, dtype=torch.int64)
    mask[:, :5] = 1
    return dict(x=x, timestep=torch.tensor([500.0] * batch), y=y, mask=mask, fps=torch.tensor([24.0]),
                height=torch.tensor([32.0]), width=torch.tensor([48.0]))


def _trained_lora_model(seed=0):
    model = tiny.stdit3(seed)
    add_lora(model, rank=4, alpha=2.0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_adapters_wrap_the_targets_and_keep_base_keys():
    model = tiny.stdit3()
    base_keys = set(model.state_dict())
    paths = add_lora(model, rank=4)
    assert {p.split(".", 2)[2] for p in paths} == set(DEFAULT_TARGETS)
    assert len(paths) == 2 * len(DEFAULT_TARGETS)  # one spatial + one temporal block
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert keys - base_keys == {f"{p}.lora_{s}.weight" for p in paths for s in "AB"}
    fresh = tiny.stdit3()
    torch.testing.assert_close(model(**_inputs()), fresh(**_inputs()))  # lora_B starts at zero


def test_export_keys_have_the_comfyui_form(tmp_path):
    model = _trained_lora_model()
    tensors = lora_state_dict(model)
    assert "diffusion_model.spatial_blocks.0.attn.qkv.lora_A.weight" in tensors
    assert "diffusion_model.temporal_blocks.0.cross_attn.kv_linear.lora_B.weight" in tensors
    assert tensors["diffusion_model.spatial_blocks.0.mlp.fc1.alpha"].item() == 2.0
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha"))
               for k in tensors)
    assert tensors["diffusion_model.spatial_blocks.0.attn.qkv.lora_A.weight"].shape == (4, 64)
    assert tensors["diffusion_model.spatial_blocks.0.attn.qkv.lora_B.weight"].shape == (192, 4)
    path = save_lora(model, tmp_path / "a.safetensors")
    loaded = load_lora(path)
    assert len(loaded.layers) == 14 and loaded.layers["spatial_blocks.0.attn.qkv"].alpha == 2.0
    qkv = loaded.layers["spatial_blocks.0.attn.qkv"]
    torch.testing.assert_close(qkv.up, model.spatial_blocks[0].attn.qkv.lora_B.weight)


def test_merging_the_file_reproduces_the_trained_model(tmp_path):
    trained = _trained_lora_model()
    path = save_lora(trained, tmp_path / "lora.safetensors")
    base = tiny.stdit3()
    merged = merge_lora(base, path, strength=1.0)
    assert len(merged) == 14
    torch.testing.assert_close(base(**_inputs()), trained(**_inputs()), atol=2e-5, rtol=1e-5)


def test_strength_scales_and_fused_state_matches():
    trained = _trained_lora_model()
    lora = load_lora(lora_state_dict(trained))
    half, full = tiny.stdit3(), tiny.stdit3()
    merge_lora(half, lora, 0.5)
    merge_lora(full, lora, 1.0)
    base = tiny.stdit3().state_dict()
    key = "spatial_blocks.0.attn.qkv.weight"
    torch.testing.assert_close(2 * (half.state_dict()[key] - base[key]), full.state_dict()[key] - base[key])
    fused = fuse_lora_state(trained.state_dict(), 2.0)
    torch.testing.assert_close(fused[key], full.state_dict()[key])
    fuse_lora(trained)
    assert not any(isinstance(m, LoRALinear) for m in trained.modules())
    torch.testing.assert_close(trained.state_dict()[key], full.state_dict()[key])


def test_other_spellings_load_and_mismatches_raise():
    down, up = torch.randn(2, 64), torch.randn(192, 2)
    kohya = load_lora({"lora_unet_spatial_blocks_0_attn_qkv.lora_down.weight": down,
                       "lora_unet_spatial_blocks_0_attn_qkv.lora_up.weight": up,
                       "lora_unet_spatial_blocks_0_attn_qkv.alpha": torch.tensor(1.0)})
    model = tiny.stdit3()
    before = model.spatial_blocks[0].attn.qkv.weight.clone()
    assert merge_lora(model, kohya) == ["spatial_blocks.0.attn.qkv"]
    torch.testing.assert_close(model.spatial_blocks[0].attn.qkv.weight - before, up @ down * 0.5)
    with pytest.raises(ValueError, match="does not have"):
        merge_lora(tiny.stdit2(), kohya)
    with pytest.raises(ValueError, match="another model size"):
        merge_lora(tiny.stdit3(), load_lora({"spatial_blocks.0.attn.qkv.lora_A.weight": torch.randn(2, 32),
                                             "spatial_blocks.0.attn.qkv.lora_B.weight": torch.randn(192, 2)}))
    with pytest.raises(ValueError, match="does not know"):
        load_lora({"spatial_blocks.0.attn.qkv.hada_w1_a": torch.randn(2, 2)})
    with pytest.raises(ValueError, match="matches the LoRA targets"):
        add_lora(tiny.stdit3(), 4, targets=["nothing.here"])
    assert comfy_lora_from_state({"a.lora_A.weight": down, "a.lora_B.weight": up}, 3.0)["diffusion_model.a.alpha"] == 3


def test_merging_into_fp8_weights_requantizes_the_updated_weight():
    """The memory loader's fp8 layers take a LoRA: dequantize, add, quantize again (a new per-layer scale)."""
    from opensora_core.models.fp8 import Fp8Linear

    g = torch.Generator().manual_seed(0)
    fp8 = Fp8Linear(64, 192, bias=False)
    fp8.set_weight(torch.randn(192, 64, generator=g) * 0.05)
    before = fp8.dequantized()
    plain = torch.nn.Linear(64, 192, bias=False).requires_grad_(False)
    plain.weight.copy_(before)
    lora = load_lora({"diffusion_model.qkv.lora_A.weight": torch.randn(4, 64, generator=g) * 0.2,
                      "diffusion_model.qkv.lora_B.weight": torch.randn(192, 4, generator=g) * 0.2,
                      "diffusion_model.qkv.alpha": torch.tensor(4.0)})
    assert merge_lora(torch.nn.ModuleDict({"qkv": fp8}), lora) == ["qkv"]
    merge_lora(torch.nn.ModuleDict({"qkv": plain}), lora)
    expected, got = plain.weight, fp8.dequantized()
    # e4m3 keeps 3 mantissa bits: each element is within 2^-4 of its magnitude, or of the subnormal step
    assert ((got - expected).abs() <= expected.abs() * 2**-4 + fp8.scale_weight * 2**-9).all()
    assert (got - before).abs().mean() > 4 * (got - expected).abs().mean()  # the update is well above rounding
