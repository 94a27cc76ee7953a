"""Open-Sora-Plan v1.3 transformers: released key layout, attention pattern, Skiparse, RoPE-3D, masks, errors.

Tiny models keep the released layer count where the index rule matters (32 layers: full attention in layers
0, 1, 30, 31) and use 2 heads x 12 channels (RoPE-3D needs head_dim divisible by 6).
"""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from torch import nn

from opensora_core.families import build_model
from opensora_core.models.osp_layers import (
    SKIPARSE_PAD_BIAS,
    AttentionContext,
    Skiparse,
    apply_rope_3d,
    latent_mask_bias,
    layer_skiparse,
    rope_3d_tables,
)
from opensora_core.models.osp_v1_3 import (
    INPAINT_PRESETS,
    T2V_PRESETS,
    OpenSoraInpaint_v1_3,
    OpenSoraT2V_v1_3,
)

MANIFEST = "osp/manifest_opensora_t2v_v1_3_any93x640x640.json"
TINY = dict(
    num_attention_heads=2, attention_head_dim=12, in_channels=8, out_channels=8, num_layers=32,
    cross_attention_dim=24, patch_size=2, patch_size_t=1, activation_fn="gelu-approximate",
    caption_channels=16, sparse1d=True, sparse_n=4,
)
# inpainting checkpoint keys beyond the T2V ones (FACTS §15), at the released width
INPAINT_EXTRA = {
    "pos_embed_masked_hidden_states.0.proj.weight": [2304, 8, 2, 2],
    "pos_embed_masked_hidden_states.0.proj.bias": [2304],
    "pos_embed_masked_hidden_states.1.weight": [2304, 2304],
    "pos_embed_mask.0.proj.weight": [2304, 4, 2, 2],
    "pos_embed_mask.0.proj.bias": [2304],
    "pos_embed_mask.1.weight": [2304, 2304],
}


def _manifest(reference) -> dict:
    return json.loads((reference / MANIFEST).read_text())


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _tiny(cls=OpenSoraT2V_v1_3, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    config = cls.CONFIG(**{**TINY, **overrides})
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 if p.dim() == 2 else 0.05)  # sharp attention so that masks/RoPE/grouping show
    return model


def _inputs(batch=2, frames=3, h=6, w=10, channels=8, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, channels, frames, h, w, generator=g),
        timestep=torch.tensor([999.0, 321.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 1, length, TINY["caption_channels"], generator=g),
        encoder_attention_mask=torch.ones(batch, 1, length),
    )


# ---------------------------------------------------------------------------
# Released layout (meta device)
# ---------------------------------------------------------------------------


def test_release_preset_state_dict_equals_manifest_key_for_key(reference):
    manifest = _manifest(reference)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_preset("OpenSoraT2V_v1_3-2B/122")
    assert list(model.state_dict()) == manifest["key_order"]
    assert _shapes(model) == manifest["params"]
    assert sum(p.numel() for p in model.parameters()) == manifest["counts"]["param_elements"]


def test_build_model_from_the_released_config_equals_manifest(reference):
    manifest = _manifest(reference)
    with torch.device("meta"):
        model = build_model(manifest["class"], manifest["config"])
    assert _shapes(model) == manifest["params"] and not list(model.buffers())


def test_release_preset_attention_pattern_equals_manifest(reference):
    manifest = _manifest(reference)
    with torch.device("meta"):
        model = OpenSoraT2V_v1_3.from_preset("OpenSoraT2V_v1_3-2B/122")
    pattern = [{"layer": i, "sparse1d": s is not None, "sparse_group": i % 2 == 1}
               for i, s in enumerate(model.attention_pattern())]
    assert pattern == manifest["layer_attention_pattern"]
    assert all(s.n == 4 and s.group == (i % 2 == 1) for i, s in enumerate(model.attention_pattern()) if s)


def test_inpaint_preset_is_the_t2v_layout_plus_the_condition_embeddings(reference):
    manifest = _manifest(reference)
    with torch.device("meta"):
        model = OpenSoraInpaint_v1_3.from_preset("OpenSoraInpaint_v1_3-2B/122")
    assert _shapes(model) == {**manifest["params"], **INPAINT_EXTRA}
    assert sum(p.numel() for p in model.parameters()) == 2_782_713_632  # FACTS §15 (measured on the official class)


def test_presets_carry_the_release_settings():
    for config in [*T2V_PRESETS.values(), *INPAINT_PRESETS.values()]:
        assert (config.num_layers, config.hidden_size, config.sparse1d, config.sparse_n) == (32, 2304, True, 4)
    assert INPAINT_PRESETS["OpenSoraInpaint_v1_3-2B/122"].vae_scale_factor_t == 4


def test_diffusers_config_json_keys_are_accepted_and_unknown_keys_rejected():
    config = {**TINY, "_class_name": "OpenSoraT2V_v1_3", "_diffusers_version": "0.30.2", "sample_size_h": 80}
    with torch.device("meta"):
        build_model("OpenSoraT2V_v1_3", config)
        with pytest.raises(ValueError, match="use_rope"):
            build_model("OpenSoraT2V_v1_3", {**TINY, "use_rope": True})


