"""Samplers: schedules, guidance, reference-frame rules, noise, callbacks and recorded-trace replays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from opensora_core.sampling import (
    CALLBACK_KEYS,
    SAMPLERS,
    GeneratorNoise,
    GuidedModel,
    IDDPMFrameRule,
    RecordedNoise,
    RFlowFrameRule,
    SamplingInterrupted,
    ScheduleRequest,
    get_sampler,
    iddpm_schedule,
    linear_betas,
    rflow_schedule,
    rflow_timesteps,
    sample_iddpm,
    sample_rflow,
    space_timesteps,
    timestep_transform,
)
from opensora_core.families import for_class
from opensora_core.text.caption import Caption

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class CountingNoise:
    """Noise source that records the shape of every draw."""

    def __init__(self, seed: int = 0):
        self.inner = GeneratorNoise.from_seed(seed)
        self.shapes: list[tuple[int, ...]] = []

    def draw(self, shape, like):
        self.shapes.append(tuple(shape))
        return self.inner.draw(shape, like)


def velocity_oracle(x0: torch.Tensor):
    """Guided-model stand-in predicting the exact velocity toward x0: v = (x0 - z) / s, s = t/1000."""

    def model(z, t, x_mask=None):
        s = (t / 1000)[:, None, None, None, None]
        v = (x0 - z) / s
        return torch.cat([v, torch.zeros_like(v)], 1)

    return model


def rflow_case(reference, name):
    path = reference / "v1_2" / "cases" / name
    return load_file(str(path / "io.safetensors")), json.loads((path / "config.json").read_text())


def replay(io):
    """Raw-model stand-in returning the recorded per-step outputs and recording its inputs."""
    calls = []

    def model(x, t, y, mask=None, x_mask=None, **kwargs):
        calls.append({"x": x, "t": t, "y": y, "mask": mask, "x_mask": x_mask, "kwargs": kwargs})
        return io["trace.model_out"][len(calls) - 1]

    return model, calls


def rflow_guided(io, model):
    caption = Caption(io["in.y_cond"], io["in.text_mask"])
    args = {k: io[f"in.model_args.{k}"] for k in ("height", "width", "num_frames", "ar", "fps")}
    return GuidedModel(model, caption, io["in.y_null"], args, scale=7.0), args


def case_timesteps(args, steps=5):
    base = rflow_timesteps(steps)[:, None].expand(-1, 2)
    shifted = timestep_transform(base[:-1], args["height"], args["width"], args["num_frames"])
    return torch.cat([shifted, base[-1:]])


# ---------------------------------------------------------------------------
# Registry, noise
# ---------------------------------------------------------------------------


def test_samplers_are_looked_up_by_official_name():
    assert get_sampler("rflow") is sample_rflow and get_sampler("iddpm") is sample_iddpm
    assert set(SAMPLERS) == {"rflow", "iddpm"}


def test_unknown_sampler_name_raises_with_choices():
    with pytest.raises(ValueError, match="rflow"):
        get_sampler("euler")


def test_generator_noise_is_reproducible_per_seed():
    like = torch.zeros(1)
    a = GeneratorNoise.from_seed(7).draw((2, 3), like)
    b = GeneratorNoise.from_seed(7).draw((2, 3), like)
    assert torch.equal(a, b)


def test_recorded_noise_checks_shape_and_count():
    noise = RecordedNoise([torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="shape"):
        noise.draw((3, 2), torch.zeros(1))
    noise.draw((2, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="only 1 were recorded"):
        noise.draw((2, 3), torch.zeros(1))


# ---------------------------------------------------------------------------
# RFLOW schedule
# ---------------------------------------------------------------------------


def test_rflow_timesteps_are_uniform_and_end_in_zero():
    """t_i = (1 - i/N) * 1000, then the appended 0 the last Euler step integrates to."""
    assert rflow_timesteps(4).tolist() == [1000.0, 750.0, 500.0, 250.0, 0.0]


def test_timestep_transform_of_one_frame_at_base_resolution_is_identity():
    """ratio = sqrt(512*512 / 512^2) * sqrt(1) = 1 gives s' = s."""
    t = torch.tensor([1000.0, 500.0, 1.0])
    size = [torch.tensor([512.0]), torch.tensor([512.0]), torch.tensor([1.0])]
    assert torch.allclose(timestep_transform(t, *size), t)


