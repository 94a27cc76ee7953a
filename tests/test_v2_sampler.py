"""Open-Sora 2.0 sampler: exact flow, guidance combination, temporal ramp, passes, frame replacement."""

from __future__ import annotations

import pytest
import torch
from tiny_v2 import TXT_DIM, VEC_DIM, mmdit

from opensora_core.conditioning.v2 import build_condition
from opensora_core.models.mmdit import pack, unpack
from opensora_core.sampling import SamplingInterrupted
from opensora_core.sampling.core import CALLBACK_KEYS
from opensora_core.sampling.v2 import (
    ThreePassGuidance,
    get_schedule,
    guided_velocity,
    oscillation_scale,
    sample_v2,
    shift_alpha,
)
from opensora_core.text.v2 import TextV2

B, T, H, W = 2, 3, 4, 6


def _text(batch: int = B, tokens: int = 5) -> TextV2:
    g = torch.Generator().manual_seed(3)
    return TextV2(torch.randn(batch, tokens, TXT_DIM, generator=g), torch.randn(batch, VEC_DIM, generator=g),
                  torch.randn(1, tokens, TXT_DIM, generator=g), torch.randn(1, VEC_DIM, generator=g))


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 16, T, H, W, generator=torch.Generator().manual_seed(seed))


class ConstantPasses:
    """Returns 3, 2, 1 for the rows of passes c, u, u2 (by the text row: prompts have txt[..., 0] > 100)."""

    def __init__(self):
        self.rows: list[int] = []

    def __call__(self, img, txt, cond, **kwargs):
        self.rows.append(img.shape[0])
        prompt = txt[:, 0, 0] > 100
        has_cond = cond.abs().sum(dim=(1, 2)) > 0
        value = torch.where(prompt, 3.0, torch.where(has_cond, 2.0, 1.0))
        return value[:, None, None].expand_as(img).clone()


def _marked_text() -> TextV2:
    text = _text()
    text.txt[:, 0, 0] = 1000.0  # lets ConstantPasses tell prompt rows from negative rows
    return text


def test_exact_velocity_lands_on_the_data():
    """A model that predicts the true velocity (x_t - x0) / t of the straight path makes every Euler step
    exact, whatever the guidance: all passes agree, so v = u2 + s_i 0 + s_t 0. The result is x0."""
    x0 = torch.randn(B, 16, T, H, W, generator=torch.Generator().manual_seed(5))

    def model(img, timesteps, **kwargs):
        target = pack(x0).repeat(img.shape[0] // B, 1, 1)  # the passes are stacked along the batch
        return (img - target) / timesteps[:, None, None]

    z = _noise()
    times = get_schedule(8, 6, T)
    out = sample_v2(ThreePassGuidance(model, _text()), z, times, mask=build_condition(z, "t2v"))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_schedule_is_shifted_by_alpha():
    """alpha = 1 at 256 tokens per frame and one frame; times are then linear. alpha grows with sqrt(T)."""
    assert get_schedule(4, 256, 1) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    alpha = shift_alpha(256, 4)
    assert alpha == pytest.approx(2.0)
    assert get_schedule(2, 256, 4)[1] == pytest.approx(alpha * 0.5 / (1 + (alpha - 1) * 0.5))
    assert get_schedule(2, 256, 4, flow_shift=3.0)[1] == pytest.approx(0.75)


def test_oscillation_switches_guidance_off_on_odd_steps_from_10():
    scales = [oscillation_scale(7.5, i) for i in range(14)]
    assert scales[:11] == [7.5] * 11 and scales[11:] == [1.0, 7.5, 1.0]


def test_guidance_combines_three_passes():
    c, u, u2 = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0)
    assert guided_velocity(c, u, u2, 7.5, 3.0).item() == pytest.approx(1 + 3 * 1 + 7.5 * 1)


def test_image_guidance_ramps_over_frames_for_i2v_only():
    """One step from t=1 to t=0 with passes 3/2/1: the update is -(1 + s_img(f) + 7.5) per latent frame,
    with s_img(f) = linspace(1, 3, T)[f] for i2v_head and 3 everywhere for v2v_head."""
    z = _noise()
    refs = [[torch.randn(16, T, H, W)] for _ in range(B)]
    for cond_type, expected in (("i2v_head", torch.linspace(1.0, 3.0, T)), ("v2v_head", torch.full((T,), 3.0))):
        condition = build_condition(z, cond_type, refs)
        out = sample_v2(ThreePassGuidance(ConstantPasses(), _marked_text()), z.clone(), [1.0, 0.0], mask=condition,
                        replace_all_items=False)
        step = (z - out)[1, 0, :, 0, 0]  # item 1 keeps its generated frames
        torch.testing.assert_close(step, 1 + expected + 7.5)


