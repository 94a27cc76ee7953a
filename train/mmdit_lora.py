"""LoRA fine-tuning of the Open-Sora 2.0 MMDiT on one device, with a frozen bf16 or fp8 base.

The base stays frozen in the dtype it was loaded in (bf16, or fp8 e4m3fn weights with per-layer scales, which
:class:`LoRAOver` wraps just as well); only the low-rank adapters train, in float32. Activation checkpointing
recomputes each block in the backward pass, and block swap keeps only ``blocks_on_device`` blocks of frozen
weights on the device (the adapters stay there). The objective is the official 2.0 flow loss
(:class:`opensora_core.sampling.v2_losses.V2FlowObjective`). The file written is a ComfyUI-loadable LoRA
(``diffusion_model.<official path>.lora_A/lora_B/alpha``), which the Open-Sora LoRA Loader node and
``opensora-generate --lora`` merge into the model.

Data: clips with captions are encoded once up front (:func:`encode_clips`: the Hunyuan VAE's posterior sample,
T5 + CLIP-L of the caption with the training suffix " <fps> FPS."), then sampled round-robin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from opensora_core import media
from opensora_core.checkpoints import save_checkpoint
from opensora_core.lora import COMFY_PREFIX, METADATA_LORA, matches_target
from opensora_core.models.block_swap import enable_block_swap
from opensora_core.models.fp8 import Fp8Linear
from opensora_core.sampling.v2_losses import V2FlowObjective
from opensora_core.text import prompts_v2

log = logging.getLogger("opensora.train")

# Linear layers adapted in every block (official module-path suffixes): the attention projections and MLPs of
# both streams of the double blocks, and the single blocks' q/k, fused value+MLP input and output layers.
MMDIT_TARGETS = (
    "img_attn.q_proj", "img_attn.k_proj", "img_attn.v_proj", "img_attn.proj", "img_mlp.0", "img_mlp.2",
    "txt_attn.q_proj", "txt_attn.k_proj", "txt_attn.v_proj", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2",
    "single_blocks.*.q_proj", "single_blocks.*.k_proj", "v_mlp", "linear2",
)


@dataclass
class LoRAConfig:
    """What to train and how (the defaults are a small LoRA for one GPU)."""

    rank: int = 16
    alpha: float | None = None  # None: = rank (scale 1)
    targets: tuple[str, ...] = MMDIT_TARGETS
    learning_rate: float = 1e-4
    steps: int = 1000
    gradient_checkpointing: bool = True
    blocks_on_device: int | None = None  # block swap (None: every block on the device)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 1 or not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"rank and steps must be >= 1 and learning_rate > 0, got rank {self.rank}, "
                             f"steps {self.steps}, learning_rate {self.learning_rate}")


class LoRAOver(nn.Module):
    """A trainable low-rank branch over a frozen Linear-like layer (``nn.Linear`` or an fp8 ``Fp8Linear``):
    ``base(x) + lora_B(lora_A(x)) * alpha / rank``; ``lora_B`` starts at zero, so a fresh adapter changes
    nothing. The adapters are float32 and cast to the input's dtype when they run."""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = int(rank), float(rank if alpha is None else alpha)
        device = next(base.buffers(), next(base.parameters(), None)).device
        self.lora_A = nn.Linear(base.in_features, self.rank, bias=False, device=device)
        self.lora_B = nn.Linear(self.rank, base.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = nn.functional.linear(nn.functional.linear(x, self.lora_A.weight.to(x.dtype)),
                                      self.lora_B.weight.to(x.dtype))
        return self.base(x) + update * (self.alpha / self.rank)


def _target_paths(model: nn.Module, targets: Sequence[str]) -> list[str]:
    plain = tuple(t for t in targets if "*" not in t)
    wild = [t.split(".*.") for t in targets if "*" in t]
    paths = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Fp8Linear)):
            continue
        if matches_target(name, plain) or any(name.startswith(a + ".") and name.endswith("." + b) for a, b in wild):
            paths.append(name)
    return paths


def add_adapters(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze ``model`` and wrap every targeted layer in a :class:`LoRAOver`; returns the wrapped paths."""
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)  # the adapters' start, reproducible
    paths = _target_paths(model, config.targets)
    if not paths:
        raise ValueError(f"no Linear layer of {type(model).__name__} matches the LoRA targets {list(config.targets)}")
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, child, LoRAOver(getattr(parent, child), config.rank, config.alpha, generator=generator))
    return paths


def adapters(model: nn.Module) -> dict[str, LoRAOver]:
    """Official module path -> adapter (the path of the layer it wraps)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRAOver)}