def test_timestep_transform_matches_the_documented_example():
    """240x426, 51 frames: ratio = 0.6245 * sqrt(15) = 2.419, t_in 500 -> 707.49 (FACTS.md section 3)."""
    size = [torch.tensor([240.0]), torch.tensor([426.0]), torch.tensor([51.0])]
    assert timestep_transform(torch.tensor([500.0]), *size).item() == pytest.approx(707.4931, abs=1e-3)


def test_timestep_transform_reproduces_the_nan_quirk_for_short_clips():
    size = [torch.tensor([240.0]), torch.tensor([426.0]), torch.tensor([8.0])]
    assert math.isnan(timestep_transform(torch.tensor([1000.0]), *size).item())


def test_rflow_schedule_rejects_2_to_16_frames_with_a_fix():
    with pytest.raises(ValueError, match="Use num_frames 1 \\(an image\\) or 17 or more") as err:
        rflow_schedule(30, height=240, width=426, num_frames=8)
    assert "transform off" not in str(err.value)  # no control of that name exists in the CLI or the nodes
    assert rflow_schedule(30, height=240, width=426, num_frames=8, transform=False)[0] == 1000


def test_rflow_schedule_bf16_arguments_reproduce_official_bf16_inference():
    """t_in = 500 is step 15 of 30; bf16 size arguments give 707.7625 instead of 707.4931."""
    fp32 = rflow_schedule(30, height=240, width=426, num_frames=51)
    bf16 = rflow_schedule(30, height=240, width=426, num_frames=51, args_dtype=torch.bfloat16)
    assert fp32[15].item() == pytest.approx(707.4931, abs=1e-4)
    assert bf16[15].item() == pytest.approx(707.7625, abs=1e-4)
    assert fp32[-1] == 0 and bf16[-1] == 0


def test_rflow_shift_scale_multiplies_the_official_shift():
    """t' = r s / (1 + (r - 1) s) with r the official ratio times the scale: at 64x64, 17 frames r = 0.2795;
    scale 2 moves step 6 of 60 (s = 0.9) from t' = 716 to 834, and the official schedule is scale 1."""
    from opensora_core.families import by_release
    from opensora_core.pipeline import GenerationSpec, plan_generation
    from opensora_core.sampling import ScheduleRequest, transform_shift

    size = dict(height=64, width=64, num_frames=17)
    official, doubled = rflow_schedule(60, **size), rflow_schedule(60, **size, scale=2.0)
    ratio = transform_shift(**size)
    assert ratio == pytest.approx(0.125 * math.sqrt(5), rel=1e-6)
    assert transform_shift(**size, scale=2.0) == pytest.approx(2 * ratio, rel=1e-6)
    for times, r in ((official, ratio), (doubled, 2 * ratio)):
        assert times[6].item() == pytest.approx(1000 * r * 0.9 / (1 + (r - 1) * 0.9), abs=1e-3)
    assert doubled[6] > official[6] + 100 and doubled[-1] == 0
    assert doubled[0].item() == pytest.approx(1000, abs=1e-3) and official[0].item() == pytest.approx(1000, abs=1e-3)
    v1_2 = by_release("v1.2")
    # exact: the family's schedule is rflow_schedule with these same arguments (one code path)
    assert torch.equal(v1_2.sampler.schedule(ScheduleRequest(60, 64, 64, 17)), official)
    assert torch.equal(v1_2.sampler.schedule(ScheduleRequest(60, 64, 64, 17, shift_scale=2.0)), doubled)
    plan = plan_generation(v1_2, GenerationSpec(prompts=["a"], height=64, width=64, num_frames=17, shift_scale=2.0))
    assert plan.schedule_options == {"shift_scale": 2.0}
    assert plan_generation(v1_2, GenerationSpec(prompts=["a"], height=64, width=64, num_frames=17)
                           ).schedule_options == {"shift_scale": 1.0}
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="shift_scale must be a finite number > 0"):
            plan_generation(v1_2, GenerationSpec(prompts=["a"], height=64, width=64, num_frames=17, shift_scale=bad))
    with pytest.raises(ValueError, match="shift_scale is not an option"):
        plan_generation(by_release("v1.1"), GenerationSpec(prompts=["a"], height=64, width=64, num_frames=16,
                                                           shift_scale=2.0))


