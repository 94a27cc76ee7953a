"""Open-Sora 2.0 sampling: shifted flow schedule, three-pass guidance, Euler steps of the MMDiT.

Follows ``get_schedule``, ``get_oscillation_gs``, ``I2VDenoiser`` and ``api_fn`` of
opensora/utils/sampling.py (hpcaitech/Open-Sora main, the 2.0 code).

Time runs from t = 1 (noise) to t = 0 (data) with x_t = (1 - t) x0 + t noise; the model predicts the
velocity noise - x0 and each step is x <- x + (t_next - t) v. Every step evaluates three passes:

* c:  the prompt, with the image condition;
* u:  the negative prompt ("" by default), with the image condition;
* u2: the negative prompt, with no condition (cond = 0);

and combines them as v = u2 + image_scale (u - u2) + text_scale (c - u). With oscillation both scales are
1 on odd steps from step 10 on; for i2v condition types the image scale also ramps over the latent frames
(frame 0 gets 1) and its top decays over the steps.

Typical use::

    shape = latent_shape(batch, height, width, num_frames)                # opensora_core.geometry.opensora_v2
    z = get_noise(shape.shape, seed, dtype=torch.bfloat16, device="cuda")  # official: model dtype/device
    condition = build_condition(z, "i2v_head", [[image_latent]])         # opensora_core.conditioning.v2
    times = get_schedule(50, shape.tokens_per_frame, shape.frames)
    latent = sample_v2(ThreePassGuidance(model, text, GuidanceV2()), z, times, mask=condition)  # to decode

A family declares the three parts as ``Sampler(schedule=schedule_v2, sample=sample_v2,
denoiser=ThreePassGuidance.for_sampler)``: the schedule from the request's pixel size, the sampler's
``mask`` is the condition the family's conditioning builds, the denoiser takes the text as a TextV2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..conditioning.v2 import ConditionV2, build_condition, replace_reference_frames, uses_temporal_ramp
from ..geometry.opensora_v2 import latent_shape
from ..models.mmdit import pack, position_ids, text_ids, unpack
from ..text.v2 import TextV2
from .core import NoiseSource, ScheduleRequest, StepCallback, StepResult, run_steps

OSCILLATION_START = 10  # get_oscillation_gs(force_num=10)
SHIFT_POINTS = ((256, 1.0), (4096, 3.0))  # (tokens per latent frame, alpha) of the linear shift rule

# The MMDiT as the sampler calls it: keyword arguments img, img_ids, txt, txt_ids, timesteps, y_vec, cond,
# guidance -> [rows, tokens, channels].
ModelFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------


def shift_alpha(image_seq_len: int, latent_frames: int, base_shift: float = 1.0, max_shift: float = 3.0) -> float:
    """alpha = (m S + b) sqrt(T): linear in the tokens per latent frame S (1 at 256, 3 at 4096 for the
    defaults), times the square root of the latent frame count (``get_res_lin_function`` + ``get_schedule``)."""
    (x1, _), (x2, _) = SHIFT_POINTS
    m = (max_shift - base_shift) / (x2 - x1)
    b = base_shift - m * x1
    return (m * image_seq_len + b) * math.sqrt(latent_frames)


def get_schedule(num_steps: int, image_seq_len: int, latent_frames: int, *, shift: bool = True,
                 flow_shift: float | None = None) -> list[float]:
    """num_steps + 1 times from 1 to 0 (float32 values as Python floats, like the official list).

    linspace(1, 0) is shifted by t -> alpha t / (1 + (alpha - 1) t) with alpha = :func:`shift_alpha`, or
    ``flow_shift`` when given; ``shift=False`` keeps it linear.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    times = torch.linspace(1, 0, int(num_steps) + 1)
    if shift:
        alpha = shift_alpha(image_seq_len, latent_frames) if flow_shift is None else flow_shift
        times = alpha * times / (1 + (alpha - 1) * times)
    return times.tolist()


def get_noise(shape: Sequence[int], seed: int, *, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", generator_device: torch.device | str | None = None) -> torch.Tensor:
    """The initial latent: ``torch.randn(shape)`` from a generator seeded with ``seed`` (``get_noise``).

    The official code draws on the sampling device in the model dtype (a CUDA generator when it samples on a
    GPU, so its GPU noise differs from the CPU's for the same seed); ``generator_device="cpu"`` gives
    device-independent noise, moved to ``device``. ``shape``: :func:`opensora_core.geometry.opensora_v2.latent_shape`.
    """
    where = torch.device(device if generator_device is None else generator_device)
    generator = torch.Generator(device=where).manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=where).to(device)


