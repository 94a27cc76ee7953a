"""Behaviour of the STDiT model classes on tiny configs (CPU, float32 unless stated)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from opensora_core.families import build_model
from opensora_core.models import build_preset
from opensora_core.models.stdit import STDiT, STDiTConfig
from opensora_core.models.stdit2 import STDiT2, STDiT2Config
from opensora_core.models.stdit3 import STDiT3, STDiT3Config

TINY3 = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=12)
TINY2 = dict(
    hidden_size=72, depth=2, num_heads=4, caption_channels=32, model_max_length=12, qk_norm=True, input_sq_size=64
)
TINY1 = dict(hidden_size=64, depth=2, num_heads=4, caption_channels=32, model_max_length=12, input_size=(3, 4, 6))


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (default init leaves zero-initialised paths that would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "rope.freqs":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval()


def _inputs3(B=2, T=3, H=6, W=7, lengths=(5, 12), seed=1):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 12, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return dict(
        x=torch.randn(B, 4, T, H, W, generator=gen),
        timestep=torch.tensor([900.0, 30.0][:B]),
        y=torch.randn(B, 1, 12, 32, generator=gen),
        mask=mask,
        fps=torch.full((B,), 24.0),
        height=torch.full((B,), 48.0),
        width=torch.full((B,), 56.0),
    )


def _inputs2(**kw):
    inputs = _inputs3(**kw)
    B, T = inputs["x"].shape[0], inputs["x"].shape[2]
    inputs.update(num_frames=torch.full((B,), float(T)), ar=inputs["height"] / inputs["width"])
    return inputs


@pytest.fixture(scope="module")
def stdit3():
    torch.manual_seed(0)
    return _randomise(STDiT3(STDiT3Config(**TINY3)))


@pytest.fixture(scope="module")
def stdit2():
    torch.manual_seed(0)
    return _randomise(STDiT2(STDiT2Config(**TINY2)))


# ==================================================================================================
# construction
# ==================================================================================================


def test_unknown_official_key_is_rejected_with_its_name():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'hiden_size'.*official STDiT3"):
        build_model("STDiT3", {**TINY3, "hiden_size": 64})


def test_kernel_flags_and_hf_bookkeeping_are_accepted():
    config = {
        **TINY3, "enable_flash_attn": True, "enable_flashattn": True, "enable_layernorm_kernel": True,
        "architectures": ["STDiT3"], "model_type": "STDiT3", "torch_dtype": "float32",
        "transformers_version": "4.36.2", "_name_or_path": "hpcai-tech/OpenSora-STDiT-v3",
    }
    assert isinstance(build_model("STDiT3", config), STDiT3)


def test_v1_0_official_dtype_argument_sets_the_parameter_dtype():
    model = build_model("STDiT", {**TINY1, "dtype": "bf16"})
    assert model.x_embedder.proj.weight.dtype == torch.bfloat16


def test_builds_on_the_meta_device():
    with torch.device("meta"):
        model = build_preset("STDiT2-XL/2")
    assert all(t.is_meta for t in model.state_dict().values())


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="STDiT3-XL/2"):
        build_preset("STDiT4-XL/2")


def test_invalid_head_split_is_a_value_error():
    with pytest.raises(ValueError, match="num_heads"):
        STDiT3Config(hidden_size=64, num_heads=5)


def test_operations_namespace_builds_the_layers():
    """An injected operations namespace (as ComfyUI's) provides every Linear and the patch Conv3d."""
    calls = {"Linear": 0, "Conv3d": 0}

    class CountingLinear(nn.Linear):
        def forward(self, x):
            calls["Linear"] += 1
            return super().forward(x)

    class CountingConv3d(nn.Conv3d):
        def forward(self, x):
            calls["Conv3d"] += 1
            return super().forward(x)

    ops = types.SimpleNamespace(Linear=CountingLinear, Conv3d=CountingConv3d)
    model = STDiT3(STDiT3Config(**TINY3), operations=ops).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, CountingLinear) for m in linears)
    with torch.no_grad():
        model(**_inputs3())
    assert calls["Conv3d"] == 1 and calls["Linear"] >= len(linears)