# ---------------------------------------------------------------------------
# RFLOW sampler
# ---------------------------------------------------------------------------


def test_rflow_euler_with_exact_velocity_lands_on_the_data():
    """On the straight path z_t = (1-s) x0 + s eps the exact velocity is (x0 - z)/s; Euler
    steps stay on the path and the final step (to s = 0) returns x0."""
    x0, eps = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    out = sample_rflow(velocity_oracle(x0), eps, rflow_schedule(7, height=480, width=640, num_frames=51))
    assert torch.allclose(out, x0, atol=1e-5)


def test_rflow_callback_reports_fixed_keys_and_denoised_estimate():
    """denoised = z + s*v, which the exact velocity makes equal to x0 at every step."""
    x0 = torch.randn(1, 4, 2, 2, 2)
    reports = []
    sample_rflow(velocity_oracle(x0), torch.randn_like(x0), rflow_timesteps(3), callback=reports.append)
    assert [r["i"] for r in reports] == [0, 1, 2] and all(r["total"] == 3 for r in reports)
    assert all(tuple(r) == CALLBACK_KEYS for r in reports)
    assert all(torch.allclose(r["denoised"], x0, atol=1e-5) for r in reports)
    assert reports[1]["t"].tolist() == [pytest.approx(2000 / 3, abs=1e-3)]


def test_callback_interrupt_stops_and_carries_the_latest_latent():
    calls = []

    def model(z, t, x_mask=None):
        calls.append(t)
        return torch.zeros(z.shape[0], 2 * z.shape[1], *z.shape[2:])

    def stop_at_step_1(info):
        if info["i"] == 1:
            raise SamplingInterrupted()

    x = torch.randn(1, 4, 2, 2, 2)
    with pytest.raises(SamplingInterrupted) as stopped:
        sample_rflow(model, x, rflow_timesteps(5), callback=stop_at_step_1)
    assert len(calls) == 2 and stopped.value.step == 1 and torch.equal(stopped.value.x, x)


def test_rflow_masked_draws_once_per_step_and_unmasked_never():
    x0 = torch.randn(1, 4, 3, 2, 2)
    noise = CountingNoise()
    sample_rflow(velocity_oracle(x0), torch.randn_like(x0), rflow_timesteps(4), mask=torch.ones(1, 3), noise=noise)
    assert noise.shapes == [(1, 4, 3, 2, 2)] * 4
    unused = CountingNoise()
    sample_rflow(velocity_oracle(x0), torch.randn_like(x0), rflow_timesteps(4), noise=unused)
    assert unused.shapes == []


def test_all_ones_mask_changes_nothing_but_the_draws():
    x0, start = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    times = rflow_timesteps(4)
    plain = sample_rflow(velocity_oracle(x0), start, times)
    masked = sample_rflow(velocity_oracle(x0), start, times, mask=torch.ones(2, 3), noise=GeneratorNoise.from_seed(1))
    assert torch.equal(plain, masked)


