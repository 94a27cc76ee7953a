"""Without autograd the VAE ResNet blocks hold two input-sized tensors besides their input (the
activated norm and the conv output, the sum written into the latter), and give the values of the
autograd path. The process peak next to the official code: ``benchmarks/vs_official.py --what vae``.
"""

from __future__ import annotations

import pytest
import torch
from live_memory import LiveTensors
from torch import nn

from opensora_core.vae.autoencoder_kl import ResnetBlock2D
from opensora_core.vae.temporal import ResBlock, TemporalVAEConfig

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