# ---------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------


def oscillation_scale(scale: float, step: int, start: int = OSCILLATION_START) -> float:
    """``scale`` on steps before ``start`` and on even steps after it, 1.0 on odd steps from ``start`` on."""
    return scale if step < start or step % 2 == 0 else 1.0


def image_scale_top(image_scale: float, step: int, num_steps: int) -> float:
    """The ramp's top at ``step``: linspace(image_scale, 1, num_steps + 1)[step] (float32)."""
    return float(torch.linspace(image_scale, 1.0, num_steps + 1)[step])


def image_scale_ramp(image_scale: float, step: int, num_steps: int, latent_frames: int) -> torch.Tensor:
    """(T,) float32 image guidance per latent frame: linspace(1, top, T), frame 0 gets 1, the last the top
    (:func:`image_scale_top`)."""
    return torch.linspace(1.0, image_scale_top(image_scale, step, num_steps), latent_frames)


@dataclass(frozen=True)
class GuidanceV2:
    """Guidance settings of the sampler (``SamplingOption``; defaults = configs/diffusion/inference/256px.py).

    guidance:            text scale; also passed to the model as ``guidance`` (used only by a
                         guidance-distilled model)
    guidance_img:        image/condition scale
    text_osci, image_osci: oscillation (scale 1 on odd steps from step 10)
    scale_temporal_osci: the temporal ramp of the image scale, applied for i2v condition types only
    """

    guidance: float = 7.5
    guidance_img: float = 3.0
    text_osci: bool = True
    image_osci: bool = True
    scale_temporal_osci: bool = True

    def text_scale(self, step: int) -> float:
        return oscillation_scale(self.guidance, step) if self.text_osci else self.guidance

    def image_scale(self, step: int, num_steps: int, latent_frames: int, cond_type: str) -> float | torch.Tensor:
        """A float, or (T,) float32 per latent frame when the temporal ramp applies."""
        scale = oscillation_scale(self.guidance_img, step) if self.image_osci else self.guidance_img
        if scale > 1.0 and self.scale_temporal_osci and uses_temporal_ramp(cond_type):
            return image_scale_ramp(scale, step, num_steps, latent_frames)
        return scale


def guided_velocity(c: torch.Tensor, u: torch.Tensor, u2: torch.Tensor, text_scale: float,
                    image_scale: float | torch.Tensor) -> torch.Tensor:
    """u2 + image_scale (u - u2) + text_scale (c - u), in that order of operations."""
    return u2 + image_scale * (u - u2) + text_scale * (c - u)


def combine_passes(c: torch.Tensor, u: torch.Tensor, u2: torch.Tensor, guidance: GuidanceV2, *, step: int,
                   num_steps: int, cond_type: str) -> torch.Tensor:
    """The guided result at ``step`` of ``num_steps`` from the three passes c, u, u2 [B, C, T, H, W]
    (:func:`guided_velocity` with the step's oscillated scales and, for i2v, the per-frame image scale).

    The weights (1 - image, image - text, text) sum to 1 for every frame, so the same call guides any affine
    map of the velocities with the same x, e.g. ComfyUI's denoised estimate x - sigma v."""
    image_scale = guidance.image_scale(step, num_steps, c.shape[2], cond_type)
    if isinstance(image_scale, torch.Tensor):
        image_scale = image_scale.to(c.device, c.dtype)[None, None, :, None, None]  # (1, 1, T, 1, 1)
    return guided_velocity(c, u, u2, guidance.text_scale(step), image_scale)


# ---------------------------------------------------------------------------
# The guided denoiser and the sampler
# ---------------------------------------------------------------------------


@dataclass
class _Passes:
    """Per-pass model arguments: pass 0 = (prompt, condition), 1 = (negative, condition), 2 = (negative, none)."""

    txt: list[torch.Tensor]
    y_vec: list[torch.Tensor]
    cond: list[torch.Tensor]
    img_ids: torch.Tensor  # (B, N, 3)
    txt_ids: torch.Tensor  # (B, L, 3)


def _passes(z: torch.Tensor, text: TextV2, condition: ConditionV2, patch_size: int) -> _Passes:
    B, _, T, H, W = z.shape
    txt, y_vec, neg_txt, neg_y_vec = (t.to(z.device, z.dtype) for t in text.rows(B))
    cond = pack(torch.cat((condition.masks, condition.masked_ref), dim=1), patch_size).to(z.device, z.dtype)
    return _Passes(
        txt=[txt, neg_txt, neg_txt],
        y_vec=[y_vec, neg_y_vec, neg_y_vec],
        cond=[cond, cond, torch.zeros_like(cond)],
        img_ids=position_ids(B, T, H, W, patch_size, device=z.device, dtype=z.dtype),
        txt_ids=text_ids(B, txt.shape[1], device=z.device, dtype=z.dtype),
    )