def test_rflow_pins_mask_zero_frames_and_renoises_edit_frames_once():
    """With v = 0 nothing moves except by the mask rule: frame 0 (mask 0) stays the reference,
    frame 1 (mask 0.5) is replaced by (1 - s) ref + s eps at the first step with t <= 500."""
    ref = torch.randn(1, 4, 3, 2, 2)
    seen = []

    def still(z, t, x_mask=None):
        seen.append(x_mask.clone())
        return torch.zeros(z.shape[0], 8, *z.shape[2:])

    draws = [torch.randn(1, 4, 3, 2, 2) for _ in range(4)]
    out = sample_rflow(still, ref, rflow_timesteps(4), mask=torch.tensor([[0.0, 0.5, 1.0]]), noise=RecordedNoise(draws))
    assert torch.equal(out[:, :, 0], ref[:, :, 0])
    s = 0.5  # timesteps 1000, 750, 500, 250: frame 1 frees at step 2 (t = 500)
    assert torch.allclose(out[:, :, 1], (1 - s) * ref[:, :, 1] + s * draws[2][:, :, 1])
    assert torch.equal(out[:, :, 2], ref[:, :, 2])  # mask 1 starts free: never re-noised
    assert [m.tolist() for m in seen] == [[[False, False, True]]] * 2 + [[[False, True, True]]] * 2


# ---------------------------------------------------------------------------
# Reference-frame rules
# ---------------------------------------------------------------------------


def test_rflow_rule_frees_frames_when_mask_times_1000_reaches_t():
    rule = RFlowFrameRule(torch.tensor([[0.0, 0.5, 1.0]]))
    first, second = rule.sets(torch.tensor([750.0])), rule.sets(torch.tensor([500.0]))
    assert first.free.tolist() == [[False, False, True]] and first.renoise.tolist() == [[False, False, False]]
    assert second.free.tolist() == [[False, True, True]] and second.renoise.tolist() == [[False, True, False]]
    assert second.keep.tolist() == [[True, False, False]]


def test_iddpm_rule_uses_truncated_levels():
    """level = int(mask * 5) = [0, 2, 5]: re-noise at equality, free above, keep below."""
    sched = iddpm_schedule(5)
    rule = IDDPMFrameRule(
        torch.tensor([[0.0, 0.5, 1.0]]), 5, sched.sqrt_alphas_cumprod, sched.sqrt_one_minus_alphas_cumprod
    )
    at2, at0 = rule.sets(torch.tensor([2])), rule.sets(torch.tensor([0]))
    assert at2.renoise.tolist() == [[False, True, False]] and at2.free.tolist() == [[False, False, True]]
    assert at2.keep.tolist() == [[True, False, False]]
    assert at0.renoise.tolist() == [[True, False, False]] and at0.keep.tolist() == [[False, False, False]]


# ---------------------------------------------------------------------------
# Guidance and model arguments
# ---------------------------------------------------------------------------


def test_guided_model_doubles_the_batch_and_guides_only_the_first_channels():
    seen = {}

    def model(x, t, y, mask=None, x_mask=None, **kwargs):
        seen.update(x=x, t=t, y=y, mask=mask, x_mask=x_mask, kwargs=kwargs)
        cond = torch.full((1, 8, 2, 1, 1), 3.0)
        return torch.cat([cond, torch.ones_like(cond)])  # prompt half 3, null half 1

    caption = Caption(torch.zeros(1, 1, 4, 5), torch.tensor([[1, 1, 0, 0]]))
    guided = GuidedModel(model, caption, torch.ones(1, 1, 4, 5), {"fps": torch.tensor([24.0])}, scale=7.0, channels=3)
    out = guided(torch.zeros(1, 4, 2, 1, 1), torch.tensor([500.0]), torch.tensor([[True, False]]))
    assert seen["x"].shape[0] == 2 and seen["t"].tolist() == [500.0, 500.0]
    assert seen["y"][:, 0, 0, 0].tolist() == [0.0, 1.0] and seen["mask"].tolist() == [[1, 1, 0, 0]] * 2
    assert seen["x_mask"].tolist() == [[True, False]] * 2 and "fps" in seen["kwargs"]
    assert out[0, :3].unique().tolist() == [1 + 7 * (3 - 1)] and out[0, 3:].unique().tolist() == [3.0]


