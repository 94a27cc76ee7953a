"""Hunyuan causal 3D VAE (Open-Sora 2.0): architecture, causality, frame geometry, posterior, tiling."""

from __future__ import annotations

import json
import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from opensora_core.geometry import HUNYUAN_VAE, VAE_V1_2
from opensora_core.families import build_model
from opensora_core.checkpoints import save_checkpoint
from opensora_core.families import by_release
from opensora_core.loading import load_vae
from opensora_core.vae.hunyuan import (
    BOUNDED_TILING,
    PRESETS,
    CausalConv3d,
    HunyuanTiling,
    HunyuanVAE,
    HunyuanVAEConfig,
    estimate_decode_memory,
    frame_causal_attention,
)
from opensora_core.vae.posterior import RecordedNoise

UNTILED = HunyuanTiling(spatial=False, temporal=False)
SCALE = 0.476986  # FACTS 3.1: the released scale_factor (shift 0)


def tiny_config(**overrides) -> HunyuanVAEConfig:
    """All released settings but 32-wide levels; 8 GroupNorm groups keep 4 channels in every group."""
    return HunyuanVAEConfig(**{"block_out_channels": (32, 32, 32, 32), "norm_num_groups": 8, **overrides})


def tiny_vae(dtype=torch.float32, operations=nn, **overrides) -> HunyuanVAE:
    torch.manual_seed(0)
    return HunyuanVAE(tiny_config(**overrides), operations=operations, dtype=dtype).eval()