def test_direct_parameters_in_another_dtype_are_cast_where_used(stdit3):
    """ComfyUI casts Linear/Conv weights per call but leaves tables, the null caption, rope.freqs and
    q/k gains as stored: the model casts them itself."""

    class CastLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    class CastConv3d(nn.Conv3d):
        def forward(self, x):
            return self._conv_forward(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    ops = types.SimpleNamespace(Linear=CastLinear, Conv3d=CastConv3d)
    model = STDiT3(STDiT3Config(**TINY3), operations=ops, dtype=torch.float64).eval()
    model.load_state_dict(stdit3.state_dict())
    model.compute_dtype = torch.float32
    inputs = _inputs3()
    with torch.no_grad():
        out, expected = model(**inputs), stdit3(**inputs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


# ==================================================================================================
# forward semantics
# ==================================================================================================


def test_output_layout_is_cropped_back_after_patch_padding(stdit3):
    with torch.no_grad():
        out = stdit3(**_inputs3(T=2, H=5, W=7))
    assert out.shape == (2, 8, 2, 5, 7) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["stdit3", "stdit2"])
def test_all_true_x_mask_equals_no_x_mask(request, name):
    model = request.getfixturevalue(name)
    inputs = _inputs3() if name == "stdit3" else _inputs2()
    with torch.no_grad():
        plain = model(**inputs)
        masked = model(**inputs, x_mask=torch.ones(2, 3, dtype=torch.bool))
    assert torch.equal(plain, masked)


def test_condition_frames_change_only_through_x_mask(stdit3):
    inputs = _inputs3()
    x_mask = torch.tensor([[False, True, True], [True, True, True]])
    with torch.no_grad():
        plain, masked = stdit3(**inputs), stdit3(**inputs, x_mask=x_mask)
    assert (plain - masked).abs().max() > 1e-3


def test_caption_mask_isolates_samples(stdit3):
    """Block-diagonal cross-attention: each sample's output equals running it alone with its tokens."""
    inputs = _inputs3(lengths=(4, 9))
    with torch.no_grad():
        batched = stdit3(**inputs)
        alone = [stdit3(**{k: v[b : b + 1] for k, v in inputs.items()}) for b in range(2)]
    torch.testing.assert_close(batched, torch.cat(alone), atol=2e-6, rtol=1e-5)


def test_without_a_caption_mask_each_sample_attends_to_its_own_tokens(stdit3):
    """The official model passes per-sample lengths [L] * B to the attention even without a mask, so
    mask=None equals an all-ones mask (the STDiT2 golden out.x_token_mask_none confirms this)."""
    inputs = _inputs3()
    with torch.no_grad():
        without = stdit3(**dict(inputs, mask=None))
        all_ones = stdit3(**dict(inputs, mask=torch.ones_like(inputs["mask"])))
    assert torch.equal(without, all_ones)


def test_padding_tokens_are_ignored(stdit3):
    inputs = _inputs3(lengths=(4, 9))
    changed = dict(inputs, y=inputs["y"].clone())
    changed["y"][0, 0, 4:] = 100.0  # masked tokens of sample 0
    with torch.no_grad():
        torch.testing.assert_close(stdit3(**inputs), stdit3(**changed), atol=1e-6, rtol=0)


def test_caption_mask_is_tiled_for_classifier_free_guidance(stdit3):
    """A mask with half the rows is repeated, so the null half uses the prompt's token mask."""
    inputs = _inputs3(lengths=(4, 4))
    with torch.no_grad():
        full = stdit3(**inputs)
        half = stdit3(**dict(inputs, mask=inputs["mask"][:1], fps=inputs["fps"][:1]))
    assert torch.equal(full, half)


@pytest.mark.parametrize("name", ["stdit3", "stdit2"])
def test_inference_path_matches_the_autograd_path(request, name):
    """Without autograd the model updates its own temporaries in place; the values stay the same and
    the caller's inputs are untouched."""
    model = request.getfixturevalue(name)
    inputs = _inputs3() if name == "stdit3" else _inputs2()
    inputs["x_mask"] = torch.tensor([[False, True, True], [True, True, True]])
    saved = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        fast = model(**inputs)
    with torch.enable_grad():
        reference = model(**inputs)
    assert reference.requires_grad
    torch.testing.assert_close(fast, reference.detach(), atol=2e-6, rtol=1e-5)
    assert all(torch.equal(inputs[k], saved[k]) for k in inputs)


def test_bf16_forward_runs_on_cpu_and_returns_float32(stdit3):
    model = STDiT3(STDiT3Config(**TINY3)).eval()
    model.load_state_dict(stdit3.state_dict())
    model.to(torch.bfloat16)
    inputs = _inputs3()
    with torch.no_grad():
        out, reference = model(**inputs), stdit3(**inputs)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()


def test_v1_0_rejects_a_latent_size_it_was_not_built_for():
    model = STDiT(STDiTConfig(**TINY1)).eval()
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(1, 4, 3, 4, 8), torch.tensor([1.0]), torch.randn(1, 1, 12, 32))