def test_guided_model_rejects_a_null_caption_of_another_shape():
    caption = Caption(torch.zeros(2, 1, 4, 5), torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="y_embedding"):
        GuidedModel(lambda *a, **k: None, caption, torch.zeros(1, 1, 4, 5), scale=7.0)


# ---------------------------------------------------------------------------
# IDDPM
# ---------------------------------------------------------------------------


def test_space_timesteps_keeps_both_ends():
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]


def test_iddpm_schedule_needs_two_steps():
    with pytest.raises(ValueError, match="between 2"):
        iddpm_schedule(1)


def test_iddpm_with_the_true_noise_returns_the_data():
    """An oracle eps = (x - sqrt(abar) x0) / sqrt(1 - abar) makes every x0 estimate exact,
    so the last (noise-free) step returns coef1[0] * x0 = x0 up to float32 (coef1[0] = 0.99983)."""
    x0 = torch.randn(2, 4, 2, 3, 3)
    abar = torch.cumprod(1 - linear_betas(), 0)

    def oracle(z, t, x_mask=None):
        a = abar[t].float()[:, None, None, None, None]
        eps = (z - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    out = sample_iddpm(oracle, torch.randn_like(x0), iddpm_schedule(10), noise=GeneratorNoise.from_seed(3))
    assert torch.allclose(out, x0, atol=2e-3)


def test_iddpm_draws_for_the_cfg_doubled_batch_and_renoises_first():
    """Unmasked: one doubled draw per step. Masked: the re-noise draw, then the sampling draw."""

    def zeros(z, t, x_mask=None):
        return torch.zeros(z.shape[0], 8, *z.shape[2:])

    x = torch.randn(1, 4, 3, 2, 2)
    plain, masked = CountingNoise(), CountingNoise()
    sample_iddpm(zeros, x, iddpm_schedule(3), noise=plain)
    sample_iddpm(zeros, x, iddpm_schedule(3), mask=torch.ones(1, 3), noise=masked)
    assert plain.shapes == [(2, 4, 3, 2, 2)] * 3 and masked.shapes == [(2, 4, 3, 2, 2)] * 6


def test_iddpm_keeps_mask_zero_frames_until_the_last_step():
    seen = []

    def zeros(z, t, x_mask=None):
        seen.append((z.clone(), x_mask.clone()))
        return torch.zeros(z.shape[0], 8, *z.shape[2:])

    ref = torch.randn(1, 4, 2, 2, 2)
    sample_iddpm(zeros, ref, iddpm_schedule(4), mask=torch.tensor([[0.0, 1.0]]), noise=GeneratorNoise.from_seed(0))
    assert all(torch.equal(z[:, :, 0], ref[:, :, 0]) for z, _ in seen[:3])  # frozen while level 0 < index
    assert not torch.equal(seen[3][0][:, :, 0], ref[:, :, 0])  # re-noised at index 0
    assert [m.tolist() for _, m in seen] == [[[False, True]]] * 4


# ---------------------------------------------------------------------------
# Reference data: recorded draws, schedules and per-step replays
# ---------------------------------------------------------------------------


# torch.randn on the CPU turns the generator's bits into normals with a vectorised Box-Muller transform
# whose log/cos differ by a few float32 ulp between instruction sets (AVX512, AVX2, ARM, scalar): the
# recorded draws are matched to 1e-5 (measured: 1.5e-6 with ATEN_CPU_CAPABILITY=default, 0 on AVX2/AVX512);
# a wrong seed or draw order differs by O(1).
DRAW_TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def test_seeded_generator_gives_the_official_draws(reference):
    """torch.manual_seed(s) + randn_like in the official sampler == our generator with seed s (CPU)."""
    io, cfg = rflow_case(reference, "rflow_sample_masked")
    noise = GeneratorNoise.from_seed(cfg["sample_call"]["torch_manual_seed_before_sample"])
    for recorded in io["rng.step_noise"]:
        torch.testing.assert_close(noise.draw(recorded.shape, recorded), recorded, **DRAW_TOLERANCE)


def test_iddpm_schedule_arrays_equal_the_recorded_float32_arrays(reference):
    io = load_file(str(reference / "v1_1/cases/iddpm_sample_t2v/io.safetensors"))
    schedule = iddpm_schedule(5)
    for key in (k for k in io if k.startswith("sched.")):
        ours = getattr(schedule, key[len("sched.") :])
        assert ours.dtype == io[key].dtype and torch.equal(ours, io[key]), key


@pytest.mark.parametrize("name", ["rflow_sample_t2v", "rflow_sample_masked"])
def test_rflow_replay_of_recorded_model_outputs_is_bit_exact(reference, name):
    """Feeding the recorded per-step model outputs reproduces every model input and the final latent."""
    io, _ = rflow_case(reference, name)
    model, calls = replay(io)
    guided, args = rflow_guided(io, model)
    times = case_timesteps(args)
    masked = "out.mask" in io
    start = io["in.z_after_mask_strategy"] if masked else io["in.z_noise"]
    noise = RecordedNoise(list(io["rng.step_noise"])) if masked else None
    out = sample_rflow(guided, start, times, mask=io.get("out.mask"), noise=noise)
    assert torch.equal(times[:-1], io["out.timesteps"])
    assert torch.equal(torch.stack([c["x"] for c in calls]), io["trace.model_in_x"])
    assert torch.equal(torch.stack([c["t"] for c in calls]), io["trace.model_in_t"])
    if masked:
        assert torch.equal(torch.stack([c["x_mask"] for c in calls]), io["trace.model_in_x_mask"])
    assert torch.equal(out, io["out.z_final"])


def test_rflow_replay_without_injection_uses_the_official_seed(reference):
    io, cfg = rflow_case(reference, "rflow_sample_masked")
    model, _ = replay(io)
    guided, args = rflow_guided(io, model)
    noise = GeneratorNoise.from_seed(cfg["sample_call"]["torch_manual_seed_before_sample"])
    out = sample_rflow(guided, io["in.z_after_mask_strategy"], case_timesteps(args), mask=io["out.mask"], noise=noise)
    torch.testing.assert_close(out, io["out.z_final"], **DRAW_TOLERANCE)  # the draws' tolerance (3e-7 seen)


@pytest.mark.parametrize("sampler", ["rflow", "iddpm"])
def test_bf16_latents_follow_the_official_promotion_to_float32(sampler):
    """STDiT returns float32, so a bf16 start latent becomes float32 after the first step (as officially)."""

    def model(z, t, x_mask=None):
        return torch.zeros(z.shape[0], 2 * z.shape[1], *z.shape[2:], dtype=torch.float32)

    x = torch.randn(1, 4, 3, 2, 2, dtype=torch.bfloat16)
    schedule = rflow_timesteps(3) if sampler == "rflow" else iddpm_schedule(3)
    out = get_sampler(sampler)(model, x, schedule, mask=torch.ones(1, 3), noise=GeneratorNoise.from_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_a_mask_without_a_noise_source_asks_for_one():
    with pytest.raises(ValueError, match="GeneratorNoise.from_seed"):
        sample_rflow(
            velocity_oracle(torch.zeros(1, 4, 2, 1, 1)),
            torch.zeros(1, 4, 2, 1, 1),
            rflow_timesteps(2),
            mask=torch.ones(1, 2),
        )


def test_a_mask_of_the_wrong_shape_is_rejected_before_sampling():
    with pytest.raises(ValueError, match=r"needs \(B, T\) = \(1, 2\)"):
        sample_rflow(
            velocity_oracle(torch.zeros(1, 4, 2, 1, 1)),
            torch.zeros(1, 4, 2, 1, 1),
            rflow_timesteps(2),
            mask=torch.ones(1, 3),
        )


# ---------------------------------------------------------------------------
# IDDPM respaced schedules, bit for bit, for every step count
# ---------------------------------------------------------------------------

SCHEDULE_FIELDS = (
    "betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
    "posterior_mean_coef2", "log_betas",
)


def _official_respaced_betas(cumprod, kept):
    """respace.py SpacedDiffusion.__init__: 1 - alpha_cumprod / last_alpha_cumprod over the kept steps."""
    last, new_betas = 1.0, []
    for i, alpha_cumprod in enumerate(cumprod):
        if i in kept:
            new_betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
    return new_betas


def _official_v1_1_arrays(n: int) -> dict:
    """v1.1.0: float64 torch base schedule, torch.FloatTensor(new_betas), then GaussianDiffusion.__init__ in
    float32 torch (torch.log(self.betas) is taken in p_mean_variance), written out again from the official code."""
    betas64 = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)
    kept = set(space_timesteps(1000, n))
    betas = torch.FloatTensor(_official_respaced_betas(torch.cumprod(1.0 - betas64, axis=0), kept))
    alphas = 1.0 - betas
    acp = torch.cumprod(alphas, axis=0)
    acp_prev = torch.cat([torch.tensor([1.0]), acp[:-1]])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    return dict(
        betas=betas, alphas_cumprod=acp, sqrt_alphas_cumprod=torch.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - acp), sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / acp - 1), posterior_variance=post_var,
        posterior_log_variance_clipped=torch.log(torch.cat([post_var[1].unsqueeze(0), post_var[1:]])),
        posterior_mean_coef1=betas * torch.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * torch.sqrt(alphas) / (1.0 - acp), log_betas=torch.log(betas),
    )


