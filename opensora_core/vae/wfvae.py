"""WF-VAE of Open-Sora-Plan v1.3 (``WFVAEModel``; released as ``WFVAEModel_D8_4x8x8``, 8 channels).

A wavelet-driven causal video VAE (FACTS.md section 5 of the Open-Sora-Plan reference): the video is
first split by a causal 3D Haar transform (24 coefficient channels at T/2, H/2, W/2); the encoder's main
path is fed "energy flow" side branches from a 2D Haar of the low band (l1) and a 3D Haar of that (l2);
the decoder mirrors it and ends in the inverse 3D Haar (T latent frames -> 4T - 3 frames). Follows
opensora/models/causalvideovae/model/vae/modeling_wfvae.py and modules/wavelet.py at tag v1.3.1; the
parameter names are the released ones, including the official misspelling ``wavelet_tranform``.

Constants: every Haar filter is +-0.3536 (3D) or +-0.5 (2D), the official values (0.3536 is *not*
1/(2 sqrt 2): 8 * 0.3536^2 = 1.000264, and the outputs depend on it). Those in the state dict
(``encoder.wavelet_tranform_l{1,2}.*``, ``decoder.inverse_wavelet_tranform_l{1,2}.*``) are rebuilt on
load rather than trusted; the later ``main`` spelling ``wavelet_transform`` and its extra
``encoder.wavelet_transform_in`` / ``decoder.inverse_wavelet_transform_out`` constants are accepted too.
The input/output transforms are not modules in v1.3.1 (built on every call), so they are not here either.

Bounded memory: :meth:`WFVAEModel.chunked_decode` / :meth:`chunked_encode` stream the clip through the
network in temporal chunks with causal caches (:class:`~.osp_blocks.CausalStream`). Unlike the official
``enable_tiling()`` they equal the untiled path for every length (the official tiled decode crashes for
2 latent frames and is wrong when its last chunk holds one latent frame: tables/wfvae_tiled_decode.json).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import OSP_WF_VAE, LatentGeometry
from ..official_config import OfficialConstructors
from .osp_blocks import (
    AttnBlock3DFix,
    CausalConv3d,
    CausalStream,
    Downsample,
    LayerStack,
    ResnetBlock2D,
    ResnetBlock3D,
    Spatial2xTime2x3DDownsample,
    Spatial2xTime2x3DUpsample,
    T_INTERPOLATIONS,
    TemporalLayer,
    Upsample,
    causal_input,
    check_choice,
    check_latent,
    check_video,
    make_norm,
    per_frame,
)
from .posterior import DiagonalGaussian

log = logging.getLogger("opensora")

DEFAULT_SCALE = (0.18215,) * 8
DEFAULT_SHIFT = (0.0,) * 8


# ==================================================================================================
# Config and presets
# ==================================================================================================


@dataclass(frozen=True)
class WFVAEConfig:
    """Constructor kwargs of the official ``WFVAEModel`` (names, misspellings and class defaults @v1.3.1).

    ``scale``/``shift`` are the diffusion-side latent constants ((z - shift) * scale); the module choices
    (``l1_*``/``l2_*``) exist for the ablations of the paper and only the defaults are supported.
    """

    latent_dim: int = 8
    base_channels: int = 128
    encoder_num_resblocks: int = 2
    encoder_energy_flow_hidden_size: int = 64
    decoder_num_resblocks: int = 2
    decoder_energy_flow_hidden_size: int = 128
    use_attention: bool = True
    dropout: float = 0.0
    norm_type: str = "groupnorm"
    t_interpolation: str = "nearest"
    connect_res_layer_num: int = 1
    scale: tuple[float, ...] = DEFAULT_SCALE
    shift: tuple[float, ...] = DEFAULT_SHIFT
    l1_dowmsample_block: str = "Downsample"
    l1_downsample_wavelet: str = "HaarWaveletTransform2D"
    l2_dowmsample_block: str = "Spatial2xTime2x3DDownsample"
    l2_downsample_wavelet: str = "HaarWaveletTransform3D"
    l1_upsample_block: str = "Upsample"
    l1_upsample_wavelet: str = "InverseHaarWaveletTransform2D"
    l2_upsample_block: str = "Spatial2xTime2x3DUpsample"
    l2_upsample_wavelet: str = "InverseHaarWaveletTransform3D"

    def __post_init__(self):
        for name, value in _FIXED_MODULES.items():
            check_choice(getattr(self, name), (value,), f"WFVAEModel {name}")
        check_choice(self.t_interpolation, T_INTERPOLATIONS, "WFVAEModel t_interpolation")
        if len(self.scale) != self.latent_dim or len(self.shift) != self.latent_dim:
            raise ValueError(f"WFVAEModel: scale and shift need latent_dim={self.latent_dim} entries, "
                             f"got {len(self.scale)} and {len(self.shift)}")
        if self.decoder_energy_flow_hidden_size != self.base_channels:
            # v1.3.1 builds the decoder's connection blocks with base_channels but feeds them the
            # energy-flow channels, so any other value fails in the official code too
            raise ValueError(f"WFVAEModel: decoder_energy_flow_hidden_size ({self.decoder_energy_flow_hidden_size}) "
                             f"must equal base_channels ({self.base_channels}) in the v1.3.1 architecture")


_FIXED_MODULES = {
    "l1_dowmsample_block": "Downsample", "l1_downsample_wavelet": "HaarWaveletTransform2D",
    "l2_dowmsample_block": "Spatial2xTime2x3DDownsample", "l2_downsample_wavelet": "HaarWaveletTransform3D",
    "l1_upsample_block": "Upsample", "l1_upsample_wavelet": "InverseHaarWaveletTransform2D",
    "l2_upsample_block": "Spatial2xTime2x3DUpsample", "l2_upsample_wavelet": "InverseHaarWaveletTransform3D",
}

# the released v1.3 VAE (MindSpeed-MM inference_t2v_model1_3.json and mindone wfvae_8dim.json agree)
WFVAE_PRESETS: dict[str, WFVAEConfig] = {
    "WFVAEModel_D8_4x8x8": WFVAEConfig(
        latent_dim=8, base_channels=128, encoder_num_resblocks=2, encoder_energy_flow_hidden_size=64,
        decoder_num_resblocks=2, decoder_energy_flow_hidden_size=128, use_attention=True, dropout=0.0,
        norm_type="layernorm", t_interpolation="trilinear", connect_res_layer_num=2,
    ),
}


# ==================================================================================================
# Haar wavelets (modules/wavelet.py)
# ==================================================================================================

HAAR_3D_VALUE = 0.3536  # the official constant (not 1/(2 sqrt 2))
HAAR_2D_VALUE = 0.5
# filter names in the official channel order, with the axes along which each filter changes sign
HAAR_3D_FILTERS = {"h": "", "g": "x", "hh": "y", "gh": "yx", "h_v": "t", "g_v": "tx", "hh_v": "ty", "gh_v": "tyx"}
HAAR_2D_FILTERS = {"aa": "", "ad": "y", "da": "x", "dd": "yx"}


def haar_filter(sign_axes: str, axes: str) -> Tensor:
    """+-1 pattern over the 2x..x2 block ``axes`` (e.g. "tyx"): -1 where an odd number of the
    ``sign_axes`` sit at offset 1 (index 0 -> +, index 1 -> -)."""
    grids = torch.meshgrid(*[torch.arange(2)] * len(axes), indexing="ij")
    odd = sum(grid for axis, grid in zip(axes, grids) if axis in sign_axes) % 2 if sign_axes else grids[0] * 0
    return (1 - 2 * odd).to(torch.int64)


def haar_filters_3d(device=None, dtype=None) -> Tensor:
    """The eight 3D Haar filters (8, 2, 2, 2) [t][y][x], official order and float32 values."""
    signs = torch.stack([haar_filter(s, "tyx") for s in HAAR_3D_FILTERS.values()])
    return (signs * HAAR_3D_VALUE).to(device=device, dtype=dtype or torch.float32)


def haar_filters_2d(device=None, dtype=None) -> Tensor:
    """The four 2D Haar filters (4, 2, 2) [y][x]."""
    signs = torch.stack([haar_filter(s, "yx") for s in HAAR_2D_FILTERS.values()])
    return (signs / 2).to(device=device, dtype=dtype or torch.float32)


def haar_analysis_3d(x: Tensor, filters: Tensor) -> Tensor:
    """(B, C, T', H, W) with the causal front frame already in place -> (B, 8C, n, H/2, W/2).

    A stride-2 2x2x2 correlation per colour channel with each filter; n = (T' - 2) // 2 + 1 (an
    unpaired last frame is dropped, as the strided conv drops it). Channel = C * filter + colour.
    """
    b, c, t, h, w = x.shape
    n = (t - 2) // 2 + 1
    blocks = x[:, :, :2 * n, :h // 2 * 2, :w // 2 * 2].reshape(b, c, n, 2, h // 2, 2, w // 2, 2)
    out = torch.einsum("bcntiyjx,gtyx->bgcnij", blocks, filters.to(x.dtype))  # (B, 8, C, n, H/2, W/2)
    return out.reshape(b, 8 * c, n, h // 2, w // 2)


def haar_synthesis_3d(coeffs: Tensor, filters: Tensor) -> Tensor:
    """(B, 8C, n, H, W) -> (B, C, 2n, 2H, 2W): the stride-2 transposed conv of every group, summed."""
    b, c8, n, h, w = coeffs.shape
    groups = coeffs.reshape(b, 8, c8 // 8, n, h, w)
    out = torch.einsum("bgcnij,gtyx->bcntiyjx", groups, filters.to(coeffs.dtype))  # (B, C, n, 2, H, 2, W, 2)
    return out.reshape(b, c8 // 8, 2 * n, 2 * h, 2 * w)


def haar_analysis_2d(x: Tensor, filters: Tensor) -> Tensor:
    """Per frame: (N, C, H, W) -> (N, 4C, H/2, W/2), channel = C * filter + colour."""
    n, c, h, w = x.shape
    blocks = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    out = torch.einsum("nciyjx,gyx->ngcij", blocks, filters.to(x.dtype))
    return out.reshape(n, 4 * c, h // 2, w // 2)


def haar_synthesis_2d(coeffs: Tensor, filters: Tensor) -> Tensor:
    """Per frame: (N, 4C, H, W) -> (N, C, 2H, 2W)."""
    n, c4, h, w = coeffs.shape
    out = torch.einsum("ngcij,gyx->nciyjx", coeffs.reshape(n, 4, c4 // 4, h, w), filters.to(coeffs.dtype))
    return out.reshape(n, c4 // 4, 2 * h, 2 * w)


def haar_transform_3d(x: Tensor, filters: Tensor, layer: nn.Module, stream: CausalStream | None) -> Tensor:
    """The causal 3D Haar of a clip (or a stream chunk): first frame repeated once in front, stride 2."""
    x = causal_input(x, layer, 2, 2, stream)  # (B, C, 1 + T, H, W) or carried frame + chunk
    if x.shape[2] < 2:
        return x.new_empty(x.shape[0], 8 * x.shape[1], 0, x.shape[3] // 2, x.shape[4] // 2)
    return haar_analysis_3d(x, filters)


def inverse_haar_3d(coeffs: Tensor, filters: Tensor, layer: nn.Module, stream: CausalStream | None) -> Tensor:
    """The inverse 3D Haar: 2n frames per n, minus the clip's very first frame (T -> 2T - 1)."""
    out = haar_synthesis_3d(coeffs, filters)
    first_chunk = stream is None or stream.first_chunk(layer)
    return out[:, :, 1:] if first_chunk else out


class _ConstantFilter(nn.Module):
    """One fixed filter stored as ``conv.weight`` (the official CausalConv3d layout; never trained)."""

    def __init__(self, values: Tensor):
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(values, requires_grad=False)


class HaarWaveletTransform3D(TemporalLayer):
    """Causal 3D Haar (24 channels from 3); filters as parameters ``{h,g,...}_conv.conv.weight`` (1,1,2,2,2)."""

    def __init__(self, *, device=None, dtype=None):
        super().__init__()
        for name, values in zip(HAAR_3D_FILTERS, haar_filters_3d(device, dtype)):
            setattr(self, f"{name}_conv", _ConstantFilter(values.reshape(1, 1, 2, 2, 2)))

    def filters(self) -> Tensor:
        return torch.cat([getattr(self, f"{name}_conv").conv.weight for name in HAAR_3D_FILTERS]).reshape(8, 2, 2, 2)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return haar_transform_3d(x, self.filters(), self, stream)  # (B, 8C, ceil(T/2), H/2, W/2)


class InverseHaarWaveletTransform3D(TemporalLayer):
    """Inverse 3D Haar; filters as buffers ``h, g, hh, gh, h_v, g_v, hh_v, gh_v`` (1, 1, 2, 2, 2)."""

    def __init__(self, *, device=None, dtype=None):
        super().__init__()
        for name, values in zip(HAAR_3D_FILTERS, haar_filters_3d(device, dtype)):
            self.register_buffer(name, values.reshape(1, 1, 2, 2, 2))

    def filters(self) -> Tensor:
        return torch.cat([getattr(self, name) for name in HAAR_3D_FILTERS]).reshape(8, 2, 2, 2)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return inverse_haar_3d(x, self.filters(), self, stream)  # (B, C/8, 2T - 1, 2H, 2W)


class HaarWaveletTransform2D(TemporalLayer):
    """Per-frame 2D Haar (12 channels from 3); filters as buffers ``aa, ad, da, dd`` (1, 1, 2, 2)."""

    def __init__(self, *, device=None, dtype=None):
        super().__init__()
        for name, values in zip(HAAR_2D_FILTERS, haar_filters_2d(device, dtype)):
            self.register_buffer(name, values.reshape(1, 1, 2, 2))

    def filters(self) -> Tensor:
        return torch.cat([getattr(self, name) for name in HAAR_2D_FILTERS]).reshape(4, 2, 2)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return per_frame(lambda f: haar_analysis_2d(f, self.filters()), x)  # (B, 4C, T, H/2, W/2)


class InverseHaarWaveletTransform2D(HaarWaveletTransform2D):
    """Per-frame inverse 2D Haar (same buffers)."""

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return per_frame(lambda f: haar_synthesis_2d(f, self.filters()), x)  # (B, C/4, T, 2H, 2W)


# ==================================================================================================
# Encoder and decoder
# ==================================================================================================


def _res3d(cin: int, cout: int, cfg: WFVAEConfig, factory: dict) -> ResnetBlock3D:
    return ResnetBlock3D(cin, cout, dropout=cfg.dropout, norm_type=cfg.norm_type, **factory)


def _join(main: Tensor, branch: Tensor, stream: CausalStream | None, key: str) -> Tensor:
    """Concatenate a side branch on channels, frame-aligned (in a stream the branch may run ahead)."""
    if stream is not None:
        branch = stream.align(key, branch, main.shape[2])
    return torch.cat([main, branch], dim=1)


class Encoder(nn.Module):
    """24 Haar coefficients (B, 24, T', H', W') -> moments (B, 2 latent_dim, ceil(T'/2), H'/4, W'/4)."""

    def __init__(self, cfg: WFVAEConfig, factory: dict):
        super().__init__()
        b, e, ops = cfg.base_channels, cfg.encoder_energy_flow_hidden_size, factory["operations"]
        conv2d = {"device": factory["device"], "dtype": factory["dtype"]}
        res2d = lambda: ResnetBlock2D(b, b, dropout=cfg.dropout, norm_type=cfg.norm_type, **factory)  # noqa: E731
        self.down1 = LayerStack(ops.Conv2d(24, b, 3, padding=1, **conv2d),
                                *[res2d() for _ in range(cfg.encoder_num_resblocks)], Downsample(b, b, **factory))
        self.down2 = LayerStack(ops.Conv2d(b + e, 2 * b, 3, padding=1, **conv2d),
                                *[_res3d(2 * b, 2 * b, cfg, factory) for _ in range(cfg.encoder_num_resblocks)],
                                Spatial2xTime2x3DDownsample(2 * b, 2 * b, **factory))
        self.connect_l1 = ops.Conv2d(12, e, 3, padding=1, **conv2d)
        self.connect_l2 = ops.Conv2d(24, e, 3, padding=1, **conv2d)
        mid = [_res3d(2 * b + e, 4 * b, cfg, factory), _res3d(4 * b, 4 * b, cfg, factory)]
        if cfg.use_attention:
            mid.insert(1, AttnBlock3DFix(4 * b, norm_type=cfg.norm_type, **factory))
        self.mid = LayerStack(*mid)
        self.norm_out = make_norm(4 * b, cfg.norm_type, **factory)
        self.conv_out = CausalConv3d(4 * b, 2 * cfg.latent_dim, 3, padding=1, **factory)
        self.wavelet_tranform_l1 = HaarWaveletTransform2D(device=factory["device"], dtype=factory["dtype"])
        self.wavelet_tranform_l2 = HaarWaveletTransform3D(device=factory["device"], dtype=factory["dtype"])

    def forward(self, coeffs: Tensor, stream: CausalStream | None = None) -> Tensor:
        l1_coeffs = self.wavelet_tranform_l1(coeffs[:, :3])  # (B, 12, T', H'/2, W'/2): 2D Haar of the LLL band
        l1 = per_frame(self.connect_l1, l1_coeffs)  # (B, e, T', H'/2, W'/2)
        l2 = per_frame(self.connect_l2, self.wavelet_tranform_l2(l1_coeffs[:, :3], stream))  # (B, e, t, H'/4, W'/4)
        h = torch.cat([self.down1(coeffs, stream), l1], dim=1)  # (B, b + e, T', H'/2, W'/2)
        h = _join(self.down2(h, stream), l2, stream, "encoder.l2")  # (B, 2b + e, t, H'/4, W'/4)
        if h.shape[2] == 0:  # a stream chunk that completes no latent frame
            return h.new_empty(h.shape[0], self.conv_out.conv.out_channels, 0, *h.shape[3:])
        h = self.mid(h, stream)  # (B, 4b, t, ...)
        return self.conv_out(F.silu(self.norm_out(h)), stream)  # (B, 2 latent_dim, t, H'/4, W'/4)


class Decoder(nn.Module):
    """Latent (B, latent_dim, t, h, w) -> 24 Haar coefficients (B, 24, 2t - 1, 4h, 4w)."""

    def __init__(self, cfg: WFVAEConfig, factory: dict):
        super().__init__()
        b, d, ops = cfg.base_channels, cfg.decoder_energy_flow_hidden_size, factory["operations"]
        conv2d = {"device": factory["device"], "dtype": factory["dtype"]}
        res = lambda cin, cout: _res3d(cin, cout, cfg, factory)  # noqa: E731
        self.energy_flow_hidden_size = d
        self.conv_in = CausalConv3d(cfg.latent_dim, 4 * b, 3, padding=1, **factory)
        mid = [res(4 * b, 4 * b), res(4 * b, 4 * b + d)]
        if cfg.use_attention:
            mid.insert(1, AttnBlock3DFix(4 * b, norm_type=cfg.norm_type, **factory))
        self.mid = LayerStack(*mid)
        self.up2 = LayerStack(*[res(4 * b, 4 * b) for _ in range(cfg.decoder_num_resblocks)],
                              Spatial2xTime2x3DUpsample(4 * b, 4 * b, t_interpolation=cfg.t_interpolation, **factory),
                              res(4 * b, 4 * b + d))
        self.up1 = LayerStack(*[res(4 * b if i == 0 else 2 * b, 2 * b) for i in range(cfg.decoder_num_resblocks)],
                              Upsample(2 * b, 2 * b, **factory), res(2 * b, 2 * b))
        self.layer = LayerStack(res(2 * b, b), res(b, b))
        # v1.3.1 sizes the connection blocks with base_channels (== d, checked by the config)
        self.connect_l1 = LayerStack(*[res(b, b) for _ in range(cfg.connect_res_layer_num)],
                                     ops.Conv2d(b, 12, 3, padding=1, **conv2d))
        self.connect_l2 = LayerStack(*[res(b, b) for _ in range(cfg.connect_res_layer_num)],
                                     ops.Conv2d(b, 24, 3, padding=1, **conv2d))
        self.norm_out = make_norm(b, cfg.norm_type, **factory)
        self.conv_out = ops.Conv2d(b, 24, 3, padding=1, **conv2d)
        self.inverse_wavelet_tranform_l1 = InverseHaarWaveletTransform2D(device=factory["device"],
                                                                         dtype=factory["dtype"])
        self.inverse_wavelet_tranform_l2 = InverseHaarWaveletTransform3D(device=factory["device"],
                                                                         dtype=factory["dtype"])

    def forward(self, z: Tensor, stream: CausalStream | None = None) -> Tensor:
        d = self.energy_flow_hidden_size
        h = self.mid(self.conv_in(z, stream), stream)  # (B, 4b + d, t, h, w)
        l2 = self.inverse_wavelet_tranform_l2(self.connect_l2(h[:, -d:], stream), stream)  # (B, 3, 2t-1, 2h, 2w)
        h = self.up2(h[:, :-d], stream)  # (B, 4b + d, 2t - 1, 2h, 2w); in a stream one frame behind l2
        if stream is not None:
            l2 = stream.align("decoder.l2", l2, h.shape[2])
        l1_coeffs = self.connect_l1(h[:, -d:], stream)  # (B, 12, 2t - 1, 2h, 2w)
        l1_coeffs = torch.cat([l1_coeffs[:, :3] + l2, l1_coeffs[:, 3:]], dim=1)
        l1 = self.inverse_wavelet_tranform_l1(l1_coeffs)  # (B, 3, 2t - 1, 4h, 4w)
        h = self.layer(self.up1(h[:, :-d], stream), stream)  # (B, b, 2t - 1, 4h, 4w)
        h = per_frame(self.conv_out, F.silu(self.norm_out(h)))  # (B, 24, 2t - 1, 4h, 4w)
        return torch.cat([h[:, :3] + l1, h[:, 3:]], dim=1)


# ==================================================================================================
# Model
# ==================================================================================================


class WFVAEModel(OfficialConstructors, nn.Module):
    """The official ``WFVAEModel``: ``encode`` -> :class:`DiagonalGaussian`, ``decode`` -> video in [-1, 1].

    Videos (B, 3, T, H, W) in [-1, 1], any T >= 1 (T -> ceil(T / 4) latent frames), H and W multiples
    of 8; latents (B, latent_dim, t, h, w) decode to (B, 3, 4t - 3, 8h, 8w). No scaling here:
    :class:`~.osp.OpenSoraPlanVAE` applies ``(z - shift) * scale``.
    """

    CONFIG: ClassVar[type] = WFVAEConfig
    PRESETS: ClassVar[dict[str, WFVAEConfig]] = WFVAE_PRESETS
    OFFICIAL_NAME: ClassVar[str] = "WFVAEModel"

    def __init__(self, config: WFVAEConfig = WFVAE_PRESETS["WFVAEModel_D8_4x8x8"], *, operations=nn,
                 device=None, dtype=None):
        super().__init__()
        self.config = config
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.encoder = Encoder(config, factory)
        self.decoder = Decoder(config, factory)
        self.replaced_constants: list[str] = []
        self._register_load_state_dict_pre_hook(_rebuild_constants, with_module=True)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_dim

    @property
    def geometry(self) -> LatentGeometry:
        """4x8x8 causal (the two Haar levels and the causal time halvings), ``latent_dim`` channels."""
        return dataclasses.replace(OSP_WF_VAE, latent_channels=self.latent_channels)

    def _filters(self, like: Tensor) -> Tensor:
        return haar_filters_3d(like.device, like.dtype)  # built per call, as the official encode/decode

    # -- untiled (official default) -----------------------------------------------------------------

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) in [-1, 1] -> posterior over (B, latent_dim, ceil(T/4), H/8, W/8)."""
        check_video(x, self.geometry)
        return DiagonalGaussian.from_moments(self.encode_moments(x))

    def encode_moments(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        coeffs = haar_transform_3d(x, self._filters(x), self, stream)  # (B, 24, ceil(T/2), H/2, W/2)
        if coeffs.shape[2] == 0:  # a stream chunk that completes no coefficient frame
            return coeffs.new_empty(coeffs.shape[0], 2 * self.latent_channels, 0, *coeffs.shape[3:])
        return self.encoder(coeffs, stream)  # (B, 2 latent_dim, ceil(T/4), H/8, W/8)

    def decode(self, z: Tensor, stream: CausalStream | None = None) -> Tensor:
        """Latent (B, latent_dim, t, h, w) -> video (B, 3, 4t - 3, 8h, 8w), not clamped."""
        if stream is None:
            check_latent(z, self.latent_channels)
        coeffs = self.decoder(z, stream)  # (B, 24, 2t - 1, 4h, 4w)
        return inverse_haar_3d(coeffs, self._filters(coeffs), self.decoder, stream)

    def forward(self, x: Tensor, sample_posterior: bool = True, noise=None) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(noise) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    # -- chunked (bounded memory, equal to the untiled path) -----------------------------------------

    def chunked_decode(self, z: Tensor, latent_frames_per_chunk: int = 4) -> Tensor:
        """``decode`` in temporal chunks of latent frames, carrying causal caches (see module docstring).

        Only the activations of one chunk are alive; the result equals ``decode(z)`` up to float
        rounding for every latent length (official tiling: t_chunk_dec = 4, wrong for 2, 6, 10, ...).
        """
        self._check_streamable()
        check_latent(z, self.latent_channels)
        stream, parts = CausalStream(), []
        for start, stop in _chunks(z.shape[2], latent_frames_per_chunk):
            stream.final = stop == z.shape[2]
            parts.append(self.decode(z[:, :, start:stop], stream))  # (B, 3, n_i, H, W)
        return torch.cat(parts, dim=2)

    def chunked_encode(self, x: Tensor, frames_per_chunk: int = 32) -> DiagonalGaussian:
        """``encode`` in temporal chunks of pixel frames (first frame alone, as the official tiling)."""
        self._check_streamable()
        check_video(x, self.geometry)
        stream, parts = CausalStream(), []
        for start, stop in _chunks(x.shape[2], frames_per_chunk):
            stream.final = stop == x.shape[2]
            moments = self.encode_moments(x[:, :, start:stop], stream)
            if moments.shape[2]:
                parts.append(moments)
        return DiagonalGaussian.from_moments(torch.cat(parts, dim=2))

    def _check_streamable(self) -> None:
        if self.config.norm_type != "layernorm":
            raise ValueError(
                "chunked WF-VAE encode/decode is exact only with norm_type='layernorm' (GroupNorm statistics "
                f"span the whole clip); this model uses {self.config.norm_type!r}: use encode/decode"
            )


def _chunks(length: int, size: int) -> Iterator[tuple[int, int]]:
    """[0, 1), then [1, 1 + size), ...: the first frame alone, as the official ``build_chunk_start_end``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    yield 0, 1
    for start in range(1, length, size):
        yield start, min(start + size, length)