class ThreePassGuidance:
    """The MMDiT with Open-Sora 2.0's guidance (``I2VDenoiser.denoise``): ``(x, t, condition, *, step, num_steps)
    -> v``, the guided velocity for the unpacked latent x [B, C, T, H, W] at time t in [0, 1].

    model:        the MMDiT (or anything with its keyword call), returning [rows, tokens, C*p*p]
    text:         the prompts and negative prompts (:class:`~opensora_core.text.v2.TextV2`)
    guidance:     the scales (:class:`GuidanceV2`); ``step``/``num_steps`` drive oscillation and the ramp
    batch_passes: True runs the passes as one model call of 3B rows (official); False as three calls of B
                  rows (a third of the activation memory). With an all-zero condition (t2v) the third pass
                  equals the second and is not computed.
    """

    def __init__(self, model: ModelFn, text: TextV2, guidance: GuidanceV2 = GuidanceV2(), *, patch_size: int = 2,
                 batch_passes: bool = True):
        self.model, self.text, self.guidance = model, text, guidance
        self.patch_size, self.batch_passes = patch_size, batch_passes
        self._args: tuple[tuple, ConditionV2, _Passes] | None = None  # the passes of the last latent shape

    @classmethod
    def for_sampler(cls, model: ModelFn, caption: TextV2, y_null: torch.Tensor | None = None,
                    model_args: dict | None = None, *, scale: float, channels: int | None = None,
                    null_mask: torch.Tensor | None = None, image_cfg_scale: float | None = None,
                    oscillation: bool | None = None) -> ThreePassGuidance:
        """The family ``Sampler.denoiser`` signature: ``caption`` is the :class:`TextV2` (it carries the
        negative prompt, so ``y_null``/``null_mask`` stay None), ``scale`` the text guidance,
        ``image_cfg_scale`` the image guidance and ``oscillation`` both oscillations (None: the
        :class:`GuidanceV2` defaults); ``model_args`` may set the other :class:`GuidanceV2` fields and
        ``patch_size`` / ``batch_passes``."""
        if y_null is not None or null_mask is not None or channels is not None:
            raise ValueError("Open-Sora 2.0 guides against the negative prompt inside TextV2 and every velocity "
                             "channel: pass y_null=None, null_mask=None, channels=None")
        options = dict(model_args or {})
        factory = {k: options.pop(k) for k in ("patch_size", "batch_passes") if k in options}
        if image_cfg_scale is not None:
            options["guidance_img"] = image_cfg_scale
        if oscillation is not None:
            options.update(text_osci=oscillation, image_osci=oscillation)
        return cls(model, caption, GuidanceV2(guidance=scale, **options), **factory)

    def __call__(self, x: torch.Tensor, t: float, condition: ConditionV2, *, step: int,
                 num_steps: int) -> torch.Tensor:
        _, _, T, H, W = x.shape
        args = self._passes_for(x, condition)
        outs = self._three_passes(pack(x, self.patch_size), t, args, skip_u2=condition.is_empty)
        c, u, u2 = (unpack(o, T, H, W, self.patch_size) for o in outs)  # (B, C, T, H, W) each
        return combine_passes(c, u, u2, self.guidance, step=step, num_steps=num_steps, cond_type=condition.cond_type)

    def _passes_for(self, x: torch.Tensor, condition: ConditionV2) -> _Passes:
        key = (tuple(x.shape), x.dtype, x.device)
        if self._args is None or self._args[0] != key or self._args[1] is not condition:
            self._args = (key, condition, _passes(x, self.text, condition, self.patch_size))
        return self._args[2]

    def _call(self, img: torch.Tensor, t: float, args: _Passes, which: Sequence[int]) -> list[torch.Tensor]:
        """One model call on the passes ``which`` stacked along the batch -> their outputs (B, N, C) each."""
        n = len(which)
        rows = img.shape[0] * n
        out = self.model(
            img=img.repeat(n, 1, 1),
            img_ids=args.img_ids.repeat(n, 1, 1),
            txt=torch.cat([args.txt[p] for p in which]),
            txt_ids=args.txt_ids.repeat(n, 1, 1),
            timesteps=torch.full((rows,), t, dtype=img.dtype, device=img.device),
            y_vec=torch.cat([args.y_vec[p] for p in which]),
            cond=torch.cat([args.cond[p] for p in which]),
            guidance=torch.full((rows,), self.guidance.guidance, dtype=img.dtype, device=img.device),
        )
        return list(out.to(img.dtype).chunk(n, dim=0))

    def _three_passes(self, img: torch.Tensor, t: float, args: _Passes,
                      skip_u2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c, u, u2) for the packed latent img (B, N, C). ``skip_u2``: the condition is all zero, so pass 2 has
        the inputs of pass 1 and its output is taken from it."""
        which = [0, 1] if skip_u2 else [0, 1, 2]
        if self.batch_passes:
            outs = self._call(img, t, args, which)
        else:
            outs = [self._call(img, t, args, [p])[0] for p in which]
        return outs[0], outs[1], outs[1] if skip_u2 else outs[2]


def start_noise_v2(shape: Sequence[int], seed: int, noise: NoiseSource, dtype: torch.dtype) -> torch.Tensor:
    """The family ``Sampler.start_noise``: :func:`get_noise` with the generation's seed in the model dtype, on
    the CPU (the official z: its own generator, independent of the reference encodes, which draw from ``noise``)."""
    return get_noise(shape, seed, dtype=dtype)


def schedule_v2(request: ScheduleRequest) -> list[float]:
    """The family ``Sampler.schedule``: :func:`get_schedule` for the request's steps and pixel size."""
    shape = latent_shape(1, request.height, request.width, request.num_frames)
    return get_schedule(request.steps, shape.tokens_per_frame, shape.frames)