def test_skip_y_embedder_without_lengths_attends_to_every_caption():
    """skip_y_embedder + mask=None: the official code passes no attention mask, so sample 0 also sees
    sample 1's caption tokens; with per-sample lengths it does not."""
    model = _randomise(STDiT3(STDiT3Config(**{**TINY3, "skip_y_embedder": True})))
    inputs = _inputs3()
    inputs["y"] = torch.randn(2, 1, 12, 64)
    other = dict(inputs, y=inputs["y"].clone())
    other["y"][1] += 1.0
    with torch.no_grad():
        mixed = model(**dict(inputs, mask=None))[0] - model(**dict(other, mask=None))[0]
        split = model(**dict(inputs, mask=[12, 12]))[0] - model(**dict(other, mask=[12, 12]))[0]
    assert mixed.abs().max() > 1e-4 and split.abs().max() == 0


# ==================================================================================================
# training
# ==================================================================================================


def test_caption_dropout_replaces_the_whole_caption_by_the_null_caption(stdit3):
    model = STDiT3(STDiT3Config(**{**TINY3, "class_dropout_prob": 1.0}))
    model.load_state_dict(stdit3.state_dict())
    inputs = _inputs3()
    null = dict(inputs, y=model.y_embedder.y_embedding.expand(2, 1, 12, 32))
    model.train()
    with torch.no_grad():
        dropped = model(**inputs)
        model.eval()
        expected = model(**null)
    torch.testing.assert_close(dropped, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["stdit3", "stdit2"])
def test_gradient_checkpointing_gives_identical_outputs_and_gradients(request, name):
    model = request.getfixturevalue(name)
    inputs = _inputs3() if name == "stdit3" else _inputs2()
    inputs["x_mask"] = torch.tensor([[False, True, True], [True, True, False]])
    results = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        out = model(**inputs)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    model.gradient_checkpointing = False
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=0, rtol=0, msg=n)


def test_initialize_weights_follows_the_official_init():
    model = STDiT3(STDiT3Config(**TINY3))
    model.initialize_weights()
    block = model.temporal_blocks[0]
    assert not block.attn.proj.weight.any() and not block.mlp.fc2.weight.any()
    assert not model.fps_embedder.mlp[2].weight.any()
    assert model.spatial_blocks[0].attn.proj.weight.abs().sum() > 0
    assert torch.equal(model.spatial_blocks[0].attn.q_norm.weight, torch.ones(16))

    model2 = STDiT2(STDiT2Config(**TINY2))
    model2.initialize_weights()
    assert not model2.final_layer.linear.weight.any() and not model2.blocks[0].attn_temp.proj.bias.any()


def test_a_from_scratch_model_starts_without_temporal_contribution():
    """With the official init the temporal blocks are identities: zeroing their other weights changes nothing."""
    model = STDiT3(STDiT3Config(**TINY3))
    model.initialize_weights()
    model.eval()
    inputs = _inputs3()
    with torch.no_grad():
        before = model(**inputs)
        for block in model.temporal_blocks:
            block.attn.qkv.weight.normal_()
        after = model(**inputs)
    assert torch.equal(before, after)


def test_freeze_flags_only_change_requires_grad():
    model = STDiT3(STDiT3Config(**{**TINY3, "only_train_temporal": True}))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"temporal_blocks"}
    model2 = build_model("STDiT2", {**TINY2, "freeze": "text"})
    assert not any(p.requires_grad for n, p in model2.named_parameters() if "cross_attn" in n)