def _official_v1_0_arrays(n: int) -> dict:
    """v1.0.0: numpy float64 throughout (np.linspace, np.cumprod, np.append, np.log), each array cast to float32
    where ``_extract_into_tensor`` gathers it (``th.from_numpy(arr)[t].float()`` = cast, then gather)."""
    betas64 = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
    betas = np.array(_official_respaced_betas(np.cumprod(1.0 - betas64, axis=0), set(space_timesteps(1000, n))))
    alphas = 1.0 - betas
    acp = np.cumprod(alphas, axis=0)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
    arrays = dict(
        betas=betas, alphas_cumprod=acp, sqrt_alphas_cumprod=np.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp), sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1), posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp), log_betas=np.log(betas),
    )
    return {k: torch.from_numpy(v).float() for k, v in arrays.items()}


@pytest.mark.parametrize("precision, official",
                         [("float32", _official_v1_1_arrays), ("float64", _official_v1_0_arrays)], ids=["v1.1", "v1.0"])
def test_iddpm_schedule_is_bit_identical_to_the_official_for_every_step_count(precision, official):
    """Every respaced array for 2..1000 steps equals the official arithmetic bit for bit (same expressions,
    order and dtypes: v1.1 rebuilds float32 betas and stays in float32 torch; v1.0 stays in float64 numpy
    and casts on use). The two differ from each other by an ulp in most arrays, so each release needs its own."""
    mismatched = []
    for n in range(2, 1001):
        ours, expected = iddpm_schedule(n, precision=precision), official(n)
        mismatched += [(n, f) for f in SCHEDULE_FIELDS if not torch.equal(getattr(ours, f), expected[f])]
    assert mismatched == []


def test_v1_0_samples_with_its_float64_schedule():
    """The family declarations pick each release's arithmetic (the sampler's schedule function)."""
    request = ScheduleRequest(100, 256, 256, 16)
    v1_0, v1_1 = for_class("STDiT").sampler.schedule(request), for_class("STDiT2").sampler.schedule(request)
    assert torch.equal(v1_0.alphas_cumprod, iddpm_schedule(100, precision="float64").alphas_cumprod)
    assert torch.equal(v1_1.alphas_cumprod, iddpm_schedule(100, precision="float32").alphas_cumprod)
    assert not torch.equal(iddpm_schedule(100, precision="float64").alphas_cumprod, iddpm_schedule(100).alphas_cumprod)