# ==================================================================================================
# Loading: constant Haar tensors
# ==================================================================================================

_MAIN_SPELLING = ("wavelet_transform", "wavelet_tranform")  # main (PR #536) -> v1.3.1 key spelling
_MAIN_ONLY_CONSTANTS = ("encoder.wavelet_transform_in.", "decoder.inverse_wavelet_transform_out.")
CONSTANT_TOLERANCE = 1e-3  # a stored constant may be rounded (bf16/fp16 files); anything further is not Haar


def loadable_state_dict(module: WFVAEModel, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A file's state dict as ``module`` loads it strictly: either key spelling (v1.3.1 ``wavelet_tranform`` or
    ``main``'s ``wavelet_transform``), every Haar constant checked and replaced by its built value, the
    ``main``-only in/out constants dropped (listed in ``module.replaced_constants``)."""
    state = dict(state_dict)
    _rebuild_constants(module, state, "")
    return state


def _rebuild_constants(module: WFVAEModel, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: accept both key spellings and replace every stored Haar constant by
    the built float32 value, after checking that it is that constant; the ``main``-only in/out
    constants (the transforms v1.3.1 builds per call) are dropped. ``replaced_constants`` lists them."""
    ours = set(module.state_dict(keep_vars=True))
    module.replaced_constants = []
    for key in [k for k in state_dict if k.startswith(prefix) and "wavelet" in k]:
        local = key[len(prefix):]
        target = local.replace(*_MAIN_SPELLING)
        reference = haar_constant(local)
        if reference is None or not (target in ours or local.startswith(_MAIN_ONLY_CONSTANTS)):
            continue  # not a Haar constant of ours: left for load_state_dict to report
        value = state_dict.pop(key)
        if value.shape != reference.shape or (value.float() - reference).abs().max() > CONSTANT_TOLERANCE:
            raise ValueError(f"WFVAEModel: {local} is not the fixed Haar filter (values {value.flatten()[:8].tolist()})")
        if target in ours:
            state_dict[prefix + target] = reference
        module.replaced_constants.append(local)


def haar_constant(key: str) -> Tensor | None:
    """The built value of the Haar constant a state-dict key names (``...h_v_conv.conv.weight``,
    ``...inverse_wavelet_tranform_l2.h_v``, ``...wavelet_tranform_l1.aa``), None if it names none."""
    parts = key.split(".")
    name = (parts[-3] if parts[-1] == "weight" and len(parts) >= 3 else parts[-1]).removesuffix("_conv")
    if name in HAAR_3D_FILTERS:
        return haar_filters_3d()[list(HAAR_3D_FILTERS).index(name)].reshape(1, 1, 2, 2, 2)
    if name in HAAR_2D_FILTERS:
        return haar_filters_2d()[list(HAAR_2D_FILTERS).index(name)].reshape(1, 1, 2, 2)
    return None


def wfvae_parameter_counts(model: WFVAEModel) -> dict[str, int]:
    """Parameter elements of the encoder and the decoder (for reports)."""
    return {"encoder": sum(p.numel() for p in model.encoder.parameters()),
            "decoder": sum(p.numel() for p in model.decoder.parameters())}


__all__ = [
    "HAAR_3D_VALUE",
    "WFVAEConfig",
    "WFVAEModel",
    "WFVAE_PRESETS",
    "haar_filters_2d",
    "haar_filters_3d",
    "loadable_state_dict",
    "wfvae_parameter_counts",
]
