"""The Open-Sora 2.0 MMDiT: released layout on the meta device, config handling, RoPE variant, code paths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import reference_dir
from tiny_v2 import TINY, inputs, mmdit

from opensora_core.families import build_model
from opensora_core.models.mmdit import (
    MMDiTModel,
    pack,
    parameter_count,
    position_ids,
    unpack,
)
from opensora_core.models.mmdit_layers import (
    apply_rope_interleaved,
    apply_rope_rotate_half,
    interleaved_rope_tables,
    rope_tables,
    timestep_embedding,
)


def _manifest() -> dict:
    root = reference_dir()
    path = None if root is None else root / "v2_0" / "manifest_mmdit_v2_0.json"
    if path is None or not path.is_file():
        pytest.skip("Open-Sora 2.0 reference set not found: set OPENSORA_REFERENCE_DIR to shared/reference")
    return json.loads(path.read_text())


def test_released_config_matches_the_manifest_key_for_key():
    """The full 11B model from the released config: same keys, order, shapes and parameter count."""
    manifest = _manifest()
    with torch.device("meta"):
        model = build_model("MMDiTModel", manifest["config"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == manifest["key_order"]
    assert shapes == manifest["params"]
    assert sum(p.numel() for p in model.parameters()) == manifest["counts"]["param_elements"]
    assert not list(model.buffers())


def test_released_preset_is_the_manifest_config():
    manifest = _manifest()
    assert parameter_count(MMDiTModel.PRESETS["OpenSora-v2-MMDiT"]) == manifest["counts"]["param_elements"]


def test_flux_preset_uses_fused_projections_and_a_guidance_embedder():
    with torch.device("meta"):
        model = MMDiTModel.from_preset("FLUX.1-dev", depth=1, depth_single_blocks=1)
    keys = set(model.state_dict())
    fused = {"double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight"}
    assert fused <= keys
    assert not any(k.startswith("cond_in") for k in keys)


def test_unknown_and_missing_config_keys_are_named():
    with pytest.raises(ValueError, match="'hidden_dim'"):
        build_model("MMDiTModel", {**TINY, "hidden_dim": 3})
    missing = dict(TINY)
    del missing["depth"]
    with pytest.raises(ValueError, match="depth"):
        build_model("MMDiTModel", missing)
    with pytest.raises(ValueError, match="axes_dim"):
        build_model("MMDiTModel", {**TINY, "axes_dim": [4, 14, 12]})


def test_official_file_keys_are_accepted():
    """The config dict of 256px.py carries type and from_pretrained; they describe the file only."""
    model = build_model("MMDiTModel", {**TINY, "type": "flux", "from_pretrained": "./ckpts/Open_Sora_v2.safetensors"})
    assert model.config.hidden_size == 64


def test_condition_is_required_by_the_released_model():
    model, kwargs = mmdit(), inputs()
    kwargs.pop("cond")
    with pytest.raises(ValueError, match="cond"):
        model(**kwargs)


def test_inference_path_equals_the_autograd_path():
    """Without autograd the blocks overwrite their temporaries; with it they do not. Same float32 maths, so
    the two agree to rounding (1e-6 on outputs of size ~0.5)."""
    model, kwargs = mmdit(), inputs()
    with torch.no_grad():
        fast = model(**kwargs)
    slow = model(**kwargs)
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), atol=1e-6, rtol=1e-5)


def test_gradients_reach_every_parameter():
    model, kwargs = mmdit(), inputs()
    model.train()
    model(**kwargs).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_fused_qkv_model_runs_and_uses_the_interleaved_rope():
    model = mmdit(fused_qkv=True, use_liger_rope=False, cond_embed=False)
    kwargs = inputs()
    kwargs.pop("cond")
    with torch.no_grad():
        out = model(**kwargs)
    assert out.shape == kwargs["img"].shape and torch.isfinite(out).all()
    assert not model.pe_embedder.rotate_half


def test_timestep_embedding_scales_t_by_1000():
    """t = 0 gives [cos 0 | sin 0] = [1 | 0]; t = 1e-3 gives the sinusoid of 1 (first frequency 1)."""
    emb = timestep_embedding(torch.tensor([0.0, 1e-3]))
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    assert emb[1, 0] == pytest.approx(math.cos(1.0), abs=1e-6) and emb[1, 128] == pytest.approx(math.sin(1.0), abs=1e-6)


def test_rotate_half_rope_equals_interleaved_rope_on_permuted_head_dims():
    """FACTS: the released rotate-half RoPE and Flux's interleaved one give the same attention scores when
    the head dims of q and k are reordered 2j <- j, 2j+1 <- D/2 + j."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 9, (1, 10, 3), generator=g).float()
    q, k = torch.randn(2, 1, 10, 2, 32, generator=g)
    half = apply_rope_rotate_half(q.clone(), *rope_tables(ids, (4, 14, 14), 10000))
    khalf = apply_rope_rotate_half(k.clone(), *rope_tables(ids, (4, 14, 14), 10000))
    order = torch.stack([torch.arange(16), torch.arange(16) + 16], dim=-1).flatten()  # 2j <- j, 2j+1 <- 16+j
    tables = interleaved_rope_tables(ids, (4, 14, 14), 10000)
    qi, ki = apply_rope_interleaved(q[..., order], *tables), apply_rope_interleaved(k[..., order], *tables)
    scores_half = torch.einsum("blhd,bmhd->bhlm", half, khalf)
    scores_inter = torch.einsum("blhd,bmhd->bhlm", qi, ki)
    torch.testing.assert_close(scores_half, scores_inter, atol=1e-5, rtol=1e-5)
    assert (half - apply_rope_interleaved(q, *tables)).abs().max() > 1e-2  # the variants differ as such


def test_rope_tables_repeat_the_axis_angles():
    """cos for ids (t, h, w) = (1, 2, 3): the first 2 entries are cos(1 * theta^(-2j/4)), then h, then w."""
    cos, sin = rope_tables(torch.tensor([[[1.0, 2.0, 3.0]]]), (4, 14, 14), 10000)
    assert cos.shape == (1, 1, 32) and torch.equal(cos[..., :16], cos[..., 16:])
    assert cos[0, 0, 1].item() == pytest.approx(math.cos(1.0 * 10000 ** (-2 / 4)), abs=1e-6)
    assert sin[0, 0, 2].item() == pytest.approx(math.sin(2.0), abs=1e-6)


def test_pack_orders_tokens_frame_then_row_then_column():
    z = torch.arange(2 * 16 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 16, 3, 4, 6)
    tokens = pack(z)
    assert tokens.shape == (2, 3 * 2 * 3, 64)
    assert tokens[0, 4, :4].tolist() == z[0, 0, 0, 2:4, 2:4].flatten().tolist()  # token 4 = frame 0, row 1, col 1
    assert torch.equal(unpack(tokens, 3, 4, 6), z)
    ids = position_ids(1, 3, 4, 6)
    assert ids[0, 4].tolist() == [0.0, 1.0, 1.0] and ids[0, -1].tolist() == [2.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="patch size"):
        pack(torch.zeros(1, 16, 1, 3, 4))
