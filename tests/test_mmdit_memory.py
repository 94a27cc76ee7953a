"""Memory features of the Open-Sora 2.0 MMDiT: fp8 Linear weights, block swap, the memory estimate."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny_v2 import TINY, inputs, mmdit

from opensora_core.checkpoints import LazyStateDict
from opensora_core.models.block_swap import BlockSwap, enable_block_swap
from opensora_core.models.fp8 import FP8_DTYPE, Fp8Linear, Fp8Operations, load_streaming, quantize_fp8
from opensora_core.models.mmdit import MMDiTModel
from opensora_core.models.mmdit_memory import (
    MemorySetting,
    activation_bytes,
    estimate_memory,
    measure_peak_bytes,
    weight_bytes,
)

# e4m3fn keeps 3 mantissa bits: a weight is rounded by at most half a spacing, 2^-4 of its value (2^-10 of
# the scale below the smallest normal). Independent rounding errors add in quadrature, so a Linear output
# moves by the weights' relative RMS rounding error, at most 2^-3 / sqrt(12) = 3.6% (uniform error over a
# spacing of 2^-3 relative); bf16 adds 0.4%. Bound: 5% relative RMS.
FP8_LINEAR_RTOL = 0.05


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _fp8_model(reference: MMDiTModel) -> MMDiTModel:
    model = MMDiTModel(MMDiTModel.config_from_kwargs(TINY), dtype=torch.bfloat16, operations=Fp8Operations)
    load_streaming(model, reference.state_dict())
    return model.eval()


# ---------------------------------------------------------------------------
# fp8
# ---------------------------------------------------------------------------


def test_fp8_linear_is_close_to_bf16():
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256).to(torch.bfloat16)
    fp8 = Fp8Linear(512, 256, dtype=torch.bfloat16)
    fp8.load_state_dict(linear.state_dict())
    x = torch.randn(64, 512, dtype=torch.bfloat16)
    with torch.no_grad():
        err = _rel(fp8(x), linear(x))
    assert 0.005 < err < FP8_LINEAR_RTOL  # quantised, and within the e4m3 rounding bound


def test_quantised_weights_are_within_half_an_fp8_step():
    w = torch.randn(64, 96) * torch.logspace(-3, 0, 96)
    q, scale = quantize_fp8(w)
    assert q.dtype == FP8_DTYPE and float(q.float().abs().max()) == 448.0
    err = (q.float() * scale - w).abs()
    assert bool((err <= 2**-4 * w.abs() + scale * 2**-10).all())


def test_fp8_state_dict_round_trip_keeps_the_bits(tmp_path):
    reference = mmdit()
    model = _fp8_model(reference)
    state = model.state_dict()
    assert state["img_in.weight"].dtype == FP8_DTYPE and "img_in.scale_weight" in state
    path = tmp_path / "mmdit_fp8.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    again = MMDiTModel(MMDiTModel.config_from_kwargs(TINY), dtype=torch.bfloat16, operations=Fp8Operations)
    load_streaming(again, LazyStateDict([path]))
    for key, value in again.state_dict().items():
        assert torch.equal(value.view(torch.uint8) if value.dtype == FP8_DTYPE else value,
                           state[key].view(torch.uint8) if value.dtype == FP8_DTYPE else state[key]), key


def test_casting_the_model_keeps_fp8_storage():
    model = _fp8_model(mmdit())
    before = model.img_in.weight.clone()
    model.to(torch.bfloat16)
    assert torch.equal(model.img_in.weight, before) and model.img_in.fp8_weight.dtype == FP8_DTYPE


def test_fp8_mmdit_is_close_to_bf16():
    """Four blocks of fp8 rounding on a random tiny model: 3.7% relative RMS measured; bound 8% (two
    Linear-sized errors in series do not compound beyond about sqrt(depth) x 2.6%)."""
    reference = mmdit()
    bf16 = mmdit().to(torch.bfloat16)
    fp8 = _fp8_model(reference)
    kwargs = inputs()
    with torch.no_grad():
        assert _rel(fp8(**kwargs), bf16(**kwargs)) < 0.08


def test_streaming_load_rejects_a_wrong_file():
    model = _fp8_model(mmdit())
    state = dict(mmdit().state_dict())
    state.pop("final_layer.linear.bias")
    with pytest.raises(ValueError, match="final_layer.linear.bias"):
        load_streaming(model, state)


# ---------------------------------------------------------------------------
# Block swap
# ---------------------------------------------------------------------------


def test_block_swap_output_equals_the_plain_forward():
    model, kwargs = mmdit(), inputs()
    with torch.no_grad():
        plain = model(**kwargs)
        swap = enable_block_swap(model, "cpu", blocks_on_device=1)
        swapped = model(**kwargs)
    swap.detach()
    assert swap.copies == len(model.blocks) - 1
    torch.testing.assert_close(swapped, plain, atol=0.0, rtol=0.0)  # same ops on copies of the same weights


def test_swapped_block_runs_on_a_fresh_copy_and_points_back_after():
    """During its forward a swapped block reads a copy made for the device; afterwards it points at its
    offloaded tensors again (a hook registered after attach() runs after the swap's own)."""
    model, kwargs = mmdit(), inputs()
    block = model.single_blocks[0]
    swap = BlockSwap(model.blocks, "cpu", blocks_on_device=2).attach()
    offloaded = block.q_proj.weight.data_ptr()
    during = []

    def record(module, args):
        during.append(module.q_proj.weight.data_ptr())

    block.register_forward_pre_hook(record)
    with torch.no_grad():
        model(**kwargs)
    swap.detach()
    assert during and during[0] != offloaded and block.q_proj.weight.data_ptr() == offloaded


def test_block_swap_setting_is_checked():
    with pytest.raises(ValueError, match="blocks_on_device"):
        BlockSwap(mmdit().blocks, "cpu", blocks_on_device=5)


# ---------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------


def _settings():
    return [MemorySetting(dtype=torch.float32), MemorySetting(), MemorySetting(fp8=True)]


def test_estimate_is_monotone():
    config = MMDiTModel.PRESETS["OpenSora-v2-MMDiT"]
    sizes = [(192, 336, 33), (192, 336, 129), (576, 1024, 129)]
    for setting in _settings():
        totals = [estimate_memory(config, height=h, width=w, num_frames=f, setting=setting).total for h, w, f in sizes]
        assert totals == sorted(totals) and len(set(totals)) == 3
    resident = [weight_bytes(config, MemorySetting(blocks_on_device=n))[0] for n in (0, 10, 30, 57)]
    assert resident == sorted(resident)
    one_call = estimate_memory(config, height=192, width=336, num_frames=129).activations
    three_calls = estimate_memory(config, height=192, width=336, num_frames=129,
                                  setting=MemorySetting(batch_passes=False)).activations
    assert three_calls < one_call / 2  # a third of the per-row tensors; the fixed RoPE chunk stays


def test_released_weights_take_the_manifest_bytes():
    """bf16: 2 bytes per parameter (11,891,390,528 -> 23.78 GB, the manifest's bf16 state-dict size)."""
    config = MMDiTModel.PRESETS["OpenSora-v2-MMDiT"]
    assert weight_bytes(config, MemorySetting())[1] == 2 * 11_891_390_528
    fp8 = weight_bytes(config, MemorySetting(fp8=True))[1]
    assert 0.5 < fp8 / (2 * 11_891_390_528) < 0.51


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_estimate_matches_the_measured_peak(dtype):
    """The activation estimate against the bytes of tensors the forward creates and holds at once (CPU,
    reduced width 256 with the released head_dim 128; 3 rows as in the three-pass call): within 5%."""
    model = mmdit(hidden_size=256, num_heads=2, axes_dim=[16, 56, 56]).to(dtype)
    kwargs = {k: v.to(dtype) for k, v in inputs(batch=3, frames=3, height=16, width=16, text_tokens=64).items()}
    with torch.no_grad():
        _, measured = measure_peak_bytes(model, **kwargs)
    estimate = activation_bytes(model.config, 3, 3 * 64, 64, MemorySetting(dtype=dtype))
    assert abs(estimate - measured) < 0.05 * measured
