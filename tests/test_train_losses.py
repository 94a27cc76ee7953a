"""Training objectives (opensora_core.sampling.losses): analytic cases for rectified flow and IDDPM."""

from __future__ import annotations

import math

import pytest
import torch

from opensora_core.sampling.losses import (
    IDDPMObjective,
    RectifiedFlowObjective,
    build_objective,
    mean_flat,
    normal_kl,
)
from opensora_core.sampling.rflow import timestep_transform


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rflow_noising_and_perfect_velocity_give_zero_loss():
    """x_t = (1 - t/1000) x0 + (t/1000) eps; predicting x0 - eps exactly gives loss 0."""
    obj = RectifiedFlowObjective(use_timestep_transform=False)
    x0, eps = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([250.0, 1000.0])
    x_t = obj.noisy_input(x0, eps, t)
    torch.testing.assert_close(x_t[0], 0.75 * x0[0] + 0.25 * eps[0])
    torch.testing.assert_close(x_t[1], eps[1])
    out = torch.cat([x0 - eps, torch.randn_like(x0)], dim=1)  # learned-sigma channels are ignored
    assert obj.losses(out, x0, x_t, eps, t)["loss"].abs().max() < 1e-6


def test_condition_frames_stay_clean_and_leave_the_loss():
    obj = RectifiedFlowObjective(use_timestep_transform=False)
    x0, eps = torch.randn(1, 4, 3, 2, 2), torch.randn(1, 4, 3, 2, 2)
    mask = torch.tensor([[False, True, True]])
    x_t = obj.noisy_input(x0, eps, torch.tensor([900.0]), mask)
    torch.testing.assert_close(x_t[:, :, 0], x0[:, :, 0])  # t = 0 for the condition frame
    out = torch.zeros(1, 8, 3, 2, 2)
    out[:, :4, 1:] = (x0 - eps)[:, :, 1:]  # right on generated frames, wrong on the condition frame
    assert obj.losses(out, x0, x_t, eps, None, mask)["loss"].item() < 1e-6
    assert mean_flat(torch.ones(1, 4, 3, 2, 2), torch.zeros(1, 3, dtype=torch.bool)).item() == 0  # no 0/0


def test_logit_normal_and_uniform_timesteps_and_the_shift():
    logit = RectifiedFlowObjective(use_timestep_transform=False).sample_timesteps(20000, _gen())
    assert 0 < logit.min() and logit.max() < 1000
    assert abs(torch.logit(logit / 1000).mean()) < 0.05 and abs(torch.logit(logit / 1000).std() - 1) < 0.05
    uniform = RectifiedFlowObjective(sample_method="uniform", use_timestep_transform=False).sample_timesteps(4, _gen())
    torch.testing.assert_close(uniform, torch.rand(4, generator=_gen()) * 1000)
    size = dict(height=torch.full((4,), 240.0), width=torch.full((4,), 426.0), num_frames=torch.full((4,), 51.0))
    shifted = RectifiedFlowObjective(sample_method="uniform").sample_timesteps(4, _gen(), **size)
    torch.testing.assert_close(shifted, timestep_transform(uniform, **size))
    assert (shifted > uniform).all()  # 240p, 51 frames: ratio 2.42 pushes t toward noise


def test_iddpm_q_sample_and_loss_terms():
    obj = build_objective("iddpm")
    sched = obj.schedule
    x0, eps = torch.randn(2, 4, 2, 2, 2), torch.randn(2, 4, 2, 2, 2)
    t = torch.tensor([0, 500])
    x_t = obj.noisy_input(x0, eps, t)
    expected = sched.sqrt_alphas_cumprod[500] * x0[1] + sched.sqrt_one_minus_alphas_cumprod[500] * eps[1]
    torch.testing.assert_close(x_t[1], expected)
    out = torch.cat([eps, torch.zeros_like(eps)], dim=1)  # perfect eps, mid-range variance
    terms = obj.losses(out, x0, x_t, eps, t)
    assert terms["mse"].abs().max() < 1e-10
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    assert (terms["vb"] >= 0).all()


def test_iddpm_vb_is_the_kl_to_the_true_posterior_in_bits():
    """With a perfect eps the means agree, so the KL only measures the variance mismatch."""
    obj = IDDPMObjective()
    sched = obj.schedule
    x0, eps = torch.randn(1, 4, 1, 2, 2), torch.randn(1, 4, 1, 2, 2)
    t = torch.tensor([300])
    x_t = obj.q_sample(x0, t, eps)
    v = torch.full_like(x0, 1.0)  # frac 1: log variance = log beta_t
    vb = obj.variational_bound(eps, v, x0, x_t, t)
    kl = normal_kl(torch.zeros(()), sched.posterior_log_variance_clipped[300], torch.zeros(()), sched.log_betas[300])
    assert vb.item() == pytest.approx(kl.item() / math.log(2), rel=1e-4)


def test_iddpm_gradient_reaches_the_variance_channels_only_through_vb():
    obj = IDDPMObjective()
    x0, eps = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 2, 2, 2)
    t = torch.tensor([10])
    out = torch.randn(1, 8, 2, 2, 2, requires_grad=True)
    obj.losses(out, x0, obj.noisy_input(x0, eps, t), eps, t)["vb"].sum().backward()
    assert out.grad[:, :4].abs().max() == 0 and out.grad[:, 4:].abs().max() > 0  # mean prediction frozen in vb


def test_unknown_objective_and_sample_method_raise():
    with pytest.raises(ValueError, match="unknown training objective"):
        build_objective("ddim")
    with pytest.raises(ValueError, match="sample_method"):
        RectifiedFlowObjective(sample_method="cosine")