def test_t2v_skips_the_third_pass_and_i2v_runs_it():
    z = _noise()
    counter = ConstantPasses()
    sample_v2(ThreePassGuidance(counter, _marked_text()), z, [1.0, 0.5, 0.0], mask=build_condition(z, "t2v"))
    assert counter.rows == [2 * B, 2 * B]
    counter = ConstantPasses()
    condition = build_condition(z, "i2v_head", [[torch.randn(16, 1, H, W)]] * B)
    sample_v2(ThreePassGuidance(counter, _marked_text()), z, [1.0, 0.0], mask=condition)
    assert counter.rows == [3 * B]


def test_separate_passes_equal_the_batched_call():
    """batch_passes=False runs three calls of B rows instead of one of 3B: the same per-row maths (float32
    rounding of the batched matmuls aside; 1e-5 on latents of size ~3)."""
    model, z = mmdit(), _noise()
    condition = build_condition(z, "i2v_head", [[torch.randn(16, 1, H, W)] for _ in range(B)])
    times = get_schedule(3, 6, T)
    joint = sample_v2(ThreePassGuidance(model, _text()), z, times, mask=condition)
    separate = sample_v2(ThreePassGuidance(model, _text(), batch_passes=False), z, times, mask=condition)
    torch.testing.assert_close(joint, separate, atol=1e-5, rtol=1e-5)


def test_reference_frame_goes_back_into_item_0_only_by_default():
    z = _noise()
    refs = [[torch.full((16, 1, H, W), 7.0)] for _ in range(B)]
    condition = build_condition(z, "i2v_head", refs)
    model = ConstantPasses()
    official = sample_v2(ThreePassGuidance(model, _marked_text()), z, [1.0, 0.0], mask=condition)
    assert (official[0, :, 0] == 7.0).all() and not (official[1, :, 0] == 7.0).any()
    every = sample_v2(ThreePassGuidance(model, _marked_text()), z, [1.0, 0.0], mask=condition, replace_all_items=True)
    assert (every[:, :, 0] == 7.0).all()


def test_loop_puts_back_head_and_tail():
    z = _noise()
    refs = [[torch.full((16, 1, H, W), 7.0), torch.full((16, 1, H, W), 9.0)] for _ in range(B)]
    out = sample_v2(ThreePassGuidance(ConstantPasses(), _marked_text()), z, [1.0, 0.0],
                    mask=build_condition(z, "i2v_loop", refs))
    assert (out[0, :, 0] == 7.0).all() and (out[0, :, -1] == 9.0).all()


def test_callback_gets_fixed_keys_and_can_stop():
    z, seen = _noise(), []

    def callback(info):
        seen.append(info)
        if info["i"] == 1:
            raise SamplingInterrupted()

    with pytest.raises(SamplingInterrupted) as stop:
        sample_v2(ThreePassGuidance(ConstantPasses(), _marked_text()), z, [1.0, 0.6, 0.3, 0.0],
                  mask=build_condition(z, "t2v"), callback=callback)
    assert [tuple(sorted(s)) for s in seen] == [tuple(sorted(CALLBACK_KEYS))] * 2
    assert seen[0]["x"].shape == z.shape and seen[0]["t"].tolist() == [1.0] * B
    assert stop.value.step == 1 and torch.equal(stop.value.x, seen[1]["x"])
    # t2v: c = 3, u = u2 = 1 (no condition anywhere), so v = 1 + 3 * 0 + 7.5 * (3 - 1) and denoised = x - 1 * v
    torch.testing.assert_close(seen[0]["denoised"], z - 16.0)


def test_mismatched_condition_is_rejected():
    z = _noise()
    condition = build_condition(torch.zeros(B, 16, T + 1, H, W), "t2v")
    with pytest.raises(ValueError, match="condition masks"):
        sample_v2(ThreePassGuidance(ConstantPasses(), _marked_text()), z, [1.0, 0.0], mask=condition)


def test_unpacked_state_matches_packing():
    z = _noise()
    assert torch.equal(unpack(pack(z), T, H, W), z)
