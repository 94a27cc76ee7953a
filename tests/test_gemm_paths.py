"""Every Linear runs as one 2-D GEMM, in every mode a user runs.

torch's ``matmul`` folds a (..., C) input into one (rows, C) matrix only when its leading dimensions form
one stride. Otherwise, when the weight records no gradient (a frozen model, autocast's cast copy, bf16
weights), it expands the weight over the leading dimensions and runs a batched GEMM; in bf16 that
materialises a [batch, C_in, C_out] copy of the weight (6 GB for the v1.2 temporal qkv at 240p). The
profiler shows that path as an ``aten::expand`` of a weight-shaped matrix feeding ``aten::bmm``; these
tests run a forward of each model in each mode and fail on any such op.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from opensora_core.families import build_model
from opensora_core.vae import AutoencoderKL, AutoencoderKLConfig

from tiny import CAPTION_CHANNELS, MAX_LENGTH
from tiny_v2 import TINY as MMDIT_TINY
from tiny_v2 import inputs as mmdit_inputs

# widths chosen so that no attention operand has a Linear weight's shape
DIT = dict(hidden_size=48, depth=1, num_heads=4, caption_channels=CAPTION_CHANNELS, model_max_length=MAX_LENGTH)
DIT_CONFIGS = {
    "STDiT": dict(DIT, input_size=(4, 8, 8)),
    "STDiT2": dict(DIT, input_sq_size=512, qk_norm=True),
    "STDiT3": DIT,
}
BATCHED_GEMMS = ("aten::bmm", "aten::baddbmm")

MODES = {
    # name: (weights dtype, requires_grad, grad mode, autocast dtype)
    "train": (torch.float32, True, "grad", None),
    "fp32 frozen no_grad": (torch.float32, False, "no_grad", None),
    "fp32 frozen inference": (torch.float32, False, "inference", None),
    "bf16 autocast inference": (torch.float32, True, "inference", torch.bfloat16),
    "bf16 autocast frozen": (torch.float32, False, "no_grad", torch.bfloat16),
    "bf16 weights frozen": (torch.bfloat16, False, "inference", None),
    "fp16 weights frozen": (torch.float16, False, "inference", None),
}


def _context(grad: str, autocast: torch.dtype | None) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context({"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}[grad]())
    if autocast is not None:
        stack.enter_context(torch.autocast("cpu", dtype=autocast))
    return stack


def _prepared(model: nn.Module, mode: str) -> nn.Module:
    dtype, requires_grad, _, _ = MODES[mode]
    return model.to(dtype).requires_grad_(requires_grad).eval()


def batched_weight_gemms(model: nn.Module, mode: str, run) -> list[str]:
    """The batched GEMMs (and weight expansions) a call of ``run()`` makes with a Linear weight operand."""
    weights = {tuple(m.weight.shape[::-1]) for m in model.modules() if isinstance(m, nn.Linear)}  # (in, out)
    _, _, grad, autocast = MODES[mode]
    with _context(grad, autocast), torch.profiler.profile(record_shapes=True) as prof:
        run()
    found = []
    for event in prof.events():
        shapes = [tuple(s) for s in event.input_shapes if s]
        if event.name in BATCHED_GEMMS and any(s[-2:] in weights for s in shapes[1:]):
            found.append(f"{event.name} {shapes}")
        if event.name == "aten::expand" and shapes and shapes[0] in weights:
            found.append(f"{event.name} of a weight {shapes[0]}")
    return found


def _dit_inputs(name: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    B, T, H, W = 2, 4, 8, 8
    inputs = dict(
        x=torch.randn(B, 4, T, H, W, generator=g, dtype=dtype),
        timestep=torch.tensor([700.0, 300.0]),
        y=torch.randn(B, 1, MAX_LENGTH, CAPTION_CHANNELS, generator=g, dtype=dtype),
        mask=torch.tensor([[1] * 5 + [0] * (MAX_LENGTH - 5)] * B),
    )
    if name == "STDiT":
        return inputs
    sizes = dict(height=torch.full((B,), 64.0), width=torch.full((B,), 64.0), num_frames=torch.full((B,), 4.0),
                 ar=torch.ones(B), fps=torch.full((B,), 24.0))
    x_mask = torch.ones(B, T, dtype=torch.bool)
    x_mask[:, 0] = False  # a condition frame: the per-frame modulation path
    return {**inputs, **sizes, "x_mask": x_mask}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", DIT_CONFIGS)
def test_dit_linears_run_as_2d_gemms(name, mode):
    torch.manual_seed(0)
    model = _prepared(build_model(name, DIT_CONFIGS[name]), mode)
    inputs = _dit_inputs(name, MODES[mode][0])
    assert batched_weight_gemms(model, mode, lambda: model(**inputs)) == []


# Open-Sora-Plan v1.3: 4 layers = 2 full-attention layers, then a single-skip and a group-skip Skiparse layer
OSP = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, num_layers=4,
           cross_attention_dim=24, patch_size=2, patch_size_t=1, activation_fn="gelu-approximate",
           caption_channels=CAPTION_CHANNELS, sparse1d=True, sparse_n=2)


def _osp_inputs(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(2, 4, 3, 8, 8, generator=g, dtype=dtype),
                timestep=torch.tensor([999.0, 321.0]),
                encoder_hidden_states=torch.randn(2, 1, 5, CAPTION_CHANNELS, generator=g, dtype=dtype),
                encoder_attention_mask=torch.tensor([[[1, 1, 1, 0, 0]], [[1, 1, 1, 1, 1]]]))


@pytest.mark.parametrize("mode", MODES)
def test_open_sora_plan_linears_run_as_2d_gemms(mode):
    torch.manual_seed(0)
    model = _prepared(build_model("OpenSoraT2V_v1_3", OSP), mode)
    inputs = _osp_inputs(MODES[mode][0])
    assert batched_weight_gemms(model, mode, lambda: model(**inputs)) == []


@pytest.mark.parametrize("mode", MODES)
def test_mmdit_linears_run_as_2d_gemms(mode):
    torch.manual_seed(0)
    model = _prepared(build_model("MMDiTModel", {**MMDIT_TINY, "depth": 1, "depth_single_blocks": 1}), mode)
    dtype = MODES[mode][0]
    inputs = {k: v.to(dtype) if v.is_floating_point() and k != "timesteps" else v for k, v in mmdit_inputs().items()}
    assert batched_weight_gemms(model, mode, lambda: model(**inputs)) == []


def test_packed_captions_run_as_2d_gemms():
    """``skip_y_embedder`` without lengths: every sample attends to one shared (expanded) token set."""
    torch.manual_seed(0)
    model = _prepared(build_model("STDiT3", dict(DIT, skip_y_embedder=True)), "fp32 frozen inference")
    inputs = _dit_inputs("STDiT3", torch.float32)
    inputs.update(y=torch.randn(1, 1, 7, DIT["hidden_size"]), mask=None)
    assert batched_weight_gemms(model, "fp32 frozen inference", lambda: model(**inputs)) == []


@pytest.mark.parametrize("mode", ["fp32 frozen inference", "bf16 weights frozen", "bf16 autocast inference"])
def test_vae_attention_runs_as_2d_gemms(mode):
    torch.manual_seed(0)
    config = AutoencoderKLConfig(block_out_channels=(8, 16, 16, 24), layers_per_block=1, norm_num_groups=4)
    vae = _prepared(AutoencoderKL(config), mode)
    z = torch.randn(2, 4, 6, 5, dtype=MODES[mode][0])
    assert batched_weight_gemms(vae, mode, lambda: vae.decode(z)) == []