def video(frames: int, h: int = 16, w: int = 16, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def latent(frames: int, h: int = 2, w: int = 2, dtype=torch.float32, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 16, frames, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------
# Architecture and loading
# ---------------------------------------------------------------------------


def test_released_architecture_matches_the_manifest_key_for_key(reference):
    manifest = json.loads((reference / "v2_0/manifest_hunyuan_vae_v2_0.json").read_text())
    with torch.device("meta"):
        vae = build_model(manifest["class"], manifest["config"])
    state = vae.state_dict()
    assert list(state) == manifest["key_order"]
    assert {k: list(v.shape) for k, v in state.items()} == manifest["params"]


def test_preset_is_the_released_config(reference):
    manifest = json.loads((reference / "v2_0/manifest_hunyuan_vae_v2_0.json").read_text())
    assert HunyuanVAEConfig.from_official(manifest["config"]) == PRESETS["hunyuan-vae"]


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="'block_channels'"):
        build_model("AutoencoderKLCausal3D", {"block_channels": [32]})


def test_levels_must_give_the_compression_ratios():
    with pytest.raises(ValueError, match="2 levels cannot give time_compression_ratio=4"):
        HunyuanVAEConfig(block_out_channels=(32, 32))


def test_layers_come_from_the_injected_operations():
    made = []

    class CountingConv3d(nn.Conv3d):
        def __init__(self, *args, **kwargs):
            made.append(args[:2])
            super().__init__(*args, **kwargs)

    ops = SimpleNamespace(Conv3d=CountingConv3d, GroupNorm=nn.GroupNorm, Linear=nn.Linear)
    vae = tiny_vae(operations=ops)
    assert len(made) == sum(isinstance(m, nn.Conv3d) for m in vae.modules()) > 40


def test_load_vae_detects_a_hunyuan_file_and_loads_it_strictly_in_the_wanted_dtype(tmp_path):
    """The registry recognises the file (its keys also carry the SD-VAE's norm names) and reads the widths from
    the shapes; the group count comes from the file's saved config."""
    state = tiny_vae().state_dict()
    save_checkpoint(state, tmp_path / "vae.safetensors", config={"norm_num_groups": 8})
    vae = load_vae(tmp_path / "vae.safetensors", expect=by_release("v2.0").vae, dtype=torch.bfloat16)
    assert isinstance(vae, HunyuanVAE) and vae.geometry == HUNYUAN_VAE
    assert vae.config == tiny_config(use_spatial_tiling=True)  # the released tiling: no tensor shows it
    assert not vae.training and {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    key = "decoder.conv_out.conv.weight"
    assert torch.equal(vae.state_dict()[key], state[key].to(torch.bfloat16))  # a cast copy, no arithmetic
    del state["quant_conv.bias"]
    with pytest.raises(ValueError, match="quant_conv.bias"):
        load_vae(state, norm_num_groups=8)


def test_dtype_argument_builds_and_runs_in_bfloat16():
    vae = tiny_vae(dtype=torch.bfloat16)
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
    z = vae.encode(video(5), sample=False)  # float32 input is moved to the model's dtype
    assert z.dtype == torch.bfloat16 and vae.decode(z).shape == (1, 3, 5, 16, 16)


# ---------------------------------------------------------------------------
# Causal layers
# ---------------------------------------------------------------------------


def test_causal_conv_pads_by_replicating_edges_and_the_first_frame():
    """A box filter (all-ones 3x3x3 kernel) over a constant video gives 27 x the constant everywhere,
    including the first frame and the borders, only if the padding repeats the edge values."""
    conv = CausalConv3d(1, 1, 3, ops=nn)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
    out = conv(torch.full((1, 1, 4, 5, 6), 0.5))
    assert out.shape == (1, 1, 4, 5, 6)
    assert torch.allclose(out, torch.full_like(out, 27 * 0.5))


def test_frame_causal_attention_equals_the_official_masked_attention():
    """The official mask: token i (frame i // hw) may see tokens [0, (frame + 1) * hw)."""
    frames, hw, dim = 3, 4, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, frames * hw, dim, generator=g) for _ in range(3))
    mask = torch.full((frames * hw, frames * hw), float("-inf"))
    for i in range(frames * hw):
        mask[i, : (i // hw + 1) * hw] = 0
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(frame_causal_attention(q, k, v, hw), expected, atol=1e-6)


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics of each frame alone: makes the whole network causal in time."""

    def forward(self, x):
        if x.ndim != 5:
            return super().forward(x)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.reshape(b, t, c, h, w).transpose(1, 2)


CAUSAL_OPS = SimpleNamespace(Conv3d=nn.Conv3d, GroupNorm=PerFrameGroupNorm, Linear=nn.Linear)


def test_first_latent_frame_is_encoded_from_the_first_pixel_frame_only():
    """Causal padding, strided convs and the frame-causal attention: latent frame 0 of a 9-frame clip
    is the latent of frame 0 alone, latent frames 0..1 that of frames 0..4. (The released GroupNorm
    spans all frames, so there the statistics still mix frames in; see the module docstring.)"""
    vae = tiny_vae(operations=CAUSAL_OPS)
    x = video(9)
    full = vae.encode_moments(x)  # (1, 32, 3, 2, 2)
    assert torch.allclose(vae.encode_moments(x[:, :, :1]), full[:, :, :1], atol=1e-5)
    assert torch.allclose(vae.encode_moments(x[:, :, :5]), full[:, :, :2], atol=1e-5)


def test_first_pixel_frame_is_decoded_from_the_first_latent_frame_only():
    vae = tiny_vae(operations=CAUSAL_OPS)
    z = latent(3)
    full = vae.decode(z)  # (1, 3, 9, 16, 16)
    assert torch.allclose(vae.decode(z[:, :, :1]), full[:, :, :1], atol=1e-5)
    assert torch.allclose(vae.decode(z[:, :, :2]), full[:, :, :5], atol=1e-5)


# ---------------------------------------------------------------------------
# Frame and size geometry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "latent_frames"), [(1, 1), (5, 2), (9, 3), (17, 5), (129, 33)])
def test_geometry_4k_plus_1_frames_to_k_plus_1_latent_frames(frames, latent_frames):
    assert HUNYUAN_VAE.latent_size(frames, 192, 336) == (latent_frames, 24, 42)
    assert HUNYUAN_VAE.decoded_frames(latent_frames) == frames
    assert (HUNYUAN_VAE.latent_channels, HUNYUAN_VAE.time_factor, HUNYUAN_VAE.spatial_factor) == (16, 4, 8)


def test_geometry_maps_frame_0_alone_then_groups_of_4():
    assert [HUNYUAN_VAE.pixel_to_latent_frame(f, 9) for f in range(9)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert HUNYUAN_VAE.latent_to_pixel_frames(1, 9) == range(1, 5)


def test_geometry_of_vae_v1_2_is_unchanged():
    assert [VAE_V1_2.latent_frames(n) for n in (1, 16, 17, 20, 51)] == [1, 4, 5, 6, 15]
    assert VAE_V1_2.latent_hw(20, 20) == (2, 2) and HUNYUAN_VAE.latent_hw(20, 20) == (3, 3)


def test_frame_count_round_trip_through_the_model():
    vae = tiny_vae()
    z = vae.encode(video(9, 8, 8), sample=False)
    assert z.shape == (1, 16, 3, 1, 1) and vae.get_latent_size([9, 8, 8]) == [3, 1, 1]
    assert vae.decode(z, 9).shape == (1, 3, 9, 8, 8)


def test_encode_rejects_a_frame_count_that_would_lose_frames_naming_the_nearest():
    with pytest.raises(ValueError, match=r"num_frames=8 .*1 \+ 4k frames.*use 5 or 9 frames"):
        tiny_vae().encode(video(8, 8, 8))


def test_decode_rejects_a_frame_count_the_latent_cannot_give():
    with pytest.raises(ValueError, match=r"num_frames=12 cannot be decoded from 3 latent frames.*num_frames=9"):
        tiny_vae().decode(latent(3), 12)


def test_encode_rejects_sizes_not_divisible_by_8_naming_both_neighbours():
    with pytest.raises(ValueError, match=r"20x16 .*multiple of 8.*16x16.*24x16"):
        tiny_vae().encode(video(1, 20, 16))


# ---------------------------------------------------------------------------
# Posterior and the diffusion latent
# ---------------------------------------------------------------------------


def test_encode_is_the_scaled_posterior_sample():
    """z = 0.476986 * (mean + exp(logvar / 2) * eps), eps the injected draw; decode divides it back."""
    vae, x = tiny_vae(), video(5)
    eps = latent(2, seed=7)
    z, posterior = vae.encode(x, noise=RecordedNoise({"video": eps}), return_posterior=True)
    mean, logvar = posterior.mean, posterior.logvar
    assert torch.allclose(z, SCALE * (mean + torch.exp(0.5 * logvar) * eps), atol=1e-6)
    assert torch.allclose(vae.encode(x, sample=False), SCALE * mean, atol=1e-6)
    assert torch.allclose(vae.decode(z), vae._decode_tile(z / SCALE), atol=1e-6)


def test_encode_draws_from_the_generator_not_the_global_rng():
    vae, x = tiny_vae(), video(5)
    a = vae.encode(x, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    b = vae.encode(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, vae.encode(x, generator=torch.Generator().manual_seed(4)))


# ---------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------
# Each tile has its own GroupNorm statistics and image borders, so tiled results differ from untiled
# ones by amounts that depend on the weights (random weights: by O(1)). On inputs the tiles cannot tell
# apart - constant along the tiled axes - every tile sees the same statistics and values, so tiling must
# give the untiled result up to summation order. In float64 that is ~1e-14; 1e-9 leaves room for the
# normalisations amplifying it.

TIGHT = {"atol": 1e-9, "rtol": 0.0}


def test_spatial_tiling_is_transparent_on_frames_constant_in_space():
    vae = tiny_vae(dtype=torch.float64)
    tiles = HunyuanTiling(sample_size=32)  # 40x40 pixels, 5x5 latent: 2 x 2 tiles
    x = video(5, 1, 1, torch.float64).expand(1, 3, 5, 40, 40)
    assert torch.allclose(vae.encode_moments(x, tiling=tiles), vae.encode_moments(x, tiling=UNTILED), **TIGHT)
    z = latent(2, 1, 1, torch.float64).expand(1, 16, 2, 5, 5)
    assert torch.allclose(vae.decode(z, tiling=tiles), vae.decode(z, tiling=UNTILED), **TIGHT)


def test_temporal_tiling_is_transparent_on_clips_constant_in_time():
    vae = tiny_vae(dtype=torch.float64)
    tiles = HunyuanTiling(spatial=False, temporal=True, sample_tsize=16)  # 16-frame / 4-latent tiles
    x = video(1, 8, 8, torch.float64).expand(1, 3, 21, 8, 8)
    assert torch.allclose(vae.encode_moments(x, tiling=tiles), vae.encode_moments(x, tiling=UNTILED), **TIGHT)
    z = latent(1, 2, 2, torch.float64).expand(1, 16, 7, 2, 2)
    assert torch.allclose(vae.decode(z, tiling=tiles), vae.decode(z, tiling=UNTILED), **TIGHT)


def test_tiling_changes_a_general_input():
    """The converse of the transparency tests: tiles really are computed separately."""
    vae = tiny_vae()
    z = latent(1, 5, 5)
    assert not torch.allclose(vae.decode(z, tiling=HunyuanTiling(sample_size=32)), vae.decode(z, tiling=UNTILED),
                              atol=1e-3)


@pytest.mark.parametrize("latent_frames", [5, 6, 7, 8, 13])
def test_temporal_tiles_give_every_frame(latent_frames):
    vae = tiny_vae()
    tiles = HunyuanTiling(spatial=False, temporal=True, sample_tsize=16)
    assert vae.decode(latent(latent_frames, 1, 1), tiling=tiles).shape[2] == 4 * (latent_frames - 1) + 1
    frames = 4 * (latent_frames - 1) + 1
    assert vae.encode_moments(video(frames, 8, 8), tiling=tiles).shape[2] == latent_frames


def test_release_tiles_spatially_above_256_pixels_only():
    assert PRESETS["hunyuan-vae"].tiling == HunyuanTiling(spatial=True, temporal=False, sample_size=256)
    assert BOUNDED_TILING.temporal and BOUNDED_TILING.spatial


def test_inconsistent_tile_sizes_are_refused():
    with pytest.raises(ValueError, match="would not line up"):
        tiny_vae().decode(latent(5, 1, 1), tiling=HunyuanTiling(temporal=True, sample_tsize=8))


# ---------------------------------------------------------------------------
# Memory estimate
# ---------------------------------------------------------------------------


class LiveTensors(TorchDispatchMode):
    """Bytes of tensor storage that operator outputs keep alive, and their peak (views share a storage)."""

    def __init__(self):
        super().__init__()
        self.refs, self.sizes, self.live, self.peak = {}, {}, 0, 0

    def _release(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key not in self.refs:
                    self.refs[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                    self.live += self.sizes[key]
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.live)
        return out


@pytest.mark.parametrize(("shape", "tiling"), [
    ((3, 2, 2), UNTILED),
    ((3, 6, 8), HunyuanTiling(sample_size=32)),
    ((7, 2, 2), HunyuanTiling(spatial=False, temporal=True, sample_tsize=16)),
])
def test_decode_memory_estimate_bounds_the_live_tensors(shape, tiling):
    """Without the backend's conv workspace the estimate counts the tensors the decode keeps alive:
    exactly for the untiled decoder, an upper bound within 25 % with the tiles kept for blending."""
    vae = tiny_vae()
    with LiveTensors() as live:
        vae.decode(latent(*shape), tiling=tiling)
    estimate = estimate_decode_memory(vae.config, (1, 16, *shape), tiling=tiling, backend_workspace=False)
    assert live.peak * 0.99 <= estimate <= live.peak * 1.25
