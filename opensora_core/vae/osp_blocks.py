"""Building blocks shared by the Open-Sora-Plan video VAEs: CausalVideoVAE (v1.0-v1.2) and WF-VAE (v1.3).

Module and parameter names follow PKU-YuanGroup/Open-Sora-Plan (``opensora/models/ae/videobase/modules``
at v1.0.0/v1.1.0, ``opensora/models/causalvideovae/model/modules`` at v1.2.0/v1.3.1), so the released
state dicts load with ``strict=True``: a causal convolution wraps an ``nn.Conv3d`` named ``conv``
(keys ``....conv.weight``), 2D layers own their weights directly.

Tensors are videos ``(B, C, T, H, W)``. Three kinds of layer:

* causal 3D layers (:class:`CausalConv3d` and the blocks built on it) see the whole clip and pad time
  at the front only, by repeating the first frame ``k - 1`` times;
* 2D layers (``operations.Conv2d``, :class:`ResnetBlock2D`, :class:`Downsample`, :class:`Upsample`)
  run on every frame separately (time folded into the batch);
* normalisation: ``GroupNorm(32, eps=1e-6)`` over (C/32, T, H, W) (CausalVAE, 3D blocks; per frame in
  2D blocks) or a channel ``LayerNorm(eps=1e-6)`` at every position (WF-VAE, ``norm_type="layernorm"``).

Chunked (streaming) processing: every causal layer takes an optional :class:`CausalStream`. With a
stream, a layer called on consecutive temporal chunks of one clip carries the frames its next outputs
still need from one chunk to the next instead of repeating the first frame, so the concatenated chunk
outputs equal the whole-clip output. That is exact only when nothing mixes frames otherwise (LayerNorm,
per-frame attention): the WF-VAE. The CausalVAE's GroupNorm statistics span the clip, so its bounded-
memory path is the official tiling instead (:mod:`.causal_vae`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_EPS = 1e-6  # every GroupNorm / LayerNorm of both VAE families
GROUP_NORM_GROUPS = 32
NORM_TYPES = ("groupnorm", "layernorm")


# ==================================================================================================
# Config checks
# ==================================================================================================


def check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not supported; choose one of {', '.join(map(repr, choices))}")


def check_video(x: Tensor, geometry) -> None:
    """Raise unless ``x`` is an RGB video (B, 3, T >= 1, H, W) whose H and W the VAE takes whole."""
    if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] < 1:
        raise ValueError(f"expected a video [B, 3, T, H, W] (T >= 1) in [-1, 1], got shape {tuple(x.shape)}")
    geometry.check_encodable_hw(x.shape[3], x.shape[4])


def check_latent(z: Tensor, channels: int) -> None:
    if z.ndim != 5 or z.shape[1] != channels or z.shape[2] < 1:
        raise ValueError(f"expected a latent [B, {channels}, t, h, w] (t >= 1), got shape {tuple(z.shape)}")


# ==================================================================================================
# Time handling: first-frame padding, streams, per-frame layers
# ==================================================================================================


class CausalStream:
    """What one chunked encode or decode carries from a temporal chunk to the next.

    ``carried[layer]``: the input frames a causal layer still needs (replaces the first-frame padding
    after the first chunk); ``started``: layers that have seen the first frame of the clip; ``pending``:
    frames a branch produced ahead of the branch it is joined with. ``final`` is set before the last
    chunk, so layers that hold an output back (the x2 temporal upsampler) release it.
    """

    def __init__(self) -> None:
        self.carried: dict[nn.Module, Tensor] = {}
        self.started: set[nn.Module] = set()
        self.pending: dict[str, Tensor] = {}
        self.final = False

    def first_chunk(self, layer: nn.Module) -> bool:
        """True the first time ``layer`` asks (it is processing the clip's first frames)."""
        if layer in self.started:
            return False
        self.started.add(layer)
        return True

    def align(self, key: str, frames: Tensor, count: int) -> Tensor:
        """Queue ``frames`` of a branch that runs ahead and return its next ``count`` frames."""
        queued = torch.cat([self.pending[key], frames], dim=2) if key in self.pending else frames
        if queued.shape[2] < count:
            raise RuntimeError(f"stream branch {key!r} has {queued.shape[2]} frames, {count} needed")
        self.pending[key] = queued[:, :, count:]
        return queued[:, :, :count]


def causal_input(x: Tensor, layer: nn.Module, kernel: int, stride: int, stream: CausalStream | None) -> Tensor:
    """``x`` with the frames a causal layer of time kernel ``kernel`` and stride ``stride`` needs in front.

    Without a stream (or on the first chunk): the first frame repeated ``kernel - 1`` times. In a
    stream: the frames carried from the previous chunk; the frames not consumed by this chunk's
    outputs are carried to the next one.
    """
    if stream is None or layer not in stream.carried:
        front = x[:, :, :1].repeat(1, 1, kernel - 1, 1, 1)  # (B, C, k-1, H, W)
    else:
        front = stream.carried[layer]
    padded = torch.cat([front, x], dim=2) if front.shape[2] else x  # (B, C, k-1+T, H, W)
    if stream is not None:
        outputs = (padded.shape[2] - kernel) // stride + 1 if padded.shape[2] >= kernel else 0
        stream.carried[layer] = padded[:, :, outputs * stride:].clone()  # clone: do not pin the chunk
    return padded


def per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Run a 2D layer on every frame: (B, C, T, H, W) -> (B*T, C, H, W) -> layer -> (B, C', T, H', W')."""
    b, c, t, h, w = x.shape
    y = layer(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C', H', W')
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class TemporalLayer(nn.Module):
    """Base of the blocks here: ``forward(x, stream=None)`` on videos (B, C, T, H, W)."""

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


def run_layer(layer: nn.Module, x: Tensor, stream: CausalStream | None) -> Tensor:
    """A :class:`TemporalLayer` with the stream; any other layer (a 2D conv) per frame."""
    return layer(x, stream) if isinstance(layer, TemporalLayer) else per_frame(layer, x)


class LayerStack(nn.Sequential):
    """``nn.Sequential`` of video layers (keys ``0``, ``1``, ... as the official ``nn.Sequential``)."""

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        for layer in self:
            x = run_layer(layer, x, stream)
        return x


# ==================================================================================================
# Convolutions and normalisation
# ==================================================================================================


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


class CausalConv3d(TemporalLayer):
    """Conv3d padded causally in time (first frame repeated ``k_t - 1`` times) and as given in space.

    follows modules/conv.py CausalConv3d: the temporal entry of ``padding`` is forced to 0.
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int | Sequence[int], *, stride=1, padding=0,
                 bias: bool = True, operations=nn, device=None, dtype=None):
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        pad = (0, *_triple(padding)[1:])
        self.time_kernel, self.time_stride = kernel[0], strides[0]
        self.conv = operations.Conv3d(chan_in, chan_out, kernel, stride=strides, padding=pad, bias=bias,
                                      device=device, dtype=dtype)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        x = causal_input(x, self, self.time_kernel, self.time_stride, stream)  # (B, C, k-1+T, H, W)
        if x.shape[2] < self.time_kernel:  # a stream chunk too short to complete an output frame
            return x.new_empty(x.shape[0], self.conv.out_channels, 0, *self._out_hw(x))
        return self.conv(x)  # (B, C_out, T', H', W')

    def _out_hw(self, x: Tensor) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.conv.kernel_size[1:], self.conv.stride[1:], self.conv.padding[1:]
        return (x.shape[3] + 2 * ph - kh) // sh + 1, (x.shape[4] + 2 * pw - kw) // sw + 1


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every position (key ``norm.weight``; modules/normalize.py LayerNorm)."""

    def __init__(self, channels: int, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.norm = operations.LayerNorm(channels, eps=NORM_EPS, elementwise_affine=True, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)  # channels last and back


def make_norm(channels: int, norm_type: str, *, operations=nn, device=None, dtype=None) -> nn.Module:
    """modules/normalize.py Normalize: GroupNorm(32, eps 1e-6) or the channel LayerNorm."""
    check_choice(norm_type, NORM_TYPES, "norm_type")
    if norm_type == "groupnorm":
        if channels % GROUP_NORM_GROUPS:
            raise ValueError(f"GroupNorm needs channels divisible by {GROUP_NORM_GROUPS}, got {channels}")
        return operations.GroupNorm(GROUP_NORM_GROUPS, channels, eps=NORM_EPS, affine=True, device=device, dtype=dtype)
    return ChannelLayerNorm(channels, operations=operations, device=device, dtype=dtype)


# ==================================================================================================
# Residual and attention blocks
# ==================================================================================================


class ResnetBlock2D(TemporalLayer):
    """norm-SiLU-conv twice plus the input (1x1 ``nin_shortcut`` when the width changes), per frame.

    follows modules/resnet_block.py ResnetBlock2D (``video_to_image``: norms see one frame at a time).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.0, norm_type: str = "groupnorm",
                 operations=nn, device=None, dtype=None):
        super().__init__()
        factory = {"operations": operations, "device": device, "dtype": dtype}
        conv = {"device": device, "dtype": dtype}
        self.norm1 = make_norm(in_channels, norm_type, **factory)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1, **conv)
        self.norm2 = make_norm(out_channels, norm_type, **factory)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1, **conv)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1, **conv)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return per_frame(self._frames, x)

    def _frames(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class ResnetBlock3D(TemporalLayer):
    """norm-SiLU-causal conv twice plus the input (1x1x1 causal ``nin_shortcut`` when the width changes).

    follows modules/resnet_block.py ResnetBlock3D.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.0, norm_type: str = "groupnorm",
                 operations=nn, device=None, dtype=None):
        super().__init__()
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.norm1 = make_norm(in_channels, norm_type, **factory)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1, **factory)
        self.norm2 = make_norm(out_channels, norm_type, **factory)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1, **factory)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1, **factory)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), stream)  # (B, C_out, T, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), stream)
        shortcut = self.nin_shortcut(x, stream) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock3DFix(TemporalLayer):
    """Single-head self-attention over the H*W positions of each frame, with residual.

    follows modules/attention.py AttnBlock3DFix: norm, 1x1x1 causal convs q, k, v, softmax(q k^T / sqrt(C)) v,
    1x1x1 ``proj_out``. ``legacy_reshape`` reproduces v1.0's ``AttnBlock3D`` (FACTS.md section 4): q, k, v
    are reshaped (B, C, T, H, W) -> (B*T, C, H*W) without moving T next to B, so each "frame" of the
    attention holds C consecutive rows of the flattened (C, T) axis, and the result is reshaped straight
    back. That mixes channels and frames (per-frame attention when T = 1); the v1.0 checkpoint was
    trained with it, so it is kept.
    """

    def __init__(self, channels: int, *, norm_type: str = "groupnorm", legacy_reshape: bool = False,
                 operations=nn, device=None, dtype=None):
        super().__init__()
        factory = {"operations": operations, "device": device, "dtype": dtype}
        self.legacy_reshape = legacy_reshape
        self.norm = make_norm(channels, norm_type, **factory)
        self.q = CausalConv3d(channels, channels, 1, **factory)
        self.k = CausalConv3d(channels, channels, 1, **factory)
        self.v = CausalConv3d(channels, channels, 1, **factory)
        self.proj_out = CausalConv3d(channels, channels, 1, **factory)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        h = self.norm(x)
        q, k, v = self._tokens(self.q(h)), self._tokens(self.k(h)), self._tokens(self.v(h))  # (B*T, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B*T, HW, C), scale 1/sqrt(C)
        return x + self.proj_out(self._video(out, x.shape))

    def _tokens(self, y: Tensor) -> Tensor:
        b, c, t, h, w = y.shape
        if self.legacy_reshape:
            return y.reshape(b * t, c, h * w).transpose(1, 2)[:, None]  # rows of the flattened (C, T) axis
        return y.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)[:, None]

    def _video(self, out: Tensor, shape: torch.Size) -> Tensor:
        b, c, t, h, w = shape
        if self.legacy_reshape:
            return out.transpose(1, 2).reshape(b, c, t, h, w)
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


