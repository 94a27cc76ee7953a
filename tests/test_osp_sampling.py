"""Open-Sora-Plan v1.3 sampler: schedule tables, the v-prediction denoiser, ancestral steps, guidance."""

from __future__ import annotations

import json
import math

import pytest
import torch

from opensora_core.sampling.core import CALLBACK_KEYS, GeneratorNoise, RecordedNoise
from opensora_core.sampling.ddpm_schedule import alphas_cumprod
from opensora_core.sampling.euler_ancestral import (
    VPredictionDenoiser,
    ancestral_step,
    euler_ancestral_schedule,
    initial_latent,
    sample_euler_ancestral,
    sampler_alphas_cumprod,
    spaced_timesteps,
)
from opensora_core.sampling.guidance import ConcatCondition, NegativePromptGuidance
from opensora_core.text.caption import Caption

TABLE = "osp/tables/euler_ancestral_v1_3_sampler.json"


def _table(reference) -> dict:
    return json.loads((reference / TABLE).read_text())


# ---------------------------------------------------------------------------
# Schedule (tables/euler_ancestral_v1_3_sampler.json)
# ---------------------------------------------------------------------------


def test_alphas_cumprod_equal_the_table(reference):
    expected = torch.tensor(_table(reference)["alphas_cumprod_float32"], dtype=torch.float32)
    assert torch.equal(sampler_alphas_cumprod(), expected)


@pytest.mark.parametrize("steps", [100, 50, 10])
def test_schedule_equals_the_table(reference, steps):
    expected = _table(reference)[f"steps_{steps}"]
    schedule = euler_ancestral_schedule(steps)
    assert schedule.timesteps.tolist() == expected["timesteps"]
    assert torch.equal(schedule.sigmas, torch.tensor(expected["sigmas"], dtype=torch.float32))
    assert float(schedule.init_noise_sigma) == expected["init_noise_sigma"]


def test_worked_step_of_the_table(reference):
    """Step 0 of the 10-step schedule: scale_model_input and the ancestral update with the recorded draw."""
    worked = _table(reference)["worked_step"]
    shape = worked["shape"]
    sample, v, noise = (torch.tensor(worked[k]).reshape(shape) for k in ("sample", "model_output_v", "noise_drawn"))
    schedule = euler_ancestral_schedule(worked["steps"])
    denoiser = VPredictionDenoiser(lambda x_in, t: v)
    sigma, sigma_next = schedule.sigmas[0], schedule.sigmas[1]
    torch.testing.assert_close(denoiser.model_input(sample, sigma).flatten().tolist(), worked["scaled_model_input"])
    out = ancestral_step(sample, denoiser(sample, sigma, schedule.timesteps[0]), sigma, sigma_next, noise)
    # float32 of a ~8000-sized sample plus a nearly opposite update: a few ulps of 8000 (~5e-4) of slack
    torch.testing.assert_close(out.flatten(), torch.tensor(worked["prev_sample"]), atol=2e-3, rtol=1e-6)


def test_zero_snr_schedule_ends_at_zero_and_starts_near_4096():
    assert float(alphas_cumprod()[-1]) == 0.0  # training (DDPMScheduler): exactly zero terminal SNR
    assert float(sampler_alphas_cumprod()[-1]) == 2.0**-24
    schedule = euler_ancestral_schedule(4)
    assert float(schedule.sigmas[0]) == pytest.approx(math.sqrt(2**24 - 1), rel=1e-6)
    assert float(schedule.sigmas[-1]) == 0.0 and float(schedule.init_noise_sigma) == float(schedule.sigmas[0])


def test_spacings():
    assert spaced_timesteps(4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(4, "leading").tolist() == [750, 500, 250, 0]
    assert spaced_timesteps(4, "linspace").tolist() == [999, 666, 333, 0]
    assert euler_ancestral_schedule(4, zero_snr=False).timesteps.tolist() == [750, 500, 250, 0]  # get_scheduler rule
    with pytest.raises(ValueError, match="spacing"):
        spaced_timesteps(4, "karras")


def test_leading_spacing_scales_the_initial_noise_by_sqrt_sigma_squared_plus_one():
    schedule = euler_ancestral_schedule(10, zero_snr=False)
    sigma_max = schedule.sigmas.max()
    assert float(schedule.init_noise_sigma) == pytest.approx(float((sigma_max**2 + 1) ** 0.5))
    noise = torch.ones(1, 2)
    assert torch.equal(initial_latent(noise, schedule), noise * schedule.init_noise_sigma)


# ---------------------------------------------------------------------------
# Denoiser and steps
# ---------------------------------------------------------------------------


def _oracle(x0: torch.Tensor):
    """A v-prediction model that knows the clean latent: for x = x0 + sigma*eps its scaled input is
    a*x0 + s*eps with a = 1/sqrt(1+sigma^2), s = sigma*a, and the true v is a*eps - s*x0."""

    def model(x_in: torch.Tensor, t: torch.Tensor, sigma_of=None) -> torch.Tensor:
        sigma = model.sigma
        a = 1 / (1 + sigma**2) ** 0.5
        eps = (x_in - a * x0) / (sigma * a)
        return a * eps - sigma * a * x0

    return model


def test_v_prediction_denoiser_recovers_the_clean_latent():
    x0, eps = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64), torch.randn(2, 4, 3, 2, 2, dtype=torch.float64)
    model = _oracle(x0)
    for sigma in (0.5, 19.0, 4096.0):
        model.sigma = torch.tensor(sigma, dtype=torch.float64)
        denoised = VPredictionDenoiser(model)(x0 + sigma * eps, model.sigma, torch.tensor(999.0))
        torch.testing.assert_close(denoised.double(), x0, atol=1e-5 * max(1.0, sigma), rtol=1e-5)


