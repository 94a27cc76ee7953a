"""Open-Sora 2.0 through the one generation pipeline: the official sampler golden cases replayed end to end
(file loading, prompt suffixes, text encoding, start noise from the seed, condition type, three-pass guidance,
frame-0 replacement, decode), and the condition types the pipeline refuses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_case
from safetensors.torch import load_file

from opensora_core.geometry import HUNYUAN_VAE
from opensora_core.loading import load_dit
from opensora_core.pipeline import Components, GenerationSpec, generate, plan_generation
from opensora_core.families import by_release
from opensora_core.text.v2 import CaptionV2

V2 = by_release("v2.0")
ROPE = ("axes_dim", "theta", "use_liger_rope")  # what no tensor of the file shows


class TableText:
    """The case's text encoders: look-up tables ``in.t5.<i>`` / ``in.clip.<i>`` over [prompts..., ""]."""

    def __init__(self, cfg: dict, io: dict):
        self.texts = list(cfg["prompts"]) + [""]
        self.io = io
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> CaptionV2:
        self.seen += texts
        rows = [self.texts.index(t) for t in texts]  # an unexpected prompt text fails here
        return CaptionV2(torch.stack([self.io[f"in.t5.{i}"] for i in rows]),
                         torch.stack([self.io[f"in.clip.{i}"] for i in rows]))


class RecordingVAE(torch.nn.Module):
    """Hunyuan geometry; ``encode`` gives the case's reference latent (a posterior sample in the official run),
    ``decode`` keeps the latent it is given (what the official ``out.latent`` records)."""

    geometry = HUNYUAN_VAE
    micro_batch_size = None
    latent_channels = 16

    def __init__(self, reference: torch.Tensor | None = None):
        super().__init__()
        self.reference, self.decoded, self.encoded = reference, [], []

    def encode(self, x, *, noise=None, **kwargs):
        self.encoded.append(tuple(x.shape))
        return self.reference.unsqueeze(0)

    def decode(self, z, num_frames, *, tiling=None):
        self.decoded.append(z.clone())
        return torch.zeros(z.shape[0], 3, num_frames, z.shape[3] * 8, z.shape[4] * 8)

    def decode_memory_bytes(self, latent_shape, num_frames=None, **kwargs):
        return 0

    def get_latent_size(self, input_size):
        return self.geometry.get_latent_size(input_size)


def _case(name: str):
    root = reference_case("v2_0", name)
    return root, json.loads((root / "config.json").read_text()), load_file(str(root / "io.safetensors"))


def _model(root, cfg):
    kwargs = cfg["model"]["constructor_kwargs"]
    return load_dit(root / "weights.safetensors", config_overrides={k: kwargs[k] for k in ROPE}).model


def _spec(cfg, prompts: list[str], seed: int, **extra) -> GenerationSpec:
    opt = cfg["sampling_option"]
    return GenerationSpec(prompts=prompts, num_frames=opt["num_frames"], height=opt["height"], width=opt["width"],
                          steps=opt["num_steps"], seed=seed, **extra)


def _close(actual, expected, cfg):
    tol = cfg["recommended_tolerance"]["out.latent"]
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"])


def test_t2v_golden_case_replays_through_the_pipeline():
    """Both prompts of sampler_t2v, from "prompt i" to the decoder's input: the official latent."""
    root, cfg, io = _case("sampler_t2v")
    text, vae = TableText(cfg, io), RecordingVAE()
    components = Components(_model(root, cfg), vae, text)
    generate(components, _spec(cfg, ["prompt 0", "prompt 1"], seed=3003))
    assert text.seen == cfg["prompts"] + ["", ""]  # suffixed prompts, then the empty negatives
    _close(vae.decoded[0], io["out.latent"], cfg)


def test_i2v_head_golden_case_replays_through_the_pipeline():
    """sampler_i2v_head item 0 (its reference latent; the start noise of one item is the first rows of the
    seed's draw): the reference is encoded once, frame 0 goes back in, the ramp and all three passes apply."""
    root, cfg, io = _case("sampler_i2v_head")
    vae = RecordingVAE(io["in.ref_latent.0"])
    components = Components(_model(root, cfg), vae, TableText(cfg, io))
    image = torch.rand(1, 48, 80, 3)  # resized and centre-cropped to 64x64 before the encode
    generate(components, _spec(cfg, ["prompt 0"], seed=3103, condition_type="i2v_head"), [image])
    assert vae.encoded == [(1, 3, 1, 64, 64)]
    _close(vae.decoded[0], io["out.latent"][:1], cfg)


@pytest.mark.parametrize("cond_type, frames", [("i2v_tail", [2]), ("i2v_loop", [0, 2])])
def test_tail_and_loop_condition_their_frames_and_put_the_reference_back(cond_type, frames):
    """The same case's model with the other i2v types: the reference latent ends in the conditioned latent
    frames of the decoded latent (the official replacement), the other frames are generated."""
    root, cfg, io = _case("sampler_i2v_head")
    ref = io["in.ref_latent.0"]
    vae = RecordingVAE(ref)
    components = Components(_model(root, cfg), vae, TableText(cfg, io))
    generate(components, _spec(cfg, ["prompt 0"], seed=3103, condition_type=cond_type), [torch.rand(1, 64, 64, 3)])
    latent = vae.decoded[0][0]
    for f in frames:
        torch.testing.assert_close(latent[:, f], ref[:, 0])
    free = [f for f in range(latent.shape[1]) if f not in frames]
    assert all((latent[:, f] - ref[:, 0]).abs().max() > 0.1 for f in free)


@pytest.mark.parametrize("cond_type", ["v2v_head_half", "v2v_tail_half"])
def test_official_condition_types_that_crash_are_refused_at_planning(cond_type):
    spec = GenerationSpec(prompts=["a cat"], num_frames=9, height=64, width=64, condition_type=cond_type)
    with pytest.raises(ValueError, match=cond_type):
        plan_generation(V2, spec, [33])


def test_an_i2v_type_without_a_reference_names_the_fix():
    spec = GenerationSpec(prompts=["a cat"], num_frames=9, height=64, width=64, condition_type="i2v_head")
    with pytest.raises(ValueError, match="needs a reference image"):
        plan_generation(V2, spec, [])


def test_a_reference_with_t2v_is_refused():
    spec = GenerationSpec(prompts=["a cat"], num_frames=9, height=64, width=64)
    with pytest.raises(ValueError, match="condition_type is t2v"):
        plan_generation(V2, spec, [1])


def test_v1_options_are_refused_for_v2_and_v2_options_for_v1():
    with pytest.raises(ValueError, match="no aesthetic score"):
        plan_generation(V2, GenerationSpec(prompts=["a"], num_frames=9, height=64, width=64, aesthetic_score=6.5), [])
    with pytest.raises(ValueError, match="image_cfg_scale is not an option"):
        plan_generation(by_release("v1.2"), GenerationSpec(prompts=["a"], num_frames=51, height=240, width=426,
                                                           image_cfg_scale=3.0), [])


def test_sizes_off_the_16_pixel_grid_are_refused_with_the_rounded_size():
    with pytest.raises(ValueError, match="use 64x80"):
        plan_generation(V2, GenerationSpec(prompts=["a"], num_frames=9, height=64, width=72), [])