@pytest.mark.parametrize("bad, message", [
    (dict(attention_head_dim=8), "divisible by 6"),
    (dict(patch_size_t=2), "patch_size_t"),
    (dict(cross_attention_dim=32), "cross_attention_dim"),
    (dict(caption_channels=None), "caption_channels"),
    (dict(activation_fn="swish"), "activation_fn"),
])
def test_invalid_configs_raise(bad, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        build_model("OpenSoraT2V_v1_3", {**TINY, **bad})


def test_layers_are_built_through_the_operations_namespace():
    made = []

    def factory(cls):
        return lambda *a, **k: made.append(cls.__name__) or cls(*a, **k)

    ops = types.SimpleNamespace(Linear=factory(nn.Linear), Conv2d=factory(nn.Conv2d), LayerNorm=factory(nn.LayerNorm))
    model = OpenSoraInpaint_v1_3(OpenSoraInpaint_v1_3.CONFIG(**TINY), operations=ops)
    weights = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm))]
    assert len(made) == len(weights) and made.count("Conv2d") == 3


def test_device_and_dtype_arguments_place_every_parameter():
    model = OpenSoraT2V_v1_3(OpenSoraT2V_v1_3.CONFIG(**{**TINY, "num_layers": 3}), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = model(**_inputs())
    assert out.dtype == torch.float32 and out.shape == (2, 8, 3, 6, 10)


# ---------------------------------------------------------------------------
# Attention pattern and Skiparse
# ---------------------------------------------------------------------------


def test_layer_rule_is_full_attention_outside_layers_2_to_29():
    pattern = [layer_skiparse(i, 32, True, 4) for i in range(32)]
    assert [i for i, s in enumerate(pattern) if s is None] == [0, 1, 30, 31]
    assert layer_skiparse(5, 32, False, 4) is None and layer_skiparse(5, 32, True, 1) is None


@pytest.mark.parametrize("group", [False, True])
def test_skiparse_merge_inverts_split(group):
    sparse = Skiparse(4, group)
    x = torch.randn(2, 48, 3)
    assert torch.equal(sparse.merge(sparse.split(x)), x)


def _group_of(index: int, n: int, group: bool) -> int:
    """Single skip: token i is in group i mod n; group skip: tokens (N, m, k) of i = N*n*n + m*n + k in group m."""
    return (index // n) % n if group else index % n


@pytest.mark.parametrize("group", [False, True])
def test_skiparse_groups_follow_the_release_rule(group):
    sparse = Skiparse(4, group)
    index = torch.arange(48, dtype=torch.float32)[None, :, None]  # (1, 48, 1)
    groups = sparse.split(index)[..., 0]  # (4, 12): token indices per group
    for g in range(4):
        assert {_group_of(int(i), 4, group) for i in groups[g]} == {g}


def test_skiparse_padding_keys_get_the_padding_bias():
    bias = Skiparse(4, False).bias(torch.zeros(1, 45))  # 45 tokens -> 48
    assert bias.shape == (4, 1, 1, 12)
    assert sorted(bias.flatten().tolist()).count(SKIPARSE_PAD_BIAS) == 3


@pytest.mark.parametrize("group", [False, True])
def test_skiparse_attention_equals_full_attention_restricted_to_each_group(group):
    """With S a multiple of n^2 (no padding), Skiparse = full attention with a mask allowing same-group pairs."""
    model = _tiny(num_layers=1)
    attn = model.transformer_blocks[0].attn1
    grid, S = (1, 4, 8), 32
    x = torch.randn(2, S, 24)
    rope = rope_3d_tables(grid, 12, (1.0, 1.0, 1.0), x.device, x.dtype)
    ctx = AttentionContext(grid, rope, torch.zeros(2, S), torch.zeros(2, 1))
    sparse_out = attn.self_attention(x, ctx, Skiparse(4, group))
    groups = torch.tensor([_group_of(i, 4, group) for i in range(S)])
    blocked = torch.where(groups[:, None] == groups[None], 0.0, float("-inf"))  # (S, S)
    q, k, v = (attn._heads(t).transpose(1, 2) for t in (
        apply_rope_3d(attn._heads(attn.to_q(x)), *rope).flatten(2),
        apply_rope_3d(attn._heads(attn.to_k(x)), *rope).flatten(2), attn.to_v(x)))
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=blocked)
    expected = attn._project(dense.transpose(1, 2).flatten(2))
    torch.testing.assert_close(sparse_out, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# RoPE-3D and masks
# ---------------------------------------------------------------------------


def test_rope_3d_scores_depend_on_position_differences_only():
    """<R(p) q, R(p') k> is unchanged when both positions shift by the same (t, y, x) offset (up to the float32
    rounding of the angles, which the official tables compute in float32)."""
    grid = (4, 5, 6)
    cos, sin = rope_3d_tables(grid, 12, (1.0, 1.0, 1.0), "cpu", torch.float64)
    q, k = torch.randn(1, 1, 1, 12, dtype=torch.float64), torch.randn(1, 1, 1, 12, dtype=torch.float64)

    def index(t, y, x):
        return (t * grid[1] + y) * grid[2] + x

    def score(p, p2):
        rq = apply_rope_3d(q, cos[index(*p)][None], sin[index(*p)][None])
        rk = apply_rope_3d(k, cos[index(*p2)][None], sin[index(*p2)][None])
        return float((rq * rk).sum())

    assert score((0, 1, 2), (1, 3, 0)) == pytest.approx(score((2, 2, 5), (3, 4, 3)), rel=1e-6)
    assert score((0, 1, 2), (1, 3, 0)) != pytest.approx(score((0, 1, 2), (1, 3, 1)), rel=1e-3)


def test_rope_interpolation_scale_divides_positions():
    cos2, _ = rope_3d_tables((4, 1, 1), 12, (2.0, 1.0, 1.0), "cpu", torch.float64)
    cos1, _ = rope_3d_tables((4, 1, 1), 12, (1.0, 1.0, 1.0), "cpu", torch.float64)
    torch.testing.assert_close(cos2[2, :4], cos1[1, :4])  # t-part of position 2 at scale 2 = position 1


def test_latent_mask_is_max_pooled_over_the_patch():
    """A 2x2 patch with one valid latent pixel is a valid token (bias 0); an all-invalid patch gets -10000."""
    mask = torch.zeros(1, 1, 2, 4)
    mask[0, 0, 1, 1] = 1  # one pixel of the first patch
    bias = latent_mask_bias(mask, 1, (1, 1, 2), (1, 2, 2), torch.float32, mask.device)
    assert bias.tolist() == [[0.0, -10000.0]]


def test_text_mask_changes_the_output_and_padding_values_do_not():
    model = _tiny(num_layers=2)
    inputs = _inputs()
    inputs["encoder_attention_mask"][0, 0, 3:] = 0
    with torch.no_grad():
        out = model(**inputs)
        changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        changed["encoder_hidden_states"][0, 0, 3:] += 5.0  # masked tokens only
        same = model(**changed)
        unmasked = model(**dict(inputs, encoder_attention_mask=None))
    torch.testing.assert_close(same, out, atol=1e-5, rtol=1e-5)
    assert (unmasked - out).abs().max() > 1e-3


# ---------------------------------------------------------------------------
# Forward contract
# ---------------------------------------------------------------------------


def test_none_masks_equal_all_ones_masks():
    model = _tiny(num_layers=4)
    inputs = _inputs()
    with torch.no_grad():
        ones = model(**inputs, attention_mask=torch.ones(2, 3, 6, 10))
        none = model(**dict(inputs, encoder_attention_mask=None))
    torch.testing.assert_close(none, ones, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(hidden_states=torch.randn(2, 8, 3, 7, 10)), "divisible by the patch size 2"),
    (dict(hidden_states=torch.randn(2, 9, 3, 6, 10)), "channels"),
    (dict(encoder_hidden_states=torch.randn(1, 1, 5, 16)), "encoder_hidden_states"),
    (dict(attention_mask=torch.ones(2, 6, 10)), "attention_mask"),
])
def test_bad_inputs_raise(change, message):
    model = _tiny(num_layers=1)
    with pytest.raises(ValueError, match=message):
        model(**{**_inputs(), **change})