def lora_file_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ComfyUI LoRA keys of the adapters: ``diffusion_model.<path>.lora_A.weight`` / ``lora_B`` / ``alpha``."""
    state = {}
    for path, m in adapters(model).items():
        key = f"{COMFY_PREFIX}{path}"
        state[f"{key}.lora_A.weight"] = m.lora_A.weight.detach().float().cpu().contiguous()
        state[f"{key}.lora_B.weight"] = m.lora_B.weight.detach().float().cpu().contiguous()
        state[f"{key}.alpha"] = torch.tensor(m.alpha)
    return state


def save_adapters(model: nn.Module, path: str | Path, config: LoRAConfig) -> Path:
    meta = {"rank": config.rank, "alpha": config.alpha or config.rank, "targets": list(config.targets),
            "model": "MMDiTModel"}
    return save_checkpoint(lora_file_state(model), Path(path), metadata={METADATA_LORA: str(meta)})


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass
class EncodedClip:
    """One training example: latent [1, C, T, H, W] (float32, the VAE's posterior sample), T5 states
    [1, L, C_txt] and pooled CLIP [1, C_vec], on the CPU."""

    latent: torch.Tensor
    txt: torch.Tensor
    y_vec: torch.Tensor
    caption: str = ""


@torch.no_grad()
def encode_clips(vae, text_encoder, clips: Iterable[tuple[torch.Tensor, str, float | None]], *, height: int,
                 width: int, num_frames: int, generator: torch.Generator) -> list[EncodedClip]:
    """(frames (T, H, W, 3) in 0..1, caption, fps) -> encoded examples: the first ``num_frames`` frames (4k+1)
    resized and centre-cropped to height x width, the caption with " <fps> FPS." (the 2.0 training suffix)."""
    from opensora_core.vae.posterior import gaussian_noise

    out = []
    for frames, caption, fps in clips:
        if frames.shape[0] < num_frames:
            raise ValueError(f"a clip has {frames.shape[0]} frames, fewer than num_frames {num_frames}; "
                             "drop it or lower num_frames")
        fitted = media.resize_cover_crop(frames[:num_frames], height, width, mode="bilinear")
        x = media.to_model_range(fitted).unsqueeze(0)  # (1, 3, T, H, W)
        latent = vae.encode(x, noise=gaussian_noise(generator)).float().cpu()
        text = prompts_v2.training_caption(caption.strip(), int(round(fps)) if fps else None)
        encoded = text_encoder.encode([text])
        out.append(EncodedClip(latent, encoded.txt.float().cpu(), encoded.y_vec.float().cpu(), text))
    return out


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


def prepare_model(model: nn.Module, config: LoRAConfig, device: torch.device | str) -> list[str]:
    """Adapters on, checkpointing as configured, the frozen base on the device or block-swapped."""
    paths = add_adapters(model, config)
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.blocks_on_device is None:
        model.to(device)
    else:
        if not config.gradient_checkpointing:
            raise ValueError("block swap in training needs gradient_checkpointing (the backward pass "
                             "recomputes each block, which copies it in again)")
        enable_block_swap(model, device, config.blocks_on_device, keep_trainable=True)
    for m in adapters(model).values():
        m.lora_A.to(device), m.lora_B.to(device)
    return paths


def train_lora(model: nn.Module, examples: Sequence[EncodedClip], config: LoRAConfig,
               device: torch.device | str = "cpu", *, log_every: int = 10) -> TrainResult:
    """Train adapters on ``examples`` (round-robin, batch 1) for ``config.steps`` steps; returns the losses."""
    if not examples:
        raise ValueError("no training examples")
    result = TrainResult(adapted=prepare_model(model, config, device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    objective = V2FlowObjective(patch_size=model.patch_size)
    generator = torch.Generator().manual_seed(config.seed)
    dtype = model.dtype
    model.train()
    for step in range(config.steps):
        ex = examples[step % len(examples)]
        loss = objective.loss(model, ex.latent.to(device, dtype), ex.txt.to(device, dtype),
                              ex.y_vec.to(device, dtype), generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step == 0:
            log.info("step %d/%d loss %.4f", step + 1, config.steps, result.losses[-1])
    model.eval()
    return result


__all__ = [
    "EncodedClip", "LoRAConfig", "LoRAOver", "MMDIT_TARGETS", "TrainResult", "adapters", "add_adapters",
    "encode_clips", "lora_file_state", "prepare_model", "save_adapters", "train_lora",
]
