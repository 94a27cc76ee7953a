"""Open-Sora-Plan VAEs on tiny widths: chunked/tiled paths, latent scaling, noise injection, loading and errors.

Chunked-vs-untiled tolerance: the chunked WF-VAE computes the same sums as the untiled one, but the
convolution kernels block their work by the number of frames, so the float32 rounding differs (~1e-6
here). We allow atol 2e-5 + rtol 1e-4, the reference cases' output tolerance (the official code itself
moves 2.8e-6 between float32 and float64); a real mistake (a lost cache frame, a wrong edge frame)
moves the output by 1e-2 ... 1 (the official tiling's bugs: 0.03-0.5).
"""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from opensora_core.checkpoints import CheckpointError, save_checkpoint
from opensora_core.families import build_model, by_name, detect
from opensora_core.loading import load_vae
from opensora_core.vae.causal_vae import CausalVAEModel, CausalVAETiling, _time_chunks
from opensora_core.vae.osp import (
    OpenSoraPlanVAE,
    WFVAEChunking,
    to_official_btchw,
)
from opensora_core.vae.posterior import DiagonalGaussian
from opensora_core.vae.wfvae import WFVAEModel, haar_filters_3d

TINY_CAUSAL = {"hidden_size": 32, "hidden_size_mult": (1, 1, 1, 1), "num_res_blocks": 1}
TINY_WFVAE = {"base_channels": 8, "encoder_energy_flow_hidden_size": 4, "decoder_energy_flow_hidden_size": 8}
ATOL, RTOL = 2e-5, 1e-4


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """N(0, 0.05) weights (norm gains around 1), as the reference cases draw them; Haar filters kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "wavelet" not in name:
                gain = 1.0 if name.endswith("norm.weight") or name.startswith(("norm", "encoder.norm")) else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (gain if p.ndim == 1 else 0.0))
    return model.eval()


def wfvae(seed: int = 0, **overrides) -> WFVAEModel:
    return _randomised(WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", **{**TINY_WFVAE, **overrides}), seed)


def causal_vae(preset: str = "CausalVAEModel_D4_4x8x8", seed: int = 0) -> CausalVAEModel:
    return _randomised(CausalVAEModel.from_preset(preset, **TINY_CAUSAL), seed)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# ==================================================================================================
# WF-VAE chunked encode / decode == untiled
# ==================================================================================================


@pytest.mark.parametrize("latent_frames", [1, 2, 3, 6, 10])
@pytest.mark.parametrize("chunk", [1, 4])
def test_wfvae_chunked_decode_equals_untiled(latent_frames, chunk):
    """Including 2, 6 and 10 latent frames, where the official tiled decode crashes or is wrong."""
    model = wfvae()
    z = torch.randn(1, 8, latent_frames, 2, 3, generator=torch.Generator().manual_seed(latent_frames))
    with torch.no_grad():
        _close(model.chunked_decode(z, chunk), model.decode(z))


@pytest.mark.parametrize("frames", [1, 2, 6, 9, 17, 22])
@pytest.mark.parametrize("chunk", [3, 8])
def test_wfvae_chunked_encode_equals_untiled(frames, chunk):
    model = wfvae()
    x = torch.rand(1, 3, frames, 16, 16, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        chunked, whole = model.chunked_encode(x, chunk), model.encode(x)
    _close(chunked.mean, whole.mean)
    _close(chunked.logvar, whole.logvar)


def test_wfvae_chunked_decode_runs_the_decoder_on_chunks_only():
    model = wfvae()
    lengths = []
    model.decoder.conv_in.register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[2]))
    with torch.no_grad():
        model.chunked_decode(torch.randn(1, 8, 10, 2, 2), latent_frames_per_chunk=3)
    assert lengths == [1, 3, 3, 3]


def test_wfvae_chunking_needs_layernorm():
    """With GroupNorm the statistics span the clip, so chunks could not be exact: refused, not approximated."""
    model = wfvae(norm_type="groupnorm", base_channels=32, encoder_energy_flow_hidden_size=32,
                  decoder_energy_flow_hidden_size=32)
    with pytest.raises(ValueError, match="layernorm"):
        model.chunked_decode(torch.randn(1, 8, 2, 2, 2))


def test_wfvae_haar_constant_is_the_official_one():
    """0.3536, not 1/(2 sqrt 2): an analysis/synthesis round trip scales by 8 * 0.3536^2 = 1.000264."""
    filters = haar_filters_3d()
    assert filters.abs().unique().tolist() == [pytest.approx(0.3536)]
    assert float((filters[0] ** 2).sum()) == pytest.approx(8 * 0.3536**2, rel=1e-6)


# ==================================================================================================
# CausalVAE official tiling
# ==================================================================================================


@pytest.mark.parametrize("frames, size, chunks", [
    (4, 3, [(0, 3), (2, 4)]),  # the reference case's tiled tag
    (16, 16, [(0, 16)]),
    (17, 16, [(0, 16), (15, 17)]),
    (31, 16, [(0, 16), (15, 31)]),
    (32, 16, [(0, 16), (15, 31), (30, 32)]),
])
def test_temporal_chunks_share_one_frame(frames, size, chunks):
    assert _time_chunks(frames, size) == chunks


def test_causal_tiling_is_untiled_below_the_tile_size():
    model = causal_vae()
    z = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.tiled_decode(z, CausalVAETiling.for_version("v1.2")), model.decode(z))


def test_causal_tiling_bounds_the_decoded_tile():
    model, sizes = causal_vae(), []
    model.decoder.conv_in.register_forward_hook(lambda m, args, out: sizes.append(tuple(args[0].shape[2:])))
    tiling = CausalVAETiling.for_version("v1.2", tile_sample_min_size=32, tile_latent_min_size=4,
                                         tile_latent_min_size_t=3, tile_overlap_factor=0.25)
    with torch.no_grad():
        video = model.tiled_decode(torch.randn(1, 4, 4, 5, 4), tiling)  # 2 x 2 tiles, 2 chunks
    assert video.shape == (1, 3, 13, 40, 32)
    assert max(t for t, _, _ in sizes) <= 3 and max(max(h, w) for _, h, w in sizes) <= 4


def test_inconsistent_tile_attributes_are_refused():
    with pytest.raises(ValueError, match="kept part differs from their stride"):
        CausalVAETiling(tile_sample_min_size=16, tile_latent_min_size=2, tile_overlap_factor=0.25)


def test_tiling_kind_must_fit_the_family():
    with pytest.raises(ValueError, match="WFVAEChunking"):
        OpenSoraPlanVAE.wrap(wfvae()).decode(torch.randn(1, 8, 2, 2, 2), tiling=CausalVAETiling())
    with pytest.raises(ValueError, match="CausalVAETiling"):
        OpenSoraPlanVAE.wrap(causal_vae()).decode(torch.randn(1, 4, 2, 2, 2), tiling=WFVAEChunking())


# ==================================================================================================
# Diffusion-side wrapper and posterior noise
# ==================================================================================================


def test_wrapper_encode_injects_the_posterior_noise():
    """encode(x, noise=eps) = ((mean + std * eps) - shift) * scale, the official WFVAEModelWrapper.encode."""
    vae = OpenSoraPlanVAE.wrap(wfvae())
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    posterior = vae.vae.encode(x)
    eps = torch.randn(posterior.mean.shape)
    expected = (posterior.mean + posterior.std * eps) * 0.18215
    _close(vae.encode(x, noise=eps), expected)


def test_wrapper_scaling_round_trips():
    vae = OpenSoraPlanVAE(wfvae(), scale=[0.5] * 8, shift=[0.1 * i for i in range(8)])
    z = torch.randn(1, 8, 2, 2, 2)
    _close(vae.from_diffusion(vae.to_diffusion(z)), z)
    _close(vae.to_diffusion(z)[:, 3], (z[:, 3] - 0.3) * 0.5)


def test_causal_wrapper_uses_the_single_official_constant():
    vae = OpenSoraPlanVAE.wrap(causal_vae())
    z = torch.randn(1, 4, 1, 2, 2)
    assert torch.equal(vae.to_diffusion(z), z * 0.18215)


def test_wrapper_encode_mean_and_seeded_sampling():
    vae = OpenSoraPlanVAE.wrap(causal_vae())
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mean = vae.vae.encode(x).mean * 0.18215
    _close(vae.encode(x, sample=False), mean)
    first = vae.encode(x, generator=torch.Generator().manual_seed(3))
    again = vae.encode(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and not torch.allclose(first, mean)


def test_wrapper_image_path_is_a_one_frame_video():
    vae = OpenSoraPlanVAE.wrap(wfvae())
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    latent = vae.encode(image, sample=False)
    assert latent.shape == (2, 8, 1, 2, 3)
    _close(latent, vae.encode(image[:, :, None], sample=False))
    assert vae.decode(latent).shape == (2, 3, 1, 16, 24)


def test_wrapper_decode_layout_and_frames():
    vae = OpenSoraPlanVAE.wrap(wfvae())
    video = vae.decode(torch.randn(1, 8, 3, 2, 2), num_frames=9)
    assert video.shape == (1, 3, 9, 16, 16) and to_official_btchw(video).shape == (1, 9, 3, 16, 16)
    with pytest.raises(ValueError, match="num_frames=10 .* num_frames=9"):
        vae.decode(torch.randn(1, 8, 3, 2, 2), num_frames=10)


def test_posterior_noise_of_the_wrong_shape_is_refused():
    posterior = DiagonalGaussian.from_moments(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="noise has shape"):
        posterior.sample(torch.zeros(1, 4, 2, 2, 3))


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 5, 4, 16), "too small.*at least 8x8"),
    ((1, 4, 5, 16, 16), r"\[B, 3, T, H, W\]"),
    ((1, 3, 0, 16, 16), "T >= 1"),
])
def test_videos_the_vae_cannot_take_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        wfvae().encode(torch.zeros(shape))


def test_the_raw_model_floors_sizes_that_are_not_a_multiple_of_8_as_the_official():
    """FACTS: latent = floor(H / 8), floor(W / 8); the extra rows and columns are dropped."""
    posterior = wfvae().encode(torch.zeros(1, 3, 5, 20, 19))
    assert tuple(posterior.mean.shape[-2:]) == (2, 2)


def test_latent_with_wrong_channels_is_refused():
    with pytest.raises(ValueError, match=r"\[B, 4, t, h, w\]"):
        causal_vae().decode(torch.zeros(1, 8, 2, 2, 2))


# ==================================================================================================
# Layers, dtype, registry
# ==================================================================================================


def test_layers_come_from_the_operations_factory():
    made = []

    def counting(base):
        return type(base.__name__, (base,), {"__init__": lambda self, *a, **k: (made.append(base.__name__),
                                                                                   base.__init__(self, *a, **k))[1]})

    ops = SimpleNamespace(**{n: counting(getattr(nn, n)) for n in ("Conv2d", "Conv3d", "GroupNorm", "LayerNorm")})
    for model in (WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", operations=ops, **TINY_WFVAE),
                  CausalVAEModel.from_preset("CausalVAEModel_4x8x8-v1.1", operations=ops, **TINY_CAUSAL)):
        layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)]
        assert layers == [], f"{type(model).__name__}: {len(layers)} layers bypass the factory"
    assert {"Conv2d", "Conv3d", "GroupNorm", "LayerNorm"} <= set(made)


def test_device_and_dtype_are_honoured():
    model = WFVAEModel.from_preset("WFVAEModel_D8_4x8x8", dtype=torch.bfloat16, **TINY_WFVAE)
    assert {t.dtype for t in model.state_dict().values()} == {torch.bfloat16}
    with torch.no_grad():
        assert model.decode(torch.randn(1, 8, 2, 2, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["CausalVAEModel", "WFVAEModel"])
def test_registry_builds_the_official_class(name):
    config = {**TINY_WFVAE, "norm_type": "layernorm"} if name == "WFVAEModel" else {**TINY_CAUSAL, "hidden_size_mult": [1] * 4}
    assert type(build_model(name, config)).__name__ == name


def test_unknown_official_option_is_refused():
    with pytest.raises(ValueError, match="unknown config key.*'latent_channels'"):
        build_model("WFVAEModel", {"latent_channels": 8})
    with pytest.raises(ValueError, match="attention 'AttnBlock'"):
        build_model("CausalVAEModel", {**TINY_CAUSAL, "encoder_attention": "AttnBlock"})


def test_training_only_kwargs_are_accepted():
    model = CausalVAEModel.from_official_config({**TINY_CAUSAL, "lr": 1e-5, "loss_type": "x", "loss_params": {}})
    assert model.config.hidden_size == 32


# ==================================================================================================
# Detection and loading
# ==================================================================================================


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset, kind", [
    ("CausalVAEModel_4x8x8-v1.0", "osp_causalvae_v1_0"),
    ("CausalVAEModel_4x8x8-v1.1", "osp_causalvae_v1_1"),
    ("CausalVAEModel_D4_4x8x8", "osp_causalvae_v1_2"),
])
def test_layouts_are_detected_by_the_registry(preset, kind):
    """Each CausalVAE layout is its own kind, not the LDM SD-VAE whose marker key its files contain too."""
    assert detect(_state(causal_vae(preset)), role="vae").kind.name == kind


def test_both_wfvae_key_spellings_are_detected_and_load(tmp_path):
    state = _state(wfvae())
    main = {k.replace("wavelet_tranform", "wavelet_transform"): v for k, v in state.items()}
    assert detect(state).kind.name == "osp_wfvae" and detect(main).kind.name == "osp_wfvae_main"
    save_checkpoint(main, tmp_path / "main.safetensors", config=dataclasses.asdict(wfvae().config))
    loaded = load_vae(tmp_path / "main.safetensors")
    assert len(loaded.vae.replaced_constants) == 24  # every constant rebuilt, in the v1.3.1 spelling
    z = torch.randn(1, 8, 2, 2, 2)
    torch.testing.assert_close(loaded.decode(z), OpenSoraPlanVAE.wrap(wfvae()).decode(z), rtol=0, atol=0)


def test_load_round_trip_with_saved_config_and_dropped_loss_keys(tmp_path, caplog):
    model = causal_vae("CausalVAEModel_4x8x8-v1.0")
    state = {**_state(model), "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2)}
    config = {**TINY_CAUSAL, **{k: v for k, v in vars(model.config).items() if k not in TINY_CAUSAL}}
    save_checkpoint(state, tmp_path / "vae.safetensors", config=config)
    with caplog.at_level(logging.INFO, logger="opensora"):
        loaded = load_vae(tmp_path / "vae.safetensors")
    assert sorted(loaded.vae.ignored_training_keys) == ["loss.discriminator.main.0.weight", "loss.logvar"]
    assert "ignored 2 training-only" in caplog.text
    z = torch.randn(1, 4, 2, 2, 2)
    with torch.no_grad():
        assert torch.equal(loaded.vae.decode(z), model.decode(z))


def test_another_vae_than_the_model_needs_is_named():
    v1_3 = by_name("open-sora-plan-v1.3")
    with pytest.raises(ValueError, match="holds the Open-Sora-Plan v1.2 CausalVideoVAE.*Open-Sora-Plan v1.3 "
                                         "models need the WF-VAE"):
        load_vae(_state(causal_vae()), expect=v1_3.vae)


def test_a_transformer_given_as_vae_is_named():
    state = {"pos_embed.proj.weight": torch.zeros(1), "transformer_blocks.0.attn1.to_q.weight": torch.zeros(1),
             "adaln_single.linear.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="not a VAE file.*Open-Sora-Plan v1.3 text-to-video transformer"):
        load_vae(state)


def test_release_preset_is_used_without_config_and_a_size_mismatch_says_so():
    with pytest.raises(CheckpointError, match="WFVAEModel|shape"):
        load_vae(_state(wfvae()))  # a tiny model is not the release size and carries no config


def test_wrong_haar_constant_is_refused():
    state = _state(wfvae())
    state["decoder.inverse_wavelet_tranform_l2.g"] = state["decoder.inverse_wavelet_tranform_l2.g"] * 1.5
    with pytest.raises(ValueError, match="inverse_wavelet_tranform_l2.g is not the fixed Haar filter"):
        wfvae().load_state_dict(state)


def test_rounded_haar_constants_are_rebuilt():
    """A file that stored the constants in bfloat16 (0.353515625) still gets the official 0.3536."""
    state = {k: (v.to(torch.bfloat16) if "wavelet" in k else v) for k, v in _state(wfvae()).items()}
    model = wfvae(seed=1)
    model.load_state_dict(state)
    assert torch.equal(model.decoder.inverse_wavelet_tranform_l2.filters(), haar_filters_3d())
