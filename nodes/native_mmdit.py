"""Open-Sora 2.0 (MMDiT, Hunyuan VAE latent) as a native ComfyUI MODEL: the family's ``NativeAdapter``.

No ComfyUI imports (plain torch; ``nodes/native_v2_nodes.py`` holds the GUIDER that subclasses ComfyUI's).
How the official sampler (``opensora_core.sampling.v2``) maps onto ComfyUI:

* model sampling: ``FLOW`` (CONST: x = (1 - sigma) x0 + sigma noise, the model predicts noise - x0, as the
  MMDiT's velocity does) with ``ModelSamplingDiscreteFlow``'s shift alpha t / (1 + (alpha - 1) t), the
  official shift formula; the settings node sets alpha = :func:`~opensora_core.sampling.v2.shift_alpha` of the
  tokens per latent frame and the latent frames, and the model reads sigma itself as its timestep (t in 0..1);
* conditioning: ComfyUI's ``cross_attn`` is the T5 states (all 512 tokens, no mask) and ``pooled_output`` the
  CLIP-L vector, as Open-Sora Text Encode gives them; the i2v condition (mask + reference latent,
  ``conditioning.v2.ConditionV2``) rides in the conditioning under :data:`CONDITION_KEY`, the model's
  ``cond`` input (zeros without it: t2v, and the guider's third pass);
* guidance: KSampler's CFG is the two-pass form (prompt vs negative, both with the image condition); the
  three passes with oscillation and the temporal image ramp are the GUIDER's (:func:`step_index`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..opensora_core.conditioning.v2 import ConditionV2, replace_reference_frames
from ..opensora_core.families import Family
from ..opensora_core.geometry import LatentGeometry
from ..opensora_core.geometry.opensora_v2 import latent_shape
from ..opensora_core.models.mmdit import pack, prepare_inputs, unpack
from ..opensora_core.sampling.v2 import get_schedule, shift_alpha
from .native_video import NULL_KEY, VideoSettings, video_settings

CONDITION_KEY = "opensora_v2_condition"  # conditioning entry: the i2v ConditionV2 (batch 1)
NEGATIVE_KEY = "opensora_v2_negative"  # conditioning entry of Text Encode: the encoded negative (txt, y_vec)


@dataclass(frozen=True)
class MMDiTAdapter:
    """Open-Sora 2.0: the MMDiT predicts the flow velocity noise - data from the packed latent, the T5
    states, the pooled CLIP vector and the condition channels (mask + reference latent)."""

    family: Family
    flow = True
    model_type = "FLOW"

    @property
    def sampling_settings(self) -> dict:
        return {"shift": 1.0, "multiplier": 1000}  # the settings node sets the video's shift

    @property
    def geometry(self) -> LatentGeometry:
        return self.family.geometry

    def latent_channels(self, model: nn.Module) -> int:
        return model.config.latent_channels  # 16 (the packed in_channels is 64)

    # -- conditioning -----------------------------------------------------------------------------------

    def conds(self, model: nn.Module, *, cross_attn: torch.Tensor | None = None,
              pooled_output: torch.Tensor | None = None, noise: torch.Tensor | None = None,
              device: torch.device | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """``txt`` (B, L, 4096), ``y_vec`` (B, 768) and ``cond`` (1, 1 + C, T, H, W): the condition's mask and
        reference latent, zeros when the conditioning holds none."""
        if cross_attn is None or pooled_output is None:
            raise ValueError("the conditioning holds no T5 states with a pooled CLIP vector; connect Open-Sora Text "
                             "Encode's conditioning (Open-Sora 2.0: T5 + CLIP-L)")
        channels = model.config.context_in_dim
        if cross_attn.shape[-1] != channels or pooled_output.shape[-1] != model.config.vec_in_dim:
            raise ValueError(f"conditioning: T5 states of width {cross_attn.shape[-1]} and a pooled vector of "
                             f"{pooled_output.shape[-1]}, the model takes {channels} and {model.config.vec_in_dim}; "
                             "encode with the model's T5-XXL and CLIP-L (Open-Sora Text Encode)")
        if kwargs.get(NULL_KEY):
            raise ValueError("negative: Open-Sora 2.0 has no learned null caption; its negative is the encoded empty "
                             "prompt: feed Open-Sora Null Conditioning from Open-Sora Text Encode's conditioning")
        if noise is None:
            raise ValueError("the sampler passed no latent to shape the condition channels")
        out = {"txt": cross_attn.float(), "y_vec": pooled_output.float(),
               "cond": condition_channels(kwargs.get(CONDITION_KEY), noise)}
        return {k: (v if device is None else v.to(device)) for k, v in out.items()}

    # -- the model call ---------------------------------------------------------------------------------

    def predict(self, model: nn.Module, x: torch.Tensor, timestep: torch.Tensor, sigma: torch.Tensor,
                conds: dict, options: dict) -> torch.Tensor:
        """x (B, C, T, H, W) at sigma -> the velocity noise - x0 (CONST's prediction), float32. The model
        reads sigma as its timestep (official t in 0..1; ``timestep`` is sigma * 1000)."""
        self.settings(options, x)  # refuses a latent of another size than the settings node's
        _, _, T, H, W = x.shape
        p = model.patch_size
        inputs = prepare_inputs(x, conds["txt"], conds["y_vec"], p)  # packed latent, ids, text rows
        rows = x.shape[0]
        t = sigma.reshape(-1).to(x.device, torch.float32).expand(rows)
        guidance = torch.full((rows,), self.family.defaults.cfg_scale, device=x.device)  # read only if distilled
        out = model(**inputs, timesteps=t, cond=pack(conds["cond"].to(x.device, x.dtype), p), guidance=guidance)
        return unpack(out, T, H, W, p).float()  # (B, C, T, H, W)

    def settings(self, options: dict, x: torch.Tensor) -> VideoSettings:
        return video_settings(options, x, self.geometry, self.family.defaults.fps)

    # -- the schedule -----------------------------------------------------------------------------------

    def shift(self, settings: VideoSettings, args_dtype: torch.dtype, scale: float = 1.0) -> float:
        """alpha of the official schedule for the video: (m S + b) sqrt(T) (``get_schedule``), in float32."""
        if scale != 1.0:
            raise ValueError("shift_scale: Open-Sora 2.0 samples with its official shift (set it to 1.0); "
                             "shift_scale is a v1.2 option")
        if args_dtype != torch.float32:
            raise ValueError("shift: Open-Sora 2.0 computes its shift in float32; choose 'exact' ('official bf16 "
                             "rounding' is v1.2's)")
        shape = latent_shape(1, settings.height, settings.width, settings.num_frames)
        return shift_alpha(shape.tokens_per_frame, shape.frames)

    def sigmas(self, sampling, steps: int, settings: VideoSettings | None) -> torch.Tensor:
        """The official times linspace(1, 0, steps + 1) shifted for the video (``get_schedule``), as SIGMAS."""
        if settings is None:
            raise ValueError("model: Open-Sora 2.0's schedule depends on the video; put Open-Sora Sampling Settings "
                             "between the loader and this node")
        shape = latent_shape(1, settings.height, settings.width, settings.num_frames)
        return torch.tensor(get_schedule(steps, shape.tokens_per_frame, shape.frames), dtype=torch.float32)

    # -- model options ----------------------------------------------------------------------------------

    def denoise_mask_function(self) -> Callable | None:
        return None  # no frame rule: the reference enters through the condition channels, not a noise mask

    def cfg_function(self) -> Callable | None:
        return None

    def memory_bytes(self, model: nn.Module, input_shape) -> int:
        """Activations and inputs of one forward over ``input_shape`` (rows, C, T, H, W): the shape model
        (``MMDiTModel.forward_memory_bytes``, ``opensora_core.models.mmdit_activations``)."""
        return model.forward_memory_bytes(int(input_shape[0]), tuple(int(n) for n in input_shape[2:]))


# ---------------------------------------------------------------------------
# The condition in the conditioning
# ---------------------------------------------------------------------------


def condition_channels(condition: ConditionV2 | None, noise: torch.Tensor) -> torch.Tensor:
    """(1, 1 + C, T, H, W) float32: cat(mask, masked reference) of ``condition`` (batch 1), or zeros."""
    _, channels, *size = noise.shape
    if condition is None:
        return torch.zeros(1, 1 + channels, *size)
    found = torch.cat((condition.masks, condition.masked_ref), dim=1).float().cpu()  # (1, 1 + C, T, H, W)
    if tuple(found.shape[1:]) != (1 + channels, *size):
        raise ValueError(f"conditioning: the reference condition is for a latent {tuple(found.shape[2:])} with "
                         f"{found.shape[1] - 1} channels, the sampled latent is {tuple(size)} with {channels}; give "
                         "Open-Sora 2.0 Image to Video the empty latent the sampler samples")
    return found


def condition_of(conditioning: list) -> ConditionV2 | None:
    """The i2v condition of a CONDITIONING (its first entry that holds one), or None."""
    return next((extras[CONDITION_KEY] for _, extras in conditioning if CONDITION_KEY in extras), None)


def without_condition(conditioning: list) -> list:
    """The CONDITIONING with its i2v condition removed (the guider's third pass: no text, no image)."""
    return [[cond, {k: v for k, v in extras.items() if k != CONDITION_KEY}] for cond, extras in conditioning]


def put_back_references(latent: torch.Tensor, condition: ConditionV2 | None) -> torch.Tensor:
    """The official last step: the i2v reference frames written into item 0 of the sampled latent."""
    if condition is None or condition.is_empty:
        return latent
    moved = dataclasses.replace(condition, references=[
        None if refs is None else [r.to(latent.device, latent.dtype) for r in refs] for refs in condition.references])
    return replace_reference_frames(latent.clone(), moved)


def step_index(sigmas: torch.Tensor, sigma: torch.Tensor) -> tuple[int, int]:
    """(step, steps) of ``sigma`` on the sampling run's grid ``sigmas`` (decreasing, ending in 0): the last step
    whose start is at or above sigma (exact for Euler, which evaluates at the grid's sigmas)."""
    grid = sigmas.flatten().float().cpu()
    value = float(sigma.flatten()[0])
    starts = int((grid[:-1] >= value - 1e-6 * max(1.0, abs(value))).sum())
    return max(starts - 1, 0), len(grid) - 1
