"""Open-Sora-Plan v1.3 training pieces: zero-SNR noising, v target, min-SNR-gamma weights, masked loss; size rules."""

from __future__ import annotations

import pytest
import torch

from opensora_core.geometry.open_sora_plan import (
    OSP_V1_3_TRAINED_SIDE_MULTIPLE,
    check_osp_v1_3_size,
    osp_v1_3_latent_size,
)
from opensora_core.sampling.ddpm_schedule import alphas_cumprod, linear_betas, rescale_zero_terminal_snr
from opensora_core.sampling.vpred_losses import (
    add_noise,
    explicit_uniform_timesteps,
    min_snr_weights,
    snr,
    v_prediction_loss,
    velocity,
)

AC = alphas_cumprod(zero_snr=True)


def _latents(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 2, 2, 2, generator=g), torch.randn(3, 4, 2, 2, 2, generator=g)


def test_zero_snr_rescale_keeps_the_first_and_zeroes_the_last_alpha_bar():
    plain = torch.cumprod(1 - linear_betas(), 0)
    rescaled = torch.cumprod(1 - rescale_zero_terminal_snr(linear_betas()), 0)
    assert float(rescaled[-1]) == 0.0
    assert float(rescaled[0]) == pytest.approx(float(plain[0]), rel=1e-6)


def test_noising_and_velocity_recover_the_clean_latent():
    """x0 = sqrt(ac) x_t - sqrt(1 - ac) v for the v of the same (x0, noise, t)."""
    x0, noise = _latents()
    t = torch.tensor([0, 500, 999])
    x_t, v = add_noise(x0, noise, t, AC), velocity(x0, noise, t, AC)
    a = AC[t].reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0, atol=1e-5, rtol=1e-5)


def test_at_zero_snr_the_input_is_pure_noise_and_v_is_minus_x0():
    x0, noise = _latents()
    t = torch.tensor([999, 999, 999])
    torch.testing.assert_close(add_noise(x0, noise, t, AC), noise)
    torch.testing.assert_close(velocity(x0, noise, t, AC), -x0)


def test_min_snr_weights():
    values = snr(torch.tensor([0, 400, 999]), AC)
    assert float(values[2]) == 0.0 and float(values[0]) > 5.0
    weights = min_snr_weights(values, 5.0)
    expected = torch.minimum(values, torch.tensor(5.0)) / (values + 1)
    torch.testing.assert_close(weights, expected)
    assert float(weights[2]) == 0.0  # the zero-SNR step does not train the v1.3 model
    assert torch.isnan(min_snr_weights(values, 5.0, "epsilon")[2])  # official 0/0 for epsilon


def test_loss_with_a_latent_mask_averages_over_valid_pixels_only():
    pred, target = torch.zeros(2, 4, 1, 2, 2), torch.ones(2, 4, 1, 2, 2)
    target[:, :, :, 1, :] = 100.0  # only on masked-out rows
    mask = torch.ones(2, 1, 2, 2)
    mask[:, :, 1, :] = 0
    assert float(v_prediction_loss(pred, target, latent_mask=mask)) == pytest.approx(1.0)
    weights = torch.tensor([1.0, 0.0])
    assert float(v_prediction_loss(pred, target, weights, mask)) == pytest.approx(0.5)
    assert float(v_prediction_loss(pred, torch.ones_like(pred), weights)) == pytest.approx(0.5)


def test_timesteps_cover_each_ranks_share():
    g = torch.Generator().manual_seed(0)
    t = explicit_uniform_timesteps(4000, g)
    assert int(t.min()) == 0 and int(t.max()) == 999 and t.dtype == torch.int64
    t1 = explicit_uniform_timesteps(2000, g, rank=1, world_size=4)
    assert 250 <= int(t1.min()) and int(t1.max()) <= 499
    with pytest.raises(ValueError, match="rank"):
        explicit_uniform_timesteps(1, g, rank=4, world_size=4)


# ---------------------------------------------------------------------------
# Size rules
# ---------------------------------------------------------------------------


def test_release_size_gives_the_release_latent():
    assert osp_v1_3_latent_size(93, 352, 640) == (24, 44, 80)  # 21,120 tokens after the 1x2x2 patch
    assert osp_v1_3_latent_size(1, 352, 640) == (1, 44, 80)


@pytest.mark.parametrize("frames, height, width, nearest", [
    (92, 352, 640, "89 or 93"),
    (93, 350, 640, "336 or 352"),
    (93, 352, 8, "(nearest: 16)"),
])
def test_invalid_sizes_name_the_nearest_valid_values(frames, height, width, nearest):
    with pytest.raises(ValueError, match=nearest.replace("(", "\\(").replace(")", "\\)")):
        check_osp_v1_3_size(frames, height, width)


def test_training_grid_is_stricter():
    check_osp_v1_3_size(29, 48, 80)
    with pytest.raises(ValueError, match="multiple of 32"):
        check_osp_v1_3_size(29, 48, 80, side_multiple=OSP_V1_3_TRAINED_SIDE_MULTIPLE)