def test_return_dict_true_is_rejected():
    with pytest.raises(ValueError, match="return_dict"):
        _tiny(num_layers=1)(**_inputs(), return_dict=True)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = _tiny(num_layers=3).train()
    inputs = _inputs()
    loss = model(**inputs).square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    loss_ckpt = model(**inputs).square().mean()
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_inpaint_model_with_zero_condition_projections_is_the_t2v_model():
    """The official init zeroes the condition Linears: the inpainting model then ignores channels 8:20."""
    inpaint = _tiny(OpenSoraInpaint_v1_3, num_layers=4)
    inpaint.zero_condition_projections()
    t2v = OpenSoraT2V_v1_3(dataclasses.replace(OpenSoraT2V_v1_3.CONFIG(**{**TINY, "num_layers": 4}))).eval()
    shared = {k: v for k, v in inpaint.state_dict().items() if not k.startswith("pos_embed_mask")}
    t2v.load_state_dict(shared, strict=True)
    inputs = _inputs()
    condition = torch.randn(2, 12, 3, 6, 10)
    with torch.no_grad():
        out = inpaint(**dict(inputs, hidden_states=torch.cat([inputs["hidden_states"], condition], 1)))
        expected = t2v(**inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_inpaint_model_reads_the_condition_channels():
    model = _tiny(OpenSoraInpaint_v1_3, num_layers=2)
    inputs = _inputs()
    x = torch.cat([inputs["hidden_states"], torch.zeros(2, 12, 3, 6, 10)], 1)
    with torch.no_grad():
        base = model(**dict(inputs, hidden_states=x))
        x[:, 16:] = 1.0  # the 4 mask channels
        masked = model(**dict(inputs, hidden_states=x))
    assert (masked - base).abs().max() > 1e-3