# ==================================================================================================
# Down- and upsampling
# ==================================================================================================


class Downsample(TemporalLayer):
    """2D, per frame: zero-pad one column right and one row bottom, 3x3 conv stride 2 (H -> floor(H/2))."""

    def __init__(self, in_channels: int, out_channels: int, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.conv = operations.Conv2d(in_channels, out_channels, 3, stride=2, padding=0, device=device, dtype=dtype)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return per_frame(lambda f: self.conv(F.pad(f, (0, 1, 0, 1))), x)  # (B, C, T, H/2, W/2)


class Upsample(TemporalLayer):
    """2D, per frame: nearest x2, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.conv = operations.Conv2d(in_channels, out_channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return per_frame(lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")), x)


class Spatial2xTime2x3DDownsample(TemporalLayer):
    """Zero-pad right/bottom by one, causal conv kernel 3, stride 2 in T, H and W (T -> ceil(T/2))."""

    def __init__(self, in_channels: int, out_channels: int, *, operations=nn, device=None, dtype=None):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, stride=2, padding=0, operations=operations,
                                 device=device, dtype=dtype)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)), stream)  # (B, C, ceil(T/2), H/2, W/2)


T_INTERPOLATIONS = ("trilinear", "nearest")


class Spatial2xTime2x3DUpsample(TemporalLayer):
    """x2 in T (first frame kept once: T -> 2T - 1) and in H, W, then a causal 3x3x3 conv.

    ``joint=True`` (CausalVAE v1.2, updownsample.py @v1.2.0): frame 0 trilinear x(1, 2, 2), frames 1..T-1
    trilinear x(2, 2, 2) in one call. ``joint=False`` (WF-VAE, @v1.3.1): frames 1..T-1 interpolated x2 in
    time with ``t_interpolation``, then every frame x(1, 2, 2) trilinear; this form also streams.
    Streaming: output 2j + 1 of the time interpolation needs input j + 1, so each chunk holds its last
    output back until the next chunk (or ``stream.final``) supplies the neighbour or the clip's end.
    """

    def __init__(self, in_channels: int, out_channels: int, *, t_interpolation: str = "trilinear",
                 joint: bool = False, operations=nn, device=None, dtype=None):
        super().__init__()
        check_choice(t_interpolation, T_INTERPOLATIONS, "t_interpolation")
        self.t_interpolation, self.joint = t_interpolation, joint
        self.conv = CausalConv3d(in_channels, out_channels, 3, padding=1, operations=operations,
                                 device=device, dtype=dtype)

    def forward(self, x: Tensor, stream: CausalStream | None = None) -> Tensor:
        if self.joint:
            if stream is not None:
                raise ValueError("the joint (v1.2) x2 upsampler does not stream")
            return self.conv(self._joint(x))
        x = self._time_x2(x, stream)  # (B, C, 2T - 1 in total, H, W)
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear"), stream)

    @staticmethod
    def _joint(x: Tensor) -> Tensor:
        first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
        if x.shape[2] == 1:
            return first
        rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode="trilinear")
        return torch.cat([first, rest], dim=2)  # (B, C, 2T - 1, 2H, 2W)

    def _time_x2(self, x: Tensor, stream: CausalStream | None) -> Tensor:
        first_chunk = stream is None or stream.first_chunk(self)
        head, rest = (x[:, :, :1], x[:, :, 1:]) if first_chunk else (x[:, :, :0], x)
        if rest.shape[2] == 0:
            return head
        previous = None if stream is None else stream.carried.get(self)
        window = rest if previous is None else torch.cat([previous, rest], dim=2)
        out = F.interpolate(window, scale_factor=(2, 1, 1), mode=self.t_interpolation)  # (B, C, 2L, H, W)
        start = 0 if previous is None else 1  # output 0 of a continued window belongs to the previous chunk
        stop = out.shape[2] if stream is None or stream.final else out.shape[2] - 1  # hold the edge back
        if stream is not None:
            stream.carried[self] = rest[:, :, -1:].clone()
        return torch.cat([head, out[:, :, start:stop]], dim=2)
