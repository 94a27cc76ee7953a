"""Open-Sora v1.2 end to end on one CUDA GPU: seconds and peak GPU memory per stage, next to the official figures.

    python benchmarks/gpu.py                    # 480p 2s and 720p 4s, bf16, 30 rectified-flow steps
    python benchmarks/gpu.py --runs 720p-4s --attention sage --compile
    python benchmarks/gpu.py --dry-run          # the same code path on the CPU with tiny models (a test runs it)

Models: the released architectures with random weights (the figures do not depend on the values):
STDiT3-XL/2 (1.1 B parameters), the VAE v1.2, and a T5-XXL encoder (4.7 B) with random weights that
reads byte-level token ids of the prompt (nothing to download). Everything in bf16.

The run goes through the project's own generation pipeline (``opensora_core.pipeline.generate``): plan,
T5 encoding, rectified-flow sampling with classifier-free guidance as one batch of 2, VAE decode. Each
module lives on the CPU and is moved to the GPU for its stage only (the T5 is gone from the GPU before
sampling starts: "T5 offloaded"); the VAE decodes one frame at a time, in 512-pixel tiles with linear
blending (``TilingOptions()``; ``--untiled`` decodes as the official code does). Per stage the script
prints wall seconds (CUDA-synchronised, transfers included), the peak of allocated GPU memory, and the
shape-based estimate of that peak (weights + the model's ``sampling_memory_bytes`` / the VAE's
``decode_memory_bytes``).

Options that trade speed for memory: ``--untiled`` (faster decode, more memory), ``--attention sage``
(SageAttention for the unmasked self-attention, when the ``sageattention`` package is installed),
``--compile`` (``torch.compile`` of the DiT; the first step includes the compilation).

Official figures (Open-Sora v1.2 report, one H100, T5 offloaded): 480p 2s 29 s / 31 GB, 720p 4s 130 s /
39 GB. Targets here: 720p 4s <= 100 s and <= 24 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from opensora_core import pipeline  # noqa: E402
from opensora_core.geometry import image_size, num_frames_from_duration  # noqa: E402
from opensora_core.models import layers  # noqa: E402
from opensora_core.models.stdit3 import STDiT3, STDiT3Config  # noqa: E402
from opensora_core.text.t5 import T5TextEncoder  # noqa: E402
from opensora_core.vae import AutoencoderKLConfig, TemporalVAEConfig, TilingOptions, VideoAutoencoderPipeline  # noqa: E402

OFFICIAL = {"480p-2s": (29.0, 31.0), "720p-4s": (130.0, 39.0)}  # seconds, GB on one H100
TARGETS = {"720p-4s": (100.0, 24.0)}
PROMPT = "a red panda eating bamboo in a misty forest, cinematic lighting, slow camera pan"
GB = 1e9


@dataclass
class Setup:
    """What one benchmark configuration builds."""

    dit: STDiT3Config
    vae_spatial: AutoencoderKLConfig | None  # None: the released architecture
    vae_temporal: TemporalVAEConfig | None
    t5: dict  # transformers T5Config kwargs
    runs: dict[str, tuple[int, int, int]]  # name -> (height, width, pixel frames)
    steps: int = 30


FULL = Setup(
    dit=STDiT3.PRESETS["STDiT3-XL/2"],
    vae_spatial=None,
    vae_temporal=None,
    t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu"),  # google/t5-v1_1-xxl
    runs={"480p-2s": (*image_size("480p", "9:16"), num_frames_from_duration("2s")),
          "720p-4s": (*image_size("720p", "9:16"), num_frames_from_duration("4s"))},
)
DRY = Setup(  # tiny widths, every architecture setting that decides the code path kept
    dit=dataclasses.replace(STDiT3.PRESETS["STDiT3-XL/2"], hidden_size=64, depth=1, num_heads=4, caption_channels=32),
    vae_spatial=AutoencoderKLConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4),
    vae_temporal=TemporalVAEConfig(filters=8, num_res_blocks=1, channel_multipliers=(1, 2, 2, 2),
                                   temporal_downsample=(False, True, True), num_groups=4),
    t5=dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu"),
    runs={"64x112-17": (64, 112, 17)},
    steps=2,
)


# ---------------------------------------------------------------------------------------------------
# Random-weight models
# ---------------------------------------------------------------------------------------------------


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fan-in scaled normal weights, zero biases, unit norm gains (activations stay O(1))."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * p[0].numel() ** -0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    return module


def build_dit(setup: Setup, dtype: torch.dtype) -> STDiT3:
    with torch.device("meta"):
        model = STDiT3(setup.dit)
    model = model.to_empty(device="cpu")
    model.initialize_weights()  # tables, null caption and RoPE frequencies as the release has them
    return randomise_(model).to(dtype).eval().requires_grad_(False)


def build_vae(setup: Setup, dtype: torch.dtype) -> VideoAutoencoderPipeline:
    from opensora_core.families import build_model

    with torch.device("meta"):
        if setup.vae_spatial is None:
            vae = build_model("VideoAutoencoderPipeline", released_vae_config())
        else:
            vae = VideoAutoencoderPipeline(setup.vae_spatial, setup.vae_temporal)
    vae = vae.to_empty(device="cpu")
    scale, shift = released_vae_config()["scale"], released_vae_config()["shift"]
    with torch.no_grad():
        vae.scale.copy_(torch.tensor(scale).view_as(vae.scale))
        vae.shift.copy_(torch.tensor(shift).view_as(vae.shift))
    return randomise_(vae).to(dtype).eval().requires_grad_(False)


def released_vae_config() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vae_memory import RELEASED_CONFIG

    return RELEASED_CONFIG


def build_text_encoder(setup: Setup, dtype: torch.dtype) -> T5TextEncoder:
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**setup.t5))
    model = randomise_(model.to_empty(device="cpu")).to(dtype)
    return T5TextEncoder(model, ByT5Tokenizer(), max_length=setup.dit.model_max_length)


# ---------------------------------------------------------------------------------------------------
# Stages: move in, time, measure, move out
# ---------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    seconds: float
    peak_bytes: int | None  # allocated GPU memory (None on the CPU)
    estimate_bytes: int


class MeasuredOffload:
    """A pipeline placement that keeps every module on the CPU between its stages and records each stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stages: list[Stage] = []

    @contextlib.contextmanager
    def use(self, module: nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        module.to(self.device)
        try:
            yield self.device
        finally:
            if cuda:
                torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() if cuda else None
            seconds = time.perf_counter() - start
            module.to("cpu")
            if cuda:
                torch.cuda.empty_cache()
            weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
            self.stages.append(Stage(type(module).__name__, seconds, peak, weights + working_memory))


def use_sage_attention() -> None:
    """SageAttention for the unmasked self-attention (the masked cross-attention stays on SDPA)."""
    from sageattention import sageattn

    sdpa = layers.attention

    def attention(q, k, v, key_mask=None):
        if key_mask is not None or q.device.type != "cuda":
            return sdpa(q, k, v, key_mask)
        return sageattn(q, k, v, tensor_layout="HND", is_causal=False)

    layers.attention = attention
    sys.modules["opensora_core.models.captions"].attention = attention


def run(components: pipeline.Components, size: tuple[int, int, int], steps: int, tiling) -> list[Stage]:
    placement = components.placement
    placement.stages = []
    height, width, num_frames = size
    spec = pipeline.GenerationSpec(prompts=[PROMPT], height=height, width=width, num_frames=num_frames,
                                   steps=steps, seed=0)
    start = time.perf_counter()
    with torch.inference_mode():
        pipeline.generate(components, spec, tiling=tiling)
    total = time.perf_counter() - start
    return [*placement.stages, Stage("total", total, max((s.peak_bytes or 0) for s in placement.stages) or None,
                                     max(s.estimate_bytes for s in placement.stages))]


def report(name: str, stages: list[Stage]) -> None:
    official = OFFICIAL.get(name)
    print(f"\n{name}" + (f"   (official, one H100: {official[0]:.0f} s, {official[1]:.0f} GB)" if official else ""))
    print(f"  {'stage':26s} {'seconds':>8s} {'peak GB':>8s} {'estimate GB':>12s}")
    for s in stages:
        peak = "n/a" if s.peak_bytes is None else f"{s.peak_bytes / GB:.2f}"
        print(f"  {s.name:26s} {s.seconds:8.1f} {peak:>8s} {s.estimate_bytes / GB:12.2f}")
    if name in TARGETS and stages[-1].peak_bytes is not None:
        seconds, gb = TARGETS[name]
        total = stages[-1]
        print(f"  target <= {seconds:.0f} s and <= {gb:.0f} GB: {total.seconds:.1f} s, {total.peak_bytes / GB:.2f} GB -> "
              f"{'met' if total.seconds <= seconds and total.peak_bytes <= gb * GB else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the code path")
    parser.add_argument("--runs", help=f"comma-separated subset of {', '.join(FULL.runs)}")
    parser.add_argument("--steps", type=int, help="sampling steps (default 30)")
    parser.add_argument("--untiled", action="store_true", help="decode without tiles (the official way)")
    parser.add_argument("--attention", choices=["sdpa", "sage"], default="sdpa")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "`--dry-run` checks the code path on the CPU with tiny models.")
        return 2
    setup = DRY if args.dry_run else FULL
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.bfloat16
    if args.attention == "sage":
        use_sage_attention()
    model = build_dit(setup, dtype)
    if args.compile:
        model.forward = torch.compile(model.forward)
    components = pipeline.Components(model=model, vae=build_vae(setup, dtype),
                                     text_encoder=build_text_encoder(setup, dtype), placement=MeasuredOffload(device))
    tiling = None if args.untiled else TilingOptions()
    names = args.runs.split(",") if args.runs else list(setup.runs)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (dry run)'}, bf16, "
          f"{args.steps or setup.steps} steps, decode {'untiled' if args.untiled else 'tiled'}, attention "
          f"{args.attention}{', compiled' if args.compile else ''}")
    for name in names:
        if name not in setup.runs:
            parser.error(f"unknown run {name!r}; choose from {', '.join(setup.runs)}")
        report(name, run(components, setup.runs[name], args.steps or setup.steps, tiling))
    return 0


if __name__ == "__main__":
    sys.exit(main())
