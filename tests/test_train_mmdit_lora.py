"""The Open-Sora 2.0 MMDiT's LoRA adapters (train/mmdit_lora.py) and the official 2.0 flow loss, on tiny models:
the loss formula, adapters over fp32 and fp8 bases, block swap + activation checkpointing giving the plain
model's gradients. The config-trainer task (buckets, caches, resume, export) is tests/test_train_v2_lora.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import tiny_v2

from opensora_core.models.block_swap import block_swap_of
from opensora_core.models.fp8 import Fp8Operations
from opensora_core.models.mmdit import pack, prepare_inputs
from opensora_core.sampling.v2 import shift_alpha
from opensora_core.sampling.v2_losses import SIGMA_MIN, V2FlowObjective, sample_times, training_alpha
from opensora_train.mmdit_lora import add_adapters, place_model

TINY = {**tiny_v2.TINY, "depth": 1, "depth_single_blocks": 2}


def _model(seed: int = 0, fp8: bool = False):
    model = tiny_v2.mmdit(seed, depth=1, depth_single_blocks=2)
    if not fp8:
        return model
    quantised = type(model).from_official_config(TINY, operations=Fp8Operations)
    quantised.load_state_dict(model.state_dict(), strict=False)  # fp8 layers quantise; scales are extra
    return quantised.eval()


@dataclass
class Example:
    latent: torch.Tensor  # (1, 16, T, 4, 6)
    txt: torch.Tensor  # (1, 5, TXT_DIM)
    y_vec: torch.Tensor  # (1, VEC_DIM)


def _example(seed: int = 1, frames: int = 3) -> Example:
    g = torch.Generator().manual_seed(seed)
    return Example(torch.randn(1, 16, frames, 4, 6, generator=g), torch.randn(1, 5, tiny_v2.TXT_DIM, generator=g),
                   torch.randn(1, tiny_v2.VEC_DIM, generator=g))


def test_times_are_logit_normal_shifted_like_the_schedule():
    alpha = training_alpha((1, 16, 3, 4, 6))
    assert alpha == pytest.approx(shift_alpha(6, 3))  # 4x6 latent pixels = 6 tokens of 2x2 per frame
    g = torch.Generator().manual_seed(0)
    n = torch.randn(4, generator=torch.Generator().manual_seed(0))
    s = torch.sigmoid(n)
    torch.testing.assert_close(sample_times(4, alpha, g), alpha * s / (1 + (alpha - 1) * s))


def test_loss_is_the_mse_to_the_official_velocity():
    """x_t = (1 - t) x0 + (1 - (1 - sigma_min)(1 - t)) x1; target (1 - sigma_min) x1 - x0; the model sees t."""
    ex, objective = _example(), V2FlowObjective()
    x1, t = torch.randn(ex.latent.shape), torch.tensor([0.3])
    seen = {}

    def model(img, timesteps, **kw):
        seen.update(img=img, t=timesteps, cond=kw["cond"])
        return torch.zeros_like(img)

    loss = objective.loss(model, ex.latent, ex.txt, ex.y_vec, t=t, noise=x1)
    x_t = 0.7 * ex.latent + (1 - (1 - SIGMA_MIN) * 0.7) * x1
    target = (1 - SIGMA_MIN) * x1 - ex.latent
    torch.testing.assert_close(seen["img"], pack(x_t))
    torch.testing.assert_close(loss, (target**2).mean())
    assert float(seen["t"]) == pytest.approx(0.3) and not seen["cond"].any()  # t2v: zero condition channels


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32", "fp8"])
def test_fresh_adapters_change_nothing_and_only_they_train(fp8):
    model = _model(fp8=fp8)
    ex = _example()
    inputs = {**prepare_inputs(ex.latent, ex.txt, ex.y_vec), "timesteps": torch.tensor([0.5]),
              "cond": torch.zeros(1, 18, 68)}
    before = model(**inputs)
    paths = add_adapters(model, 2)
    assert len(paths) == 12 + 2 * 4  # one double block (12 targets) and two single blocks (4 each)
    torch.testing.assert_close(model(**inputs), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def _grads(model, **placement):
    """Adapter gradients of one loss with fixed time and noise (rank-2 adapters, placed as ``placement`` says)."""
    add_adapters(model, 2)
    place_model(model, "cpu", **placement)
    ex = _example()
    loss = V2FlowObjective().loss(model, ex.latent, ex.txt, ex.y_vec, t=torch.tensor([0.6]),
                                  noise=torch.randn(ex.latent.shape, generator=torch.Generator().manual_seed(3)))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fp8", [False, True], ids=["fp32", "fp8"])
def test_block_swap_with_checkpointing_gives_the_plain_gradients(fp8):
    """Swap copies the frozen blocks in (again for the recompute); checkpointing recomputes: the same maths as
    the plain model of the same base (fp32, or the same fp8 weights)."""
    loss_a, a = _grads(_model(fp8=fp8), gradient_checkpointing=False)
    model = _model(fp8=fp8)
    loss_b, b = _grads(model, gradient_checkpointing=True, blocks_on_device=1)
    assert block_swap_of(model).copies >= 4  # 2 swapped blocks, forward and recompute
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and a.keys() == b.keys()
    for name in a:  # float32 sums in another order: relative to the largest gradient
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6 * float(a[name].abs().max()) + 1e-12)


def test_block_swap_without_checkpointing_is_refused():
    model = _model()
    add_adapters(model, 2)
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        place_model(model, "cpu", gradient_checkpointing=False, blocks_on_device=1)


def test_targets_that_match_nothing_are_named():
    with pytest.raises(ValueError, match="lora.targets"):
        add_adapters(_model(), 2, targets=("attn.qkv",))
