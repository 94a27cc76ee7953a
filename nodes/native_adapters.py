"""What a family's diffusion model needs to run as a native ComfyUI ``MODEL``, without ComfyUI imports.

ComfyUI drives a ``BaseModel`` (``nodes/native_model.py``, built from the probed API in
``comfy_bridge.native_api``) that delegates everything family-specific to a :class:`NativeAdapter`:

* ``model_type`` / ``sampling_settings``: the ``comfy.model_base.ModelType`` name ("FLOW", "EPS",
  "V_PREDICTION", ...) and the model config's ``sampling_settings`` that build ComfyUI's model sampling;
* :meth:`conds`: the conditioning tensors the model reads, from ComfyUI's conditioning dict (``cross_attn``,
  ``attention_mask``, our ``opensora_null`` marker) and the LATENT's ``denoise_mask``; each becomes a
  ``CONDRegular`` (same shapes for prompt and negative, so ComfyUI batches them into one call);
* :meth:`predict`: one model call in ComfyUI's convention (CONST: noise - data, EPS: noise);
* :meth:`install`: the model options the family needs (the frame rule as ``denoise_mask_function``,
  channel-limited guidance as ``sampler_cfg_function``);
* :meth:`memory_bytes`: activation memory of a forward (``BaseModel.memory_required``).

* ``shift`` / ``sigmas``: the official schedule (the settings node's shift, the Sigmas node's grid).

Open-Sora v1.1 (STDiT2, IDDPM noise prediction) and v1.2 (STDiT3, rectified flow) share
:class:`STDiTAdapter`; Open-Sora 2.0 (MMDiT) has :class:`~.native_mmdit.MMDiTAdapter`; a new family
registers its own adapter in :data:`ADAPTERS` (see docs/architecture.md). The video settings the adapters
read are in ``native_video``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..opensora_core.families import Family
from ..opensora_core.geometry import LatentGeometry
from ..opensora_core.sampling import DIFFUSION_STEPS, rflow_timesteps, space_timesteps, transform_shift
from .native_mmdit import MMDiTAdapter
from .native_video import NULL_KEY, SETTINGS_KEY, VideoSettings, video_settings

log = logging.getLogger("opensora")

SD3_PADDED_TOKENS = 77  # CLIPLoader type sd3 pads T5 prompts to this many tokens (and attends to the pads)
__all__ = ["ADAPTERS", "NULL_KEY", "SETTINGS_KEY", "MMDiTAdapter", "STDiTAdapter", "VideoSettings", "adapter_for"]


# ---------------------------------------------------------------------------
# Captions from ComfyUI conditioning
# ---------------------------------------------------------------------------


def caption_from_conditioning(cross_attn: torch.Tensor, attention_mask: torch.Tensor | None,
                              length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's (B, n, C) T5 output (+ optional (B, n) mask) -> y (B, L, C) float32 padded with zeros and
    the token mask (B, L) int64, as Open-Sora's T5 wrapper pads to L. Valid tokens beyond L are refused:
    cutting them after encoding differs from Open-Sora's T5, which truncates the tokens before encoding."""
    batch, tokens, channels = cross_attn.shape
    mask = torch.ones(batch, tokens, dtype=torch.long) if attention_mask is None else attention_mask.long().cpu()
    mask = mask.reshape(batch, -1)
    valid = int(mask.sum(1).max())
    if valid > length or (tokens > length and bool(mask[:, length:].any())):
        raise ValueError(
            f"the prompt has {valid} T5 tokens but the model takes {length}; shorten it, or encode it with "
            f"Open-Sora Text Encode (it cuts the tokens to {length} before encoding, as Open-Sora does)"
        )
    if attention_mask is None and tokens == SD3_PADDED_TOKENS:
        log.warning("conditioning has exactly %d T5 tokens and no attention mask: if it comes from CLIPLoader type "
                    "sd3, the pads are attended; add T5TokenizerOptions (min_padding 0, min_length 1) before "
                    "CLIPTextEncode, or use type pixart", SD3_PADDED_TOKENS)
    y = cross_attn.new_zeros(batch, length, channels, dtype=torch.float32)
    keep = min(tokens, length)
    y[:, :keep] = cross_attn[:, :keep].float()
    out_mask = torch.zeros(batch, length, dtype=torch.long)
    out_mask[:, :keep] = mask[:, :keep]
    return y, out_mask.to(cross_attn.device)