def test_last_step_to_sigma_zero_returns_the_denoised_latent():
    x, denoised = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 2, 2, 2)
    out = ancestral_step(x, denoised, torch.tensor(0.9578), torch.tensor(0.0), torch.randn(1, 4, 2, 2, 2))
    torch.testing.assert_close(out, denoised, atol=1e-6, rtol=1e-6)


def test_ancestral_noise_enters_with_sigma_up():
    """sigma_up^2 + sigma_down^2 = sigma_next^2: the update's noise part is noise * sigma_up."""
    x, denoised, noise = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1)
    sigma, sigma_next = torch.tensor(4.0), torch.tensor(2.0)
    expected_up = math.sqrt(2.0**2 * (4.0**2 - 2.0**2) / 4.0**2)
    assert float(ancestral_step(x, denoised, sigma, sigma_next, noise)) == pytest.approx(expected_up)


def test_sampler_with_an_oracle_model_ends_at_the_clean_latent():
    x0 = torch.randn(1, 4, 3, 2, 2)
    schedule = euler_ancestral_schedule(6)

    class Oracle:
        def __call__(self, x, sigma, t):
            return x0.clone()

    out = sample_euler_ancestral(Oracle(), torch.randn(1, 4, 3, 2, 2), schedule, noise=GeneratorNoise.from_seed(3))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def _smooth_model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x_in) * 0.5 + 0.001 * t[:, None, None, None, None]


def test_sampler_is_reproducible_from_the_seed_and_reports_fixed_keys():
    schedule = euler_ancestral_schedule(5)
    start = torch.randn(1, 4, 2, 2, 2)
    reports = []
    a = sample_euler_ancestral(VPredictionDenoiser(_smooth_model), start, schedule, noise=GeneratorNoise.from_seed(7),
                               callback=reports.append)
    b = sample_euler_ancestral(VPredictionDenoiser(_smooth_model), start, schedule, noise=GeneratorNoise.from_seed(7))
    c = sample_euler_ancestral(VPredictionDenoiser(_smooth_model), start, schedule, noise=GeneratorNoise.from_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert [r["i"] for r in reports] == list(range(5)) and set(reports[0]) == set(CALLBACK_KEYS)
    assert reports[0]["t"].tolist() == [999.0]


def test_sampler_takes_one_draw_per_step_including_the_last():
    schedule = euler_ancestral_schedule(3)
    draws = RecordedNoise([torch.zeros(1, 4, 2, 2, 2)] * 3)
    sample_euler_ancestral(VPredictionDenoiser(_smooth_model), torch.zeros(1, 4, 2, 2, 2), schedule, noise=draws)
    assert draws.used == 3


def test_nan_model_output_raises():
    schedule = euler_ancestral_schedule(2)
    with pytest.raises(ValueError, match="NaN"):
        sample_euler_ancestral(VPredictionDenoiser(lambda x, t: x * float("nan")), torch.ones(1, 1, 1, 1, 1),
                               schedule, noise=GeneratorNoise.from_seed(0))


# ---------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------


class TextEcho:
    """Output = x + mean of the valid text embedding tokens; records the batch it saw."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y, encoder_attention_mask=None):
        self.calls.append((x, y, encoder_attention_mask))
        mask = encoder_attention_mask.float()[:, :, None]  # (B, L, 1)
        pooled = (y[:, 0] * mask).sum(1) / mask.sum(1)  # (B, C)
        return x + pooled[:, :, None, None, None]


def _captions():
    pos = Caption(torch.full((1, 1, 3, 2), 2.0), torch.tensor([[1, 1, 0]]))
    neg = Caption(torch.full((1, 1, 3, 2), -1.0), torch.tensor([[1, 0, 0]]))
    return pos, neg


def test_guidance_batch_is_negative_then_positive():
    model = TextEcho()
    pos, neg = _captions()
    x = torch.zeros(1, 2, 1, 1, 1)
    out = NegativePromptGuidance(model, pos, neg, scale=7.5)(x, torch.tensor([999.0]))
    _, y, mask = model.calls[0]
    assert y[:, 0, 0, 0].tolist() == [-1.0, 2.0] and mask.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert out.flatten().tolist() == [-1.0 + 7.5 * 3.0] * 2  # uncond + scale * (cond - uncond)


def test_guidance_scale_one_runs_the_positive_prompt_alone():
    model = TextEcho()
    pos, neg = _captions()
    out = NegativePromptGuidance(model, pos, neg, scale=1.0)(torch.zeros(1, 2, 1, 1, 1), torch.tensor([999.0]))
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 1 and out.flatten().tolist() == [2.0, 2.0]


def test_guidance_rescale_one_matches_the_conditional_std():
    pos, neg = _captions()
    x = torch.randn(1, 2, 2, 3, 3)
    guided = NegativePromptGuidance(lambda x, t, y, **k: x * y[:, 0, 0, 0, None, None, None, None], pos, neg,
                                    scale=5.0, rescale=1.0)(x, torch.tensor([1.0]))
    torch.testing.assert_close(guided.std(), (x * 2.0).std(), atol=1e-5, rtol=1e-5)


def test_concat_condition_repeats_the_condition_for_both_guidance_halves():
    seen = []
    condition = torch.arange(3.0).reshape(1, 3, 1, 1, 1)
    ConcatCondition(lambda x, *a, **k: seen.append(x) or x, condition)(torch.zeros(2, 2, 1, 1, 1))
    assert seen[0].shape == (2, 5, 1, 1, 1) and seen[0][:, 2:].flatten().tolist() == [0.0, 1.0, 2.0] * 2
