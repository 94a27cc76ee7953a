"""The Open-Sora-Plan v1.3 and Open-Sora 2.0 samplers have the shape a family's ``Sampler`` declaration names:
``schedule(ScheduleRequest)``, ``denoiser(model, caption, y_null, model_args, *, scale, channels, null_mask)``
and ``sample(denoiser, x, schedule, *, mask, noise, callback)``, called here the way the pipeline calls them."""

from __future__ import annotations

import pytest
import torch
from tiny_v2 import TXT_DIM, VEC_DIM

from opensora_core.conditioning.v2 import build_condition
from opensora_core.families import Sampler
from opensora_core.geometry.opensora_v2 import latent_shape
from opensora_core.sampling.core import GeneratorNoise, ScheduleRequest
from opensora_core.sampling.euler_ancestral import (
    euler_ancestral_schedule,
    release_schedule,
    sample_euler_ancestral,
    v_prediction_guidance,
)
from opensora_core.sampling.v2 import ThreePassGuidance, get_schedule, sample_v2, schedule_v2
from opensora_core.text.caption import Caption
from opensora_core.text.v2 import TextV2

OSP = Sampler(name="euler_ancestral", schedule=release_schedule, sample=sample_euler_ancestral,
              denoiser=v_prediction_guidance)
V2 = Sampler(name="flow_v2", schedule=schedule_v2, sample=sample_v2, denoiser=ThreePassGuidance.for_sampler)


def _run(sampler: Sampler, model, caption, y_null, null_mask, z, request, mask):
    """What ``pipeline.stages.sample_clip`` does with a family's sampler."""
    denoiser = sampler.denoiser(model, caption, y_null, {}, scale=4.0, channels=None, null_mask=null_mask)
    schedule = sampler.schedule(request)
    return sampler.sample(denoiser, z, schedule, mask=mask, noise=GeneratorNoise.from_seed(1), callback=None)


class OspEcho:
    """A v1.3 transformer stand-in: records its input, predicts v = tanh of the latent channels."""

    def __init__(self, channels: int):
        self.channels, self.inputs = channels, []

    def __call__(self, x, t, y, encoder_attention_mask=None):
        self.inputs.append(x)
        return torch.tanh(x[:, : self.channels])


def test_open_sora_plan_sampler_runs_as_declared():
    captions = Caption(torch.randn(1, 1, 3, 8), torch.ones(1, 3, dtype=torch.int64))
    model, z = OspEcho(4), torch.randn(1, 4, 2, 2, 2)
    out = _run(OSP, model, captions, torch.zeros(1, 1, 3, 8), torch.ones(1, 3, dtype=torch.int64), z,
               ScheduleRequest(3, 16, 16, 5), None)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert len(model.inputs) == 3 and model.inputs[0].shape[0] == 2  # three steps, negative and positive rows
    first = model.inputs[0][1:]  # the positive half of step 0: the scaled starting latent
    sigma = euler_ancestral_schedule(3).sigmas[0]
    torch.testing.assert_close(first, z * euler_ancestral_schedule(3).init_noise_sigma / (sigma**2 + 1) ** 0.5)


def test_open_sora_plan_condition_channels_follow_the_scaled_latent():
    """The sampler's ``mask`` is the i2v condition: appended unscaled after the scaled latent, for both halves."""
    mask = torch.ones(1, 3, dtype=torch.int64)
    model, z, condition = OspEcho(4), torch.randn(1, 4, 2, 2, 2), torch.full((1, 5, 2, 2, 2), 7.0)
    _run(OSP, model, Caption(torch.randn(1, 1, 3, 8), mask), torch.zeros(1, 1, 3, 8), mask, z,
         ScheduleRequest(2, 16, 16, 5), condition)
    assert all(x.shape == (2, 9, 2, 2, 2) and (x[:, 4:] == 7.0).all() for x in model.inputs)


def test_open_sora_plan_guides_every_channel():
    mask = torch.ones(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="channels=None"):
        v_prediction_guidance(OspEcho(4), Caption(torch.randn(1, 1, 3, 8), mask), torch.zeros(1, 1, 3, 8),
                              scale=4.0, channels=3, null_mask=mask)


def _text() -> TextV2:
    g = torch.Generator().manual_seed(0)
    return TextV2(torch.randn(1, 5, TXT_DIM, generator=g), torch.randn(1, VEC_DIM, generator=g),
                  torch.randn(1, 5, TXT_DIM, generator=g), torch.randn(1, VEC_DIM, generator=g))


class MMDiTEcho:
    """An MMDiT stand-in (keyword call, packed tokens): records the guidance rows it is called with."""

    def __init__(self):
        self.guidance = []

    def __call__(self, img, guidance, **kwargs):
        self.guidance.append(guidance)
        return torch.tanh(img)


def test_open_sora_2_sampler_runs_as_declared():
    request = ScheduleRequest(4, 32, 48, 5)
    shape = latent_shape(1, 32, 48, 5)
    model, z = MMDiTEcho(), torch.randn(shape.shape)
    out = _run(V2, model, _text(), None, None, z, request, build_condition(z, "t2v"))
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert schedule_v2(request) == get_schedule(4, shape.tokens_per_frame, shape.frames)
    assert len(model.guidance) == 4 and model.guidance[0].tolist() == [4.0, 4.0]  # scale -> text guidance


def test_open_sora_2_takes_its_negative_prompt_from_the_text():
    with pytest.raises(ValueError, match="negative prompt inside TextV2"):
        ThreePassGuidance.for_sampler(MMDiTEcho(), _text(), torch.zeros(1, 1, 5, TXT_DIM), scale=7.5)