@torch.no_grad()
def sample_v2(
    denoiser: ThreePassGuidance,
    z: torch.Tensor,
    timesteps: Sequence[float],
    *,
    mask: ConditionV2 | None = None,
    noise: object = None,
    callback: StepCallback | None = None,
    replace_all_items: bool = False,
) -> torch.Tensor:
    """Euler sampling with the three-pass guided velocity (the end of ``api_fn``); the family ``Sampler.sample``.

    denoiser:   :class:`ThreePassGuidance` (``(x, t, condition, *, step, num_steps) -> v``)
    z:          [B, C, T, H, W] initial noise; the sampler computes in z's dtype (official: the model dtype)
    timesteps:  :func:`get_schedule` (floats from 1 down to 0)
    mask:       the condition (:func:`~opensora_core.conditioning.v2.build_condition` for z); None = t2v
    noise:      unused (the flow sampler draws nothing after the initial noise); accepted for the interface
    replace_all_items: put the i2v reference frames back into every item, not only item 0 (official: 0)

    Returns the final latent [B, C, T, H, W] (what the official code decodes). The callback gets the keys of
    :data:`~opensora_core.sampling.core.CALLBACK_KEYS` with unpacked latents and t in [0, 1].
    """
    condition = build_condition(z, "t2v") if mask is None else mask
    _check_inputs(z, condition, timesteps)
    num_steps = len(timesteps) - 1

    def step(i: int, x: torch.Tensor) -> StepResult:
        t, t_next = timesteps[i], timesteps[i + 1]
        v = denoiser(x, t, condition, step=i, num_steps=num_steps)  # (B, C, T, H, W)
        t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return StepResult(x + (t_next - t) * v, t_vec, x - t * v)

    x = run_steps(step, z, num_steps, callback)
    return replace_reference_frames(x, condition, all_items=replace_all_items)


def _check_inputs(z: torch.Tensor, condition: ConditionV2, timesteps: Sequence[float]) -> None:
    if z.dim() != 5:
        raise ValueError(f"z must be a latent [B, C, T, H, W], got {tuple(z.shape)}")
    if tuple(condition.masks.shape[-3:]) != tuple(z.shape[-3:]) or condition.masks.shape[0] != z.shape[0]:
        raise ValueError(f"condition masks {tuple(condition.masks.shape)} do not match the latent {tuple(z.shape)}")
    if len(timesteps) < 2:
        raise ValueError(f"timesteps must hold at least 2 values (1 ... 0), got {len(timesteps)}")


__all__ = [
    "GuidanceV2",
    "ModelFn",
    "ThreePassGuidance",
    "combine_passes",
    "get_noise",
    "get_schedule",
    "guided_velocity",
    "image_scale_ramp",
    "image_scale_top",
    "oscillation_scale",
    "sample_v2",
    "schedule_v2",
    "start_noise_v2",
    "shift_alpha",
]
