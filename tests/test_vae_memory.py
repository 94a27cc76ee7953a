"""Without autograd the VAE ResNet blocks hold two input-sized tensors besides their input (the
activated norm and the conv output, the sum written into the latter), and give the values of the
autograd path; the decode memory estimate follows the live-tensor peak. The process peak next to the
official code: ``benchmarks/vs_official.py --what vae``; against the estimate: ``memory_calibration.py``.
"""

from __future__ import annotations

import pytest
import tiny
import torch
from live_memory import LiveTensors
from torch import nn

from opensora_core.vae.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, ResnetBlock2D
from opensora_core.vae.temporal import ResBlock, TemporalVAEConfig
from opensora_core.vae.tiling import TilingOptions

CHANNELS = 32


def _blocks():
    torch.manual_seed(0)
    spatial = ResnetBlock2D(CHANNELS, CHANNELS, 8, nn.SiLU, nn)
    temporal = ResBlock(CHANNELS, CHANNELS, TemporalVAEConfig(num_groups=8), nn)
    return {"spatial": (spatial, (2, CHANNELS, 24, 24)), "temporal": (temporal, (1, CHANNELS, 4, 12, 12))}


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_resnet_block_holds_two_input_sized_tensors(kind):
    block, shape = _blocks()[kind]
    x = torch.randn(shape)
    with torch.no_grad(), LiveTensors(ignore=[*block.parameters(), x]) as live:
        block(x)
    # the causal 3D convs read a padded copy of their input (as the official code does)
    extra = 0 if kind == "spatial" else torch.nn.functional.pad(x, block.conv1.padding).nbytes
    groupnorm_statistics = 4096  # mean / rstd per (sample, group): a few hundred bytes
    assert live.peak <= 2 * x.nbytes + extra + groupnorm_statistics


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_resnet_block_in_place_path_matches_autograd_path(kind):
    block, shape = _blocks()[kind]
    x = torch.randn(shape, requires_grad=True)
    with torch.no_grad():
        fast = block(x.detach())
    slow = block(x)  # autograd records: every op out of place
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-6)  # same ops on the same values


def test_decoder_peak_is_its_largest_block():
    """At most the last level's first ResNet block (input, activated norm, conv output at full resolution):
    no level input nor trunk output is kept alive beside it."""
    torch.manual_seed(0)
    config = AutoencoderKLConfig(block_out_channels=(8, 32, 32, 32), layers_per_block=2, norm_num_groups=4)
    vae = AutoencoderKL(config).eval()
    z = torch.randn(2, 4, 5, 6)
    with torch.no_grad(), LiveTensors(ignore=[*vae.parameters(), z]) as live:
        vae.decode(z)
    full_resolution = z.shape[0] * 64 * z.shape[2] * z.shape[3] * 4  # bytes of one channel at 8x the latent
    assert live.peak <= full_resolution * (2 * 32 + 8) + 4096  # + GroupNorm statistics


@pytest.mark.parametrize("tiling", [None, TilingOptions(), TilingOptions(tile_size=4, tile_overlap=1)],
                         ids=["untiled", "frame-at-a-time", "spatial-tiles"])
def test_v1_2_decode_estimate_is_within_15_percent_of_the_peak(tiling):
    torch.manual_seed(0)
    vae = tiny.vae_v1_2().eval()
    frames, latent = 17, (5, 6, 10)
    z = torch.randn(1, 4, *latent)
    with torch.no_grad(), LiveTensors(ignore=[*vae.parameters(), *vae.buffers(), z]) as live:
        vae.decode(z, frames, tiling=tiling)
    estimate = vae.decode_memory_bytes((1, 4, *latent), frames, tiling=tiling, backend_workspace=False)
    assert abs(estimate / live.peak - 1) <= 0.15


# ---------------------------------------------------------------------------
# Every family's VAE: the one estimate the decode node hands ComfyUI
# ---------------------------------------------------------------------------


def _osp_vaes():
    from test_osp_vae import causal_vae, wfvae

    from opensora_core.vae.causal_vae import CausalVAETiling
    from opensora_core.vae.osp import OpenSoraPlanVAE, WFVAEChunking

    tiles = CausalVAETiling.for_version("v1.2", tile_sample_min_size=32, tile_latent_min_size=4,
                                        tile_overlap_factor=0.25)
    return {"causal": (OpenSoraPlanVAE.wrap(causal_vae()).eval(), tiles),
            "wfvae": (OpenSoraPlanVAE.wrap(wfvae()).eval(), WFVAEChunking())}


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("kind", ["causal", "wfvae"])
@pytest.mark.parametrize("latent", [(3, 4, 6), (5, 8, 8)])
def test_open_sora_plan_decode_estimate_is_within_15_percent_of_the_peak(kind, tiled, latent):
    """The Open-Sora-Plan decoders' shape model (widest activation x DECODE_WIDTHS + the output videos) against
    the live tensors of the decode: whole, in tiles (CausalVAE) or in chunks with causal caches (WF-VAE)."""
    vae, tiling = _osp_vaes()[kind]
    tiling = tiling if tiled else None
    z = torch.randn(1, vae.latent_channels, *latent)
    with torch.no_grad(), LiveTensors(ignore=[*vae.parameters(), *vae.buffers(), z]) as live:
        vae.decode(z, tiling=tiling)
    estimate = vae.decode_memory_bytes(tuple(z.shape), tiling=tiling, backend_workspace=False)
    assert abs(estimate / live.peak - 1) <= 0.15


def test_every_vae_estimate_adds_the_backend_share():
    """With ``backend_workspace`` (the default, what a memory manager is given) each family's estimate holds more
    than its live tensors: the kernels' weight copies and retained state (models/workspace.py)."""
    from test_hunyuan_vae import tiny_vae

    vaes = [(tiny.vae_v1_2().eval(), (1, 4, 5, 6, 10)), (tiny_vae(), (1, 16, 3, 2, 2))]
    vaes += [(vae, (1, vae.latent_channels, 3, 4, 6)) for vae, _ in _osp_vaes().values()]
    for vae, shape in vaes:
        assert vae.decode_memory_bytes(shape) > vae.decode_memory_bytes(shape, backend_workspace=False) > 0
