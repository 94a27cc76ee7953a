"""The fused CPU Linear (bias and GELU in oneDNN's GEMM) computes what the module computes, and is taken
only where it may be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opensora_core.dtypes import cpu_computes
from opensora_core.models import fused

pytestmark = pytest.mark.skipif(not fused.can_fuse(nn.Linear(2, 2).requires_grad_(False), torch.zeros(1, 2)),
                                reason="this torch build has no oneDNN linear")

FUSED_OP = "mkldnn::_linear_pointwise"


def _layer(dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(24, 40).to(dtype).requires_grad_(False)


def _tokens(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(2, 5, 3, 24, generator=torch.Generator().manual_seed(1)).to(dtype).transpose(1, 2)  # strided


def _ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {event.name for event in prof.events()}


def test_fused_linear_matches_the_module_in_fp32():
    layer, x = _layer(), _tokens()
    with torch.no_grad():
        assert FUSED_OP in _ops(lambda: fused.linear(layer, x))
        torch.testing.assert_close(fused.linear(layer, x), layer(x.contiguous()), rtol=1e-5, atol=1e-5)


def test_fused_gelu_matches_gelu_of_the_module_in_fp32():
    layer, x = _layer(), _tokens()
    with torch.no_grad():
        expected = F.gelu(layer(x.contiguous()), approximate="tanh")
        torch.testing.assert_close(fused.linear_gelu(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_fused_bf16_is_within_bf16_rounding_of_the_float32_result():
    layer, x = _layer(torch.bfloat16), _tokens(torch.bfloat16)
    with torch.no_grad():
        exact = F.gelu(F.linear(x.float(), layer.weight.float(), layer.bias.float()), approximate="tanh")
        out = fused.linear_gelu(layer, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact, rtol=2**-7, atol=2**-7)  # bf16 keeps 8 significant bits


def test_bf16_is_fused_only_where_onednn_has_a_bf16_linear():
    """On an AVX2-only CPU oneDNN refuses a bf16 linear ("could not create a primitive descriptor"): the module runs."""
    layer, x = _layer(torch.bfloat16), _tokens(torch.bfloat16)
    with torch.no_grad():
        assert fused.can_fuse(layer, x) == cpu_computes(torch.bfloat16) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
        assert fused.linear(layer, x).dtype == torch.bfloat16


class CastingLinear(nn.Linear):
    """Like ComfyUI's operations: a subclass with its own forward."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + 1.0


@pytest.mark.parametrize("case", ["subclass", "grad", "autocast", "fp16"])
def test_fused_path_is_skipped_where_it_would_change_the_call(case):
    layer, x = _layer(), _tokens()
    if case == "subclass":
        layer = CastingLinear(24, 40).requires_grad_(False)
    if case == "fp16":
        layer, x = layer.half(), x.half()
    grad = case == "grad"
    layer.requires_grad_(grad)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=case == "autocast"):
        assert FUSED_OP not in _ops(lambda: fused.linear(layer, x))
        out = fused.linear(layer, x)
        expected = layer(x.contiguous())
    torch.testing.assert_close(out, expected)


def test_fused_path_is_left_to_inductor_under_torch_compile(monkeypatch):
    """Traced by torch.compile, the module's own Linear is kept: inductor cannot lower oneDNN's fused op on
    weights it has not frozen (it failed with an AssertionError in mkldnn_lowerings) and fuses the bias itself."""
    layer, x = _layer(), _tokens()
    assert fused.can_fuse(layer, x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not fused.can_fuse(layer, x)