def frame_ratio(denoise_mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's denoise mask (B, C, T, h, w) -> Open-Sora's per-frame mask (B, T) (1 generate, 0 keep,
    r in between: edit). A mask that varies inside a frame is refused: Open-Sora conditions whole frames."""
    if denoise_mask.ndim != 5:
        raise ValueError(f"noise_mask: expected a video mask (B, C, T, h, w), got shape {tuple(denoise_mask.shape)}")
    flat = denoise_mask.float().flatten(3)  # (B, C, T, h*w)
    if bool((flat.amax((1, 3)) - flat.amin((1, 3)) > 1e-6).any()):
        raise ValueError(
            "noise_mask varies inside a frame; Open-Sora keeps or generates whole latent frames: build the latent "
            "with Open-Sora References to Latent (or a mask constant per frame)"
        )
    return flat[:, 0, :, 0]


# ---------------------------------------------------------------------------
# The adapter of STDiT2 / STDiT3
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class STDiTAdapter:
    """Open-Sora v1.2 (STDiT3, rectified flow: the model predicts data - noise) and v1.1 (STDiT2, IDDPM:
    noise and a learned variance, guidance on 3 of 4 channels)."""

    family: Family

    @property
    def flow(self) -> bool:
        return self.family.sampler.name == "rflow"

    @property
    def model_type(self) -> str:
        return "FLOW" if self.flow else "EPS"

    @property
    def sampling_settings(self) -> dict:
        if self.flow:  # shift 1 until the settings node sets the output size's shift; t = 1000 * sigma
            return {"shift": 1.0, "multiplier": 1000}
        # IDDPM's linear betas (ComfyUI's "linear" squares sqrt-spaced betas; "sqrt_linear" is linear in beta)
        return {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 0.02}

    @property
    def geometry(self) -> LatentGeometry:
        return self.family.geometry

    # -- conditioning -----------------------------------------------------------------------------------

    def conds(self, model: nn.Module, *, cross_attn: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, denoise_mask: torch.Tensor | None = None,
              device: torch.device | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Tensors the model reads: ``y`` (B, L, C), ``y_mask`` (B, L) and, with a denoise mask, the per-frame
        ``frame_ratio`` (B, T). ``kwargs[NULL_KEY]``: the learned null caption under the prompt's mask."""
        if cross_attn is None:
            raise ValueError("the conditioning holds no T5 output; connect Open-Sora Text Encode's conditioning "
                             "or CLIPTextEncode with a T5 from 'Load CLIP' (type pixart or sd3)")
        length, _ = model.caption_shape
        y, mask = caption_from_conditioning(cross_attn, attention_mask, length)
        if kwargs.get(NULL_KEY):
            null = model.y_embedder.y_embedding.detach().to(y.device, torch.float32)  # (L, C)
            y = null[None].expand(y.shape[0], -1, -1).clone()
        out = {"y": y, "y_mask": mask}
        if denoise_mask is not None:
            out["frame_ratio"] = frame_ratio(denoise_mask).to(torch.float32)
        return {k: (v if device is None else v.to(device)) for k, v in out.items()}

    # -- the model call ---------------------------------------------------------------------------------

    def predict(self, model: nn.Module, x: torch.Tensor, timestep: torch.Tensor, sigma: torch.Tensor,
                conds: dict, options: dict) -> torch.Tensor:
        """x: the model input (ComfyUI's ``calculate_input``), timestep on the model's scale (0..1000) ->
        the prediction ComfyUI expects: noise - data (flow) or noise (eps), (B, C, T, h, w) float32."""
        settings = self.settings(options, x)
        args = model.model_args(x.shape[0], settings.height, settings.width, settings.num_frames, settings.fps,
                                device=x.device)
        ratio = conds.get("frame_ratio")
        x_mask = None if ratio is None else self.free_frames(ratio.to(x.device), sigma, timestep)
        out = model(x, timestep, conds["y"][:, None], mask=conds["y_mask"], x_mask=x_mask, **args)
        out = out[:, : model.in_channels].float()  # the prediction (drop the learned variance)
        return -out if self.flow else out

    def free_frames(self, ratio: torch.Tensor, sigma: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: frames the model generates at this step (the rest are kept references, modulated with
        timestep 0). v1.2: ratio * 1000 >= t (opensora/schedulers/rf, RFLOW.sample); v1.1: ratio * 1000 > t,
        the sigma form of IDDPM's int(mask * steps) > step index (exact for masks 0 and 1)."""
        t = timestep.reshape(-1, 1).float()
        scaled = ratio.float() * 1000
        return scaled >= t if self.flow else scaled > t

    def settings(self, options: dict, x: torch.Tensor) -> VideoSettings:
        """The settings node's values (checked against the latent), else a guess from the latent (warned)."""
        return video_settings(options, x, self.geometry, self.family.defaults.fps)

    def latent_channels(self, model: nn.Module) -> int:
        return model.in_channels

    # -- the schedule -----------------------------------------------------------------------------------

    def shift(self, settings: VideoSettings, args_dtype: torch.dtype, scale: float = 1.0) -> float | None:
        """v1.2: the timestep transform's shift for the video (``args_dtype`` bf16 rounds as official bf16
        inference does) times ``scale`` (official 1.0); v1.1: None (a discrete schedule, nothing to shift)."""
        if not self.flow:
            if scale != 1.0:
                raise ValueError(f"shift_scale: {self.family.title} samples a discrete IDDPM schedule with no shift; "
                                 "set it to 1.0")
            return None
        return transform_shift(settings.height, settings.width, settings.num_frames, args_dtype=args_dtype,
                               scale=scale)

    def sigmas(self, sampling, steps: int, settings: VideoSettings | None) -> torch.Tensor:
        """The official schedule as SIGMAS: v1.2 t = (1 - i/steps) * 1000 through the model's shift; v1.1 the
        respaced IDDPM timesteps. Ends in 0."""
        if self.flow:
            times = rflow_timesteps(steps)  # (steps + 1,) on 0..1000, ending in 0
        else:
            lowest = self.family.sampler.step_range[0]
            if steps < lowest:
                raise ValueError(f"steps must be at least {lowest} for {self.family.title} (IDDPM), got {steps}")
            times = torch.tensor(sorted(space_timesteps(DIFFUSION_STEPS, [steps]), reverse=True) + [0],
                                 dtype=torch.float32)
        sigmas = sampling.sigma(times).float()
        sigmas[-1] = 0.0
        return sigmas

    # -- model options ----------------------------------------------------------------------------------

    def denoise_mask_function(self) -> Callable:
        """ComfyUI's ``denoise_mask_function(sigma, denoise_mask, extra_options)``: the frame rule turned into
        a binary mask per step, so ``KSamplerX0Inpaint`` pins kept frames and lets free ones be sampled."""

        def rule(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict) -> torch.Tensor:
            sampling = extra_options["model"].inner_model.model_sampling
            timestep = sampling.timestep(sigma).float()
            free = self.free_frames(denoise_mask.flatten(3)[:, 0, :, 0], sigma, timestep)  # (B, T)
            return free[:, None, :, None, None].to(denoise_mask.dtype).expand_as(denoise_mask)

        return rule

    def cfg_function(self) -> Callable | None:
        """v1.1 guides 3 of the 4 noise channels (``cfg_channel = 3``); the 4th comes from the prompt pass.
        ComfyUI's ``sampler_cfg_function`` works on x - denoised, which is linear in the noise per channel."""
        channels = self.family.sampler.guidance_channels
        if channels is None:
            return None

        def guide(args: dict) -> torch.Tensor:
            cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
            guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
            return torch.cat([guided, cond[:, channels:]], dim=1)

        return guide

    def memory_bytes(self, model: nn.Module, input_shape) -> int:
        """Activation bytes of one forward over ``input_shape`` (N, C, T, h, w) (a measured estimate:
        ``STDiTBase.forward_memory_bytes``, ``benchmarks/native_memory.py``)."""
        return model.forward_memory_bytes(int(input_shape[0]), tuple(int(n) for n in input_shape[2:]))


ADAPTERS: dict[str, Callable[[Family], STDiTAdapter | MMDiTAdapter]] = {  # family name -> adapter factory
    "opensora-v1.2": STDiTAdapter,
    "opensora-v1.1": STDiTAdapter,
    "opensora-v2.0": MMDiTAdapter,  # nodes/native_mmdit.py
}


def adapter_for(family: Family):
    """The native adapter of a family; families without one run in the Open-Sora Sampler node only."""
    if family.name not in ADAPTERS:
        native = ", ".join(ADAPTERS)
        raise ValueError(
            f"{family.model.class_name} ({family.title}) has no native ComfyUI MODEL (native: {native}); load it "
            "with the Open-Sora Model Loader and sample with the Open-Sora Sampler"
        )
    return ADAPTERS[family.name](family)
