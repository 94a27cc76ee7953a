"""Latent geometry of the Open-Sora-Plan VAEs: the causal 4x8x8 rules, against the measured official
table (tables/frame_arithmetic.json) and against the tiny real models."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reference_dir

from opensora_core.geometry import OSP_CAUSAL_VAE, OSP_WF_VAE, LatentGeometry
from opensora_core.vae.causal_vae import CAUSAL_VAE_PRESETS, CausalVAEModel
from opensora_core.vae.wfvae import WFVAEModel

TINY_CAUSAL = {"hidden_size": 32, "hidden_size_mult": (1, 1, 1, 1), "num_res_blocks": 1}
TINY_WFVAE = {"base_channels": 8, "encoder_energy_flow_hidden_size": 4, "decoder_energy_flow_hidden_size": 8}


@pytest.fixture(scope="module")
def table() -> dict:
    root = reference_dir()
    path = None if root is None else root / "osp" / "tables" / "frame_arithmetic.json"
    if path is None or not path.is_file():
        pytest.skip("Open-Sora-Plan reference tables (shared/reference/osp/tables) not found")
    return json.loads(path.read_text())


def test_measured_vae_frames_and_sizes(table):
    for frames, row in table["measured"].items():
        t = int(frames)
        latent = OSP_CAUSAL_VAE.latent_frames(t)
        assert (latent, OSP_CAUSAL_VAE.decoded_frames(latent)) == (row["latent_frames"], row["decoded_frames"]), t
        assert list(OSP_CAUSAL_VAE.latent_hw(16, 16)) == row["latent_hw_for_16x16"]


def test_diffusion_side_examples(table):
    """The v1.3 pipeline's (num_frames - 1) // 4 + 1 latent frames for the 4n+1 counts it accepts."""
    for frames, row in table["diffusion_side"]["examples"].items():
        t = int(frames)
        OSP_CAUSAL_VAE.check_num_frames(t)
        assert OSP_CAUSAL_VAE.latent_frames(t) == row["latent_frames"]
        assert OSP_CAUSAL_VAE.decoded_frames(row["latent_frames"]) == row["decoded_frames"]


def test_latent_tokens_of_the_release_sizes(table):
    for size, (t, h, w, _) in table["diffusion_side"]["latent_tokens_v1_3"].items():
        frames, height, width = map(int, size.split("x"))
        assert OSP_CAUSAL_VAE.latent_size(frames, height, width) == (t, h, w)


@pytest.mark.parametrize("frames, nearest", [(6, (5, 9)), (10, (9, 13)), (92, (89, 93)), (2, (1, 5))])
def test_frame_counts_that_do_not_round_trip_name_the_nearest_valid_ones(frames, nearest):
    with pytest.raises(ValueError, match=rf"num_frames={frames} .* use {nearest[0]} or {nearest[1]}"):
        OSP_CAUSAL_VAE.check_num_frames(frames)


def test_decode_frame_count_must_be_what_the_latent_gives():
    OSP_CAUSAL_VAE.check_decodable(3, 9)
    with pytest.raises(ValueError, match="num_frames=10 .* pass num_frames=9"):
        OSP_CAUSAL_VAE.check_decodable(3, 10)


@pytest.mark.parametrize("bad", [0, -4, 2.5])
def test_frame_counts_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integer"):
        OSP_CAUSAL_VAE.latent_frames(bad)


def test_time_factor_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        LatentGeometry(time_factor=3, causal=True)


def test_frame_maps_are_inverse():
    """Latent frame 0 holds pixel frame 0 alone; latent j > 0 holds frames 4j-3 ... 4j."""
    frames = 17
    covered = []
    for j in range(OSP_CAUSAL_VAE.latent_frames(frames)):
        pixels = OSP_CAUSAL_VAE.latent_to_pixel_frames(j, frames)
        assert all(OSP_CAUSAL_VAE.pixel_to_latent_frame(f, frames) == j for f in pixels)
        covered += list(pixels)
    assert covered == list(range(frames))
    assert OSP_CAUSAL_VAE.latent_to_pixel_frames(2, frames) == range(5, 9)
    assert OSP_CAUSAL_VAE.leading_pixel_frames(2, frames) == 5


def test_pixel_frame_range():
    assert OSP_CAUSAL_VAE.pixel_frame_range(1) == (1, 4)
    assert OSP_CAUSAL_VAE.pixel_frame_range(3) == (9, 12)


def _tiny(name: str) -> torch.nn.Module:
    if name in CAUSAL_VAE_PRESETS:
        return CausalVAEModel.from_preset(name, **TINY_CAUSAL)
    return WFVAEModel.from_preset(name, **TINY_WFVAE)


@pytest.mark.parametrize("name", [*CAUSAL_VAE_PRESETS, "WFVAEModel_D8_4x8x8"])
def test_models_follow_the_geometry(name):
    """Every VAE encodes T frames to ceil(T/4) and decodes those to 4n - 3 (also for T not 4n+1)."""
    model = _tiny(name)
    assert model.geometry == (OSP_WF_VAE if name.startswith("WFVAE") else OSP_CAUSAL_VAE)
    with torch.no_grad():
        for frames in (1, 2, 6, 9):
            posterior = model.encode(torch.zeros(1, 3, frames, 16, 24))
            assert tuple(posterior.mean.shape[2:]) == OSP_CAUSAL_VAE.latent_size(frames, 16, 24)
            video = model.decode(posterior.mean)
            assert video.shape[2] == OSP_CAUSAL_VAE.decoded_frames(posterior.mean.shape[2])
            assert tuple(video.shape[3:]) == OSP_CAUSAL_VAE.decoded_hw(16, 24)
