"""SD-VAE and VAE v1.2: key layouts, manifests on meta, frame arithmetic, sampling, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from opensora_core.families import build_model, detect, for_class
from opensora_core.families.common import SD_VAE_KINDS
from opensora_core.loading import load_vae
from opensora_core.vae import (
    AutoencoderKL,
    AutoencoderKLConfig,
    RecordedNoise,
    TemporalVAEConfig,
    VideoAutoencoderKL,
    VideoAutoencoderPipeline,
    to_diffusers_layout,
    to_ldm_layout,
)

V1_2_VAE = for_class("STDiT3").vae  # the VAE kinds an Open-Sora v1.2 model takes


def detect_vae_layout(state_dict) -> str | None:
    """The VAE file kind the family registry finds (its layout name), or None."""
    found = detect(state_dict, role="vae")
    return None if found is None else found.kind.name

TINY_SD = AutoencoderKLConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
TINY_TEMPORAL = TemporalVAEConfig(
    filters=8, num_res_blocks=1, channel_multipliers=(1, 2, 2, 2), temporal_downsample=(False, True, True), num_groups=4
)


def tiny_pipeline(seed: int = 0) -> VideoAutoencoderPipeline:
    torch.manual_seed(seed)
    return VideoAutoencoderPipeline(TINY_SD, TINY_TEMPORAL).eval()


def tiny_sd(seed: int = 0) -> VideoAutoencoderKL:
    torch.manual_seed(seed)
    return VideoAutoencoderKL(TINY_SD).eval()


def video(t: int, h: int = 16, w: int = 24, b: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(t)) * 2 - 1


# ---------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------


def test_ldm_layout_loads_and_gives_identical_outputs():
    """diffusers -> LDM with our table, loaded into a fresh model: same encode and decode, bit for bit."""
    source = AutoencoderKL(TINY_SD).eval()
    ldm = to_ldm_layout(source.state_dict())
    assert "decoder.up.0.block.0.conv1.weight" in ldm and "encoder.mid.attn_1.q.weight" in ldm
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    target = AutoencoderKL(TINY_SD).eval()
    keys = list(ldm)
    target.load_state_dict(ldm, strict=True)
    assert list(ldm) == keys  # the caller's dict is not renamed in place
    x, z = torch.randn(2, 3, 32, 16), torch.randn(2, 4, 3, 2)
    with torch.no_grad():
        assert torch.equal(target.encode_moments(x), source.encode_moments(x))
        assert torch.equal(target.decode(z), source.decode(z))


def test_legacy_attention_names_load():
    source = AutoencoderKL(TINY_SD).eval()
    legacy = {
        k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
        .replace(".to_out.0.", ".proj_attn."): v
        for k, v in source.state_dict().items()
    }
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    target = AutoencoderKL(TINY_SD)
    target.load_state_dict(legacy, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def test_wrapper_accepts_ldm_layout_under_its_prefix():
    source = tiny_sd()
    ldm = {"module." + k: v for k, v in to_ldm_layout(source.module.state_dict()).items()}
    target = VideoAutoencoderKL(TINY_SD)
    target.load_state_dict(ldm, strict=True)
    assert torch.equal(target.module.decoder.conv_out.weight, source.module.decoder.conv_out.weight)


def test_rename_table_matches_reference_mapping(reference):
    """All 248 rows of vae_key_mapping.json: LDM and legacy names -> diffusers, and back, with shapes."""
    rows = json.loads((reference / "v1_1" / "vae_key_mapping.json").read_text())["rows"]
    ldm = {r["ldm"]: torch.empty(r["ldm_shape"], device="meta") for r in rows}
    legacy = {r["diffusers_legacy"]: torch.empty(r["diffusers_shape"], device="meta") for r in rows}
    diffusers = {r["diffusers"]: torch.empty(r["diffusers_shape"], device="meta") for r in rows}
    expected = {r["diffusers"]: tuple(r["diffusers_shape"]) for r in rows}
    assert {k: tuple(v.shape) for k, v in to_diffusers_layout(ldm).items()} == expected
    assert {k: tuple(v.shape) for k, v in to_diffusers_layout(legacy).items()} == expected
    expected_ldm = {r["ldm"]: tuple(r["ldm_shape"]) for r in rows}
    assert {k: tuple(v.shape) for k, v in to_ldm_layout(diffusers).items()} == expected_ldm


@pytest.mark.parametrize(
    ("prefix", "layout"),
    [("", "sd_diffusers"), ("vae.", "sd_diffusers"), ("first_stage_model.", "sd_ldm"), ("module.", "sd_ldm")],
)
def test_detect_sd_layouts(prefix, layout):
    sd = AutoencoderKL(TINY_SD, device="meta").state_dict()
    sd = to_ldm_layout(sd) if layout == "sd_ldm" else sd
    assert detect_vae_layout({prefix + k: v for k, v in sd.items()}) == layout


def test_detect_v1_2_and_foreign_files():
    with torch.device("meta"):
        pipeline = VideoAutoencoderPipeline(TINY_SD, TINY_TEMPORAL)
    assert detect_vae_layout(pipeline.state_dict()) == "vae_v1_2"
    dit_like = {"x_embedder.proj.weight": torch.zeros(1), "spatial_blocks.0.attn.qkv.weight": torch.zeros(1)}
    assert detect_vae_layout(dit_like) is None


# ---------------------------------------------------------------------------
# Full-size manifests on the meta device
# ---------------------------------------------------------------------------


def _shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_vae_v1_2_manifest_on_meta(reference):
    manifest = json.loads((reference / "v1_2" / "manifest_vae_v1_2.json").read_text())
    with torch.device("meta"):
        vae = build_model(manifest["class"], manifest["config"])
    assert _shapes(vae) == {**manifest["params"], **manifest["buffers"]}
    assert sum(v.numel() for v in vae.state_dict().values()) == manifest["counts"]["num_state_dict_elements"]
    assert vae.micro_batch_size == 4 and vae.geometry.micro_frame_size == 17 and vae.geometry.time_factor == 4


def test_sd_vae_manifest_on_meta(reference):
    manifest = json.loads((reference / "v1_1" / "manifest_vae_sd_vae_ft_ema.json").read_text())
    with torch.device("meta"):
        vae = build_model(manifest["class"], manifest["config"])
        wrapper = build_model("VideoAutoencoderKL", manifest["wrapper"]["wrapper_kwargs_v1_1"])
    assert _shapes(vae) == manifest["params"]
    assert list(vae.state_dict()) == manifest["state_dict_key_order"]
    assert _shapes(wrapper) == {"module." + k: v for k, v in manifest["params"].items()}


def test_unknown_pretrained_name_asks_for_the_config():
    with pytest.raises(ValueError, match="autoencoder_config"):
        VideoAutoencoderKL.from_official_config({"from_pretrained": "someone/unknown-vae", "micro_batch_size": 4})


# ---------------------------------------------------------------------------
# Frame arithmetic through the real pipeline
# ---------------------------------------------------------------------------

FRAME_TABLE = {1: 1, 16: 4, 17: 5, 20: 6, 34: 10, 51: 15, 102: 30}  # FACTS v1.2 section 4


@pytest.mark.parametrize(("frames", "latent_frames"), FRAME_TABLE.items())
def test_frame_count_round_trip(frames, latent_frames):
    vae = tiny_pipeline()
    vae.spatial_vae.micro_batch_size = None  # fewer calls; the frame arithmetic is the temporal stage's
    z = vae.encode(video(frames, 8, 8), sample=False)
    assert z.shape == (1, 4, latent_frames, 1, 1)
    assert vae.get_latent_size([frames, 8, 8]) == [latent_frames, 1, 1]
    assert vae.decode(z, frames).shape == (1, 3, frames, 8, 8)


def test_decode_rejects_a_frame_count_the_latent_cannot_give():
    vae = tiny_pipeline()
    with pytest.raises(ValueError, match=r"num_frames=17 cannot be decoded from 6 latent frames.*between 18 and 21"):
        vae.decode(torch.zeros(1, 4, 6, 2, 2), 17)


@pytest.mark.parametrize("vae", [tiny_sd, tiny_pipeline])
def test_encode_takes_any_size_and_floors_like_the_official_vaes(vae):
    """Stride-2 convolutions after a one-pixel pad floor each halving: 20x13 -> 10x6 -> 5x3 -> 2x1 = floor(/8),
    and a latent that large decodes again (to 16x8), as the official VAEs do with 240x426 (-> 30x53 -> 240x424)."""
    model = vae()
    z = model.encode(torch.zeros(1, 3, 1, 20, 13), sample=False)
    assert z.shape == (1, 4, 1, 2, 1) and model.get_latent_size([1, 20, 13])[1:] == [2, 1]
    assert model.decode(z, 1).shape == (1, 3, 1, 16, 8)


def test_encode_refuses_frames_smaller_than_8_pixels():
    with pytest.raises(ValueError, match="7x16.*too small.*at least 8x8"):
        tiny_sd().encode(torch.zeros(1, 3, 2, 7, 16))


# ---------------------------------------------------------------------------
# Sampling and exactness of the micro-batching
# ---------------------------------------------------------------------------


def test_encode_samples_from_the_generator_not_the_global_rng():
    vae, x = tiny_pipeline(), video(5)
    state = torch.get_rng_state()
    a = vae.encode(x, generator=torch.Generator().manual_seed(1))
    b = vae.encode(x, generator=torch.Generator().manual_seed(1))
    c = vae.encode(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, vae.encode(x, sample=False))


def test_noise_hook_sees_official_draw_order():
    """Spatial draws per micro-batch of 4 frames in (b t) order, then one temporal draw per 17-frame chunk."""
    calls = []

    def noise(stage, shape):
        calls.append((stage, shape))
        return torch.zeros(shape)

    vae = tiny_pipeline()
    x = video(20, 8, 16, b=2)
    z = vae.encode(x, noise=noise)
    assert calls == [("spatial", (4, 4, 1, 2))] * 10 + [("temporal", (2, 4, 5, 1, 2)), ("temporal", (2, 4, 1, 1, 2))]
    assert torch.equal(z, vae.encode(x, sample=False))  # zero noise = the posterior means


def test_posterior_sample_uses_clamped_log_variance():
    """mean + exp(clamp(logvar, -30, 20) / 2) * eps with eps = 1: a huge logvar is clamped at 20."""
    vae = tiny_sd()
    with torch.no_grad():
        vae.module.quant_conv.bias[4:].fill_(1e4)  # logvar channels
    x = video(1, 8, 8)
    ones = RecordedNoise({"spatial": torch.ones(1, 4, 1, 1)})
    z = vae.encode(x, noise=ones)
    std = 0.18215 * torch.exp(torch.tensor(20.0 / 2)).item()
    assert torch.allclose(z - vae.encode(x, sample=False), torch.full_like(z, std))


def test_recorded_noise_must_match_the_draws():
    vae = tiny_pipeline()
    with pytest.raises(ValueError, match="needs more draws"):
        too_few = RecordedNoise({"spatial": torch.zeros(2, 4, 2, 3), "temporal": torch.zeros(1, 4, 2, 2, 3)})
        vae.encode(video(5), noise=too_few)


def test_micro_batch_size_does_not_change_the_result():
    """The SD-VAE works frame by frame, so 1, 4 or all frames at once give the same video (up to float32 sums)."""
    vae, z = tiny_pipeline(), torch.randn(1, 4, 2, 2, 3)
    results = []
    for size in (4, 1, None):
        vae.spatial_vae.micro_batch_size = size
        results.append(vae.decode(z, 5))
    assert all(torch.allclose(r, results[0], atol=1e-5, rtol=1e-5) for r in results)


def test_decode_leaves_the_latent_unchanged():
    vae, z = tiny_pipeline(), torch.randn(1, 4, 2, 2, 3)
    before = z.clone()
    vae.decode(z, 8)
    assert torch.equal(z, before)


# ---------------------------------------------------------------------------
# load_vae
# ---------------------------------------------------------------------------


def test_load_vae_builds_the_per_frame_wrapper_for_an_sd_vae_file(tmp_path):
    """The weights survive the file round trip bit for bit; the decodes agree to float32 rounding.

    Decodes are compared with a tolerance: ``load_vae`` returns a frozen model (requires_grad False) and
    the CPU may pick another matmul kernel for it than for the trainable source (seen: 2e-7). A wrong or
    missing weight moves the output by more than 1e-2.
    """
    source = tiny_sd().requires_grad_(False)
    path = tmp_path / "tiny_vae.safetensors"
    ldm = to_ldm_layout(source.module.state_dict())
    save_file({"first_stage_model." + k: v.contiguous() for k, v in ldm.items()}, path)
    vae = load_vae(path, expect=SD_VAE_KINDS, norm_num_groups=4)
    assert isinstance(vae, VideoAutoencoderKL) and vae.micro_batch_size == 4
    loaded = vae.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())  # round trip: exact
    z = torch.randn(1, 4, 2, 2, 3)
    torch.testing.assert_close(vae.decode(z, 2), source.decode(z, 2), rtol=1e-5, atol=1e-5)


def test_load_vae_builds_the_v1_2_pipeline():
    source = tiny_pipeline()
    vae = load_vae(source.state_dict(), expect=V1_2_VAE, norm_num_groups=4, dtype=torch.float64)
    assert isinstance(vae, VideoAutoencoderPipeline) and vae.scale.dtype == torch.float64
    assert vae.temporal_vae.config == TINY_TEMPORAL
    z = torch.randn(1, 4, 2, 2, 3, dtype=torch.float64)
    assert torch.allclose(vae.decode(z, 7), source.double().decode(z, 7))


def test_load_vae_rejects_a_diffusion_transformer():
    dit_like = {"x_embedder.proj.weight": torch.zeros(4, 4), "spatial_blocks.0.attn.qkv.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match="not a VAE file.*x_embedder"):
        load_vae(dit_like)


def test_load_vae_rejects_an_sd_vae_where_v1_2_is_needed():
    with pytest.raises(ValueError, match="Open-Sora v1.2 needs the video VAE.*OpenSora-VAE-v1.2"):
        load_vae(tiny_sd().module.state_dict(), expect=V1_2_VAE)


def test_load_vae_rejects_the_v1_2_vae_where_sd_is_needed():
    with pytest.raises(ValueError, match="v1.0/v1.1 models need the SD-VAE"):
        load_vae(tiny_pipeline().state_dict(), expect=SD_VAE_KINDS)
