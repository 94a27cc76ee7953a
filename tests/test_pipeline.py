"""The one generation path on tiny models: every task, frame counts, pinned frames, errors."""

from __future__ import annotations

import pytest
import torch

import tiny
from opensora_core import pipeline
from opensora_core.families import for_class
from opensora_core.pipeline import Components, GenerationSpec, generate
from opensora_core.sampling import SamplingInterrupted

H, W = 32, 48


@pytest.fixture(scope="module")
def v12():
    return Components(tiny.stdit3(), tiny.vae_v1_2(), tiny.text_encoder())


@pytest.fixture(scope="module")
def v11():
    return Components(tiny.stdit2(), tiny.sd_vae(), tiny.text_encoder())


def _image(seed: int, t: int = 1, h: int = 40, w: int = 40) -> torch.Tensor:
    return torch.rand(t, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _spec(**kw) -> GenerationSpec:
    base = dict(prompts=["a red circle moves to the right"], height=H, width=W, num_frames=17, steps=3, seed=7)
    return GenerationSpec(**{**base, **kw})


def _reference_latents(components, refs, seed):
    """The latents generate() inserts: references are encoded first from the seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return pipeline.encode_references(components.vae, refs, H, W, g)


def test_text_to_video_shapes_range_and_determinism(v12):
    a = generate(v12, _spec())
    b = generate(v12, _spec())
    c = generate(v12, _spec(seed=8))
    assert a.frames.shape == (1, 17, H, W, 3)
    assert 0 <= float(a.frames.min()) and float(a.frames.max()) <= 1
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)
    assert a.fps == 24 and a.plan.steps == 3


def test_image_to_video_pins_the_first_latent_frame(v12):
    image = _image(1)
    result = generate(v12, _spec(mask_strategy="0"), [image])
    ref = _reference_latents(v12, [image], seed=7)[0]
    torch.testing.assert_close(result.clips[0].latent[0, :, :1], ref, rtol=0, atol=0)
    assert not torch.equal(result.clips[0].latent[0, :, 1:2], ref)


def test_stitching_pins_first_and_last_frames(v12):
    first, last = _image(1), _image(2)
    result = generate(v12, _spec(num_frames=33, mask_strategy="0;0,1,0,-1,1"), [first, last])
    refs = _reference_latents(v12, [first, last], seed=7)
    latent = result.clips[0].latent[0]
    torch.testing.assert_close(latent[:, :1], refs[0], rtol=0, atol=0)
    torch.testing.assert_close(latent[:, -1:], refs[1], rtol=0, atol=0)
    assert result.frames.shape[1] == 33


def test_extension_loops_join_to_the_official_length(v12):
    result = generate(v12, _spec(prompts=["|0|a red circle|1|a blue square"], loops=3, condition_frame_length=2,
                                 mask_strategy="0"), [_image(3)])
    plan = result.plan
    assert plan.drop_frames == 5  # 2 latent frames of a 17-frame clip decode to pixel frames 0..4
    assert plan.total_frames == 17 + 2 * (17 - 5)
    assert result.frames.shape[1] == plan.total_frames
    assert plan.round_prompts[1] != plan.round_prompts[0] and plan.round_prompts[2] == plan.round_prompts[1]
    assert [c.drop for c in result.clips] == [0, 5, 5]


def test_extension_continues_from_the_previous_clip(v12):
    """Round 1's first latent frames are the re-encoded end of round 0 (pinned, edit ratio 0).

    As the official ``append_generated``: the decoded clip is encoded as the VAE returned it (not clamped,
    not resized). Same functions on the same inputs as inside generate(), so the copy is exact.
    """
    result = generate(v12, _spec(loops=2, condition_frame_length=1))
    assert result.clips[0].frames is not None  # decoded by round 1
    g = torch.Generator().manual_seed(7)
    # replay the generator: round 0's start noise and its 3 per-step draws come first
    torch.randn((1, 4, 5, 4, 6), generator=g)
    for _ in range(3):
        torch.randn((1, 4, 5, 4, 6), generator=g)
    video = pipeline.decode_video(v12.vae, result.clips[0].latent, 17)  # (1, 3, 17, H, W), not clamped
    again = pipeline.encode_video(v12.vae, video, g)[0]
    torch.testing.assert_close(result.clips[1].latent[0, :, :1], again[:, -1:], rtol=0, atol=0)


def test_video_to_video_edit_changes_but_follows_the_reference(v12):
    video = _image(4, t=17)
    ref = _reference_latents(v12, [video], seed=7)[0]
    edited = generate(v12, _spec(mask_strategy="0,0,0,0,5,0.5"), [video]).clips[0].latent[0]
    free = generate(v12, _spec()).clips[0].latent[0]
    assert not torch.equal(edited, ref)
    assert (edited - ref).abs().mean() < (free - ref).abs().mean()


def test_pixel_positions_are_converted_with_the_vae_geometry(v12):
    plan = pipeline.plan_generation(for_class("STDiT3"), _spec(mask_strategy="0,0,0,16,1", pixel_positions=True), [1])
    assert plan.groups[0][0].target_start == 4  # pixel frame 16 of 17 is in latent frame 4
    assert "pixel frame" in plan.describe()


def test_v1_1_image_to_video_with_iddpm(v11):
    image = _image(5)
    result = generate(v11, _spec(num_frames=4, mask_strategy="0", steps=4), [image])
    assert result.frames.shape == (1, 4, H, W, 3)
    assert result.plan.family.sampler.name == "iddpm" and result.fps == 8  # v1.1 saves at fps / frame_interval
    ref = _reference_latents(v11, [image], seed=7)[0]
    latent = result.clips[0].latent[0]
    # v1.1 re-noises kept frames lightly at the last step: frame 0 stays close to the reference
    assert (latent[:, :1] - ref).abs().mean() < 0.1 * (latent[:, 1:2] - ref).abs().mean()


def test_callback_reports_global_progress_and_can_stop(v12):
    seen = []
    generate(v12, _spec(loops=2, condition_frame_length=1), callback=lambda info: seen.append((info["step"], info["steps"])))
    assert seen == [(i, 6) for i in range(1, 7)]

    def stop(info):
        if info["step"] == 2:
            raise SamplingInterrupted()

    with pytest.raises(SamplingInterrupted) as err:
        generate(v12, _spec(), callback=stop)
    assert err.value.step == 1 and err.value.x is not None


def test_negative_prompt_changes_the_result(v12):
    plain = generate(v12, _spec()).frames
    negative = generate(v12, _spec(negative_prompts=["blurry"])).frames
    assert not torch.equal(plain, negative)


@pytest.mark.parametrize(
    "kwargs, refs, message",
    [
        (dict(num_frames=8), 0, "2..16|between 2 and 16|frames"),
        (dict(mask_strategy="0,1"), 1, "reference"),
        (dict(mask_strategy="0,0,0,0,1,1.5"), 1, "edit"),
        (dict(mask_strategy="0,0,0,9,1"), 1, "beyond|past|outside"),
        (dict(height=8), 0, "too small"),
        (dict(loops=2, condition_frame_length=5), 0, "condition_frame_length"),
        (dict(steps=0), 0, "steps must be >= 1"),
        (dict(cfg_scale=float("nan")), 0, "cfg_scale must be a finite number >= 0"),
        (dict(cfg_scale=-2.0), 0, "cfg_scale must be a finite number >= 0"),
        (dict(seed=-1), 0, "seed must be an integer from 0 to 18446744073709551615"),
        (dict(seed=2**64), 0, "seed must be an integer from 0 to"),
        (dict(width=70), 0, "width 70 is not a multiple of 8.*use width 64 or 72"),
        (dict(fps=float("inf")), 0, "fps must be a positive number"),
        (dict(save_fps=0.0), 0, "save_fps must be a positive number"),
        (dict(condition_frame_edit=2.0), 0, "condition_frame_edit"),
        (dict(loops=2, condition_frame_length=0), 0, "condition_frame_length must be >= 1"),
        (dict(align=0), 0, "align must be >= 1"),
        (dict(mask_strategy=""), 1, "1 reference.* mask strategy is empty"),
        (dict(height=40000, width=40000, num_frames=1000), 0, r"cannot fit: .* needs about \d+\.\d GiB"),
    ],
)
def test_bad_requests_fail_before_any_heavy_work(kwargs, refs, message):
    with pytest.raises(ValueError, match=message):
        pipeline.plan_generation(for_class("STDiT3"), _spec(**kwargs), [1] * refs)


def test_wrong_vae_for_the_model_is_named(v12):
    mixed = Components(v12.model, tiny.sd_vae(), v12.text_encoder)
    with pytest.raises(ValueError, match="needs the Open-Sora VAE v1.2, but an SD-VAE"):
        generate(mixed, _spec())


def test_text_encoder_length_must_match_the_model(v12):
    short = Components(v12.model, v12.vae, tiny.text_encoder(max_length=12))
    with pytest.raises(ValueError, match="set the T5 max length to 24"):
        generate(short, _spec())


def test_sample_video_takes_encoded_captions_per_round(v12):
    """sample_video (the nodes' path) gives generate()'s latents for the same captions."""
    spec = _spec(prompts=["|0|a red circle|1|a blue square"], loops=2, condition_frame_length=1)
    full = generate(v12, spec)
    captions = [pipeline.encode_prompts(v12.text_encoder, p, v12.model) for p in full.plan.round_prompts]
    sampled = pipeline.sample_video(v12, spec, captions)
    assert len(sampled.clips) == 2
    for a, b in zip(full.clips, sampled.clips):
        torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=0)


def test_sample_video_checks_captions_before_sampling(v12):
    caption = tiny.text_encoder(max_length=12).encode(["a cat"])
    with pytest.raises(ValueError, match="set the T5 max length to 24"):
        pipeline.sample_video(v12, _spec(), [caption])
    good = v12.text_encoder.encode(["a cat"])
    with pytest.raises(ValueError, match="one caption per round"):
        pipeline.sample_video(v12, _spec(loops=2, condition_frame_length=1), [good])


def test_sampling_memory_estimate_scales_with_the_batch(v12):
    model = v12.model
    assert model.sampling_memory_bytes(2, (5, 4, 6)) == 2 * model.sampling_memory_bytes(1, (5, 4, 6))


def test_references_are_fitted_to_the_requested_size_not_the_decoded_one():
    """collect_references_batch reads every reference at the requested image_size (240p 9:16 = 240x426)
    and the VAE floors it (latent 30x53, decoded 240x424); the reference is not squeezed to 424 first."""
    seen = []

    class RecordingVAE:
        def encode(self, x, noise=None):
            seen.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 4, x.shape[2], x.shape[3] // 8, x.shape[4] // 8)

    image, video = _image(1, h=300, w=500), _image(2, t=3, h=300, w=500)
    latents = pipeline.encode_references(RecordingVAE(), [image, video], 240, 426, torch.Generator())
    assert seen == [(1, 3, 1, 240, 426), (1, 3, 3, 240, 426)]
    assert [tuple(z.shape) for z in latents] == [(4, 1, 30, 53), (4, 3, 30, 53)]


def test_an_official_preset_size_is_accepted_and_decodes_to_the_multiple_of_8_below():
    plan = pipeline.plan_generation(for_class("STDiT3"), _spec(height=240, width=426))
    assert plan.latent_size[1:] == (30, 53) and plan.geometry.decoded_hw(240, 426) == (240, 424)


def test_iddpm_steps_are_checked_before_loading(v12):
    with pytest.raises(ValueError, match="steps must be from 2 to 1000 for STDiT2"):
        pipeline.plan_generation(for_class("STDiT2"), _spec(steps=1001, num_frames=16))


def test_unused_references_and_empty_prompts_are_warned_about(caplog):
    with caplog.at_level("WARNING", logger="opensora"):
        pipeline.plan_generation(for_class("STDiT3"), _spec(prompts=["  "], mask_strategy="0"), [1, 1])
    assert "reference(s) [1] are not used" in caplog.text and "prompt 0 is empty" in caplog.text


def test_activation_estimate_is_checked_with_the_model(v12, monkeypatch):
    """One 32x48 frame: 18 KB of video fits a 24 KB machine, the tiny model's 27 KB step does not."""
    monkeypatch.setattr(pipeline.plan, "machine_memory_bytes", lambda: 24_000)
    with pytest.raises(ValueError, match="one sampling step's activations needs about"):
        generate(v12, _spec(num_frames=1))
