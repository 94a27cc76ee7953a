"""``opensora-generate``: prompt(s) -> MP4 (or PNG for one frame) with the same code the nodes run.

Every input is checked before any weights are loaded: sizes, frame counts, the mask
strategy against the references, reference files, and that the VAE belongs to the model
(both read from the checkpoint headers only). Prompts may carry official per-prompt options,
``text{"reference_path": "a.png;b.mp4", "mask_strategy": "0;0,1,0,-1,1"}``, and per-round
texts for loops, ``|0|text|2|text``.

``--demo`` uses the small model shipped in the repository's ``demo/`` folder (no downloads) with the
settings it was trained for; without ``--prompt`` it animates the demo's first frame (image-to-video).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import geometry, media
from ..checkpoints import DTYPES, CheckpointError, detect_family, read_checkpoint, trained_score_phrases
from ..pipeline import FAMILIES, Components, GenerationSpec, check_vae_fits, generate, plan_generation
from ..text.prompts import parse_prompt_options

log = logging.getLogger("opensora")

VAE_GEOMETRY = {"VideoAutoencoderPipeline": geometry.VAE_V1_2, "AutoencoderKL": geometry.PER_FRAME}


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opensora-generate", description=__doc__.split("\n\n")[0])
    files = p.add_argument_group("model files")
    files.add_argument("--model", help="STDiT/STDiT2/STDiT3 checkpoint (.safetensors, HF folder or .pth)")
    files.add_argument("--vae", help="VAE v1.2 (for STDiT3) or SD-VAE (for STDiT/STDiT2)")
    files.add_argument("--text-encoder", help="T5 folder, or a single t5xxl .safetensors with --tokenizer")
    files.add_argument("--tokenizer", help="T5 tokenizer folder (needed for a single-file T5)")
    files.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                       help="merge a LoRA (opensora-train export) into the model; repeatable")
    files.add_argument("--demo", action="store_true",
                       help="the demo model shipped in demo/ and its settings (64x64, 17 frames, 8 fps); without "
                            "--prompt: image-to-video of demo/inputs/opensora_demo_first_frame.png. Other options still override.")

    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt", action="append", default=[], help="prompt (repeatable); see above for options")
    what.add_argument("--prompt-file", help="text file with one prompt per line")
    what.add_argument("--reference", action="append", default=[], help="reference image/video (repeatable; ref_id = order)")
    what.add_argument("--mask-strategy", default="", help="loop_id,ref_id,ref_start,target_start,length[,edit_ratio];...")
    what.add_argument("--pixel-positions", action="store_true", help="frame numbers in --mask-strategy are pixel frames")
    what.add_argument("--negative-prompt", help="instead of the model's learned null caption")

    size = p.add_argument_group("size and length")
    size.add_argument("--resolution", default="240p", help=f"preset: {', '.join(geometry.resolutions())}")
    size.add_argument("--aspect-ratio", default="9:16", help="H:W preset, e.g. 9:16 (landscape), 1:1, 16:9 (portrait)")
    size.add_argument("--height", type=int, help="pixel height (overrides --resolution/--aspect-ratio with --width)")
    size.add_argument("--width", type=int, help="pixel width")
    size.add_argument("--num-frames", type=int, help="pixel frames (default 51 for v1.2, 16 for v1.1/v1.0)")
    size.add_argument("--duration", help=f"named length instead of --num-frames: {', '.join(geometry.named_durations())}")
    size.add_argument("--fps", type=float, default=24.0, help="fps the model is conditioned on")
    size.add_argument("--save-fps", type=float, help="fps of the written video (default: fps / frame interval)")

    run = p.add_argument_group("sampling")
    run.add_argument("--steps", type=int, help="sampling steps (default 30 for v1.2, 100 for v1.1/v1.0)")
    run.add_argument("--cfg-scale", type=float, default=7.0)
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--loops", type=int, default=1, help="rounds of infinite extension")
    run.add_argument("--condition-frame-length", type=int, help="latent frames each round continues from (5 / 4)")
    run.add_argument("--condition-frame-edit", type=float, default=0.0)
    run.add_argument("--align", type=int, help="snap strategy starts to multiples of this (official v1.2: 5)")
    run.add_argument("--aesthetic-score", type=float, help="default 6.5 for v1.2 (none for v1.1/v1.0)")
    run.add_argument("--no-aesthetic-score", action="store_true")
    run.add_argument("--motion-score", type=float)
    run.add_argument("--camera-motion")

    dev = p.add_argument_group("device")
    dev.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    dev.add_argument("--dtype", choices=sorted(DTYPES), help="model and VAE dtype (default bf16 on GPU, fp32 on CPU)")
    dev.add_argument("--t5-dtype", choices=sorted(DTYPES), help="T5 dtype (default bf16 on GPU, fp32 on CPU)")
    dev.add_argument("--tile", action="store_true", help="decode in spatial tiles (less memory)")

    p.add_argument("--output", "-o", default="outputs/sample.mp4", help="output file; with several prompts, _0, _1, ... are added")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--demo`` fills in the demo files and settings the user did not give."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        from ..demo import load_demo

        demo = load_demo()
        parser.set_defaults(
            model=str(demo.model), vae=str(demo.vae), text_encoder=str(demo.text_encoder), height=demo.height,
            width=demo.width, num_frames=demo.num_frames, fps=demo.fps, steps=demo.steps, cfg_scale=demo.cfg_scale,
            seed=demo.seed, condition_frame_length=demo.condition_frame_length, no_aesthetic_score=True,
            output="outputs/demo.mp4",
        )
        args = parser.parse_args(argv)
        if not args.prompt and not args.prompt_file:  # the demo job: animate the shipped first frame
            args.prompt = [demo.prompt]
            args.reference = args.reference or [str(demo.reference)]
            args.mask_strategy = args.mask_strategy or "0"
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "vae", "text_encoder") if not getattr(args, name)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --demo for the shipped demo model)")
    return args


@dataclass
class Job:
    """One prompt to render and where."""

    prompt: str
    references: list[Path]
    mask_strategy: str
    output: Path


def collect_jobs(args: argparse.Namespace) -> list[Job]:
    prompts = list(args.prompt)
    if args.prompt_file:
        prompts += [line.strip() for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt given: use --prompt TEXT or --prompt-file FILE")
    out = Path(args.output)
    jobs = []
    for index, raw in enumerate(prompts):
        options = parse_prompt_options(raw)
        refs = options.reference_path.split(";") if options.reference_path else list(args.reference)
        strategy = options.mask_strategy if options.mask_strategy is not None else args.mask_strategy
        path = out if len(prompts) == 1 else out.with_name(f"{out.stem}_{index}{out.suffix}")
        jobs.append(Job(options.text, [Path(r) for r in refs if r], strategy, path))
    return jobs


def resolve_size(args: argparse.Namespace, release: str) -> tuple[int, int, int]:
    """(height, width, num_frames) from explicit values or presets."""
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither (then --resolution and --aspect-ratio apply)")
    height, width = (args.height, args.width) if args.height else geometry.image_size(args.resolution, args.aspect_ratio)
    if args.duration and args.num_frames:
        raise ValueError("give --num-frames or --duration, not both")
    if args.duration:
        frames = geometry.num_frames_from_duration(args.duration)
    else:
        frames = args.num_frames or (51 if release == "v1.2" else 16)
    return height, width, frames


def make_spec(args: argparse.Namespace, job: Job, size: tuple[int, int, int],
              trained_phrases: tuple[str, ...] | None = None) -> GenerationSpec:
    """``trained_phrases``: the score phrases the model's training captions carried, when its file says
    (a fine-tune by opensora-train); the default aesthetic phrase is then appended only if they did."""
    height, width, frames = size
    aesthetic = None if args.no_aesthetic_score else (args.aesthetic_score if args.aesthetic_score is not None else "auto")
    if aesthetic == "auto" and trained_phrases is not None and "aesthetic score:" not in trained_phrases:
        aesthetic = None
    return GenerationSpec(
        prompts=[job.prompt], height=height, width=width, num_frames=frames, fps=args.fps, steps=args.steps,
        cfg_scale=args.cfg_scale, seed=args.seed, mask_strategy=job.mask_strategy, pixel_positions=args.pixel_positions,
        loops=args.loops, condition_frame_length=args.condition_frame_length,
        condition_frame_edit=args.condition_frame_edit, align=args.align, aesthetic_score=aesthetic,
        motion_score=args.motion_score, camera_motion=args.camera_motion,
        negative_prompts=[args.negative_prompt] if args.negative_prompt else None, save_fps=args.save_fps,
    )


# ---------------------------------------------------------------------------
# Checks before any heavy work
# ---------------------------------------------------------------------------


def parse_lora(value: str) -> tuple[Path, float]:
    """``path`` or ``path:strength``."""
    path, _, strength = value.rpartition(":")
    try:
        return Path(path), float(strength)
    except ValueError:
        return Path(value), 1.0


def check_files(args: argparse.Namespace, jobs: list[Job]) -> tuple[str, str]:
    """Model family and VAE family from the checkpoint headers; reference files exist and decode."""
    model_family = detect_family(read_checkpoint(args.model).state_dict)
    if model_family not in FAMILIES:
        raise CheckpointError(f"--model {args.model}: not an Open-Sora diffusion transformer (found {model_family})")
    vae_family = detect_family(read_checkpoint(args.vae).state_dict)
    if vae_family not in VAE_GEOMETRY:
        raise CheckpointError(f"--vae {args.vae}: not a VAE file (found {vae_family})")
    check_vae_fits(FAMILIES[model_family], VAE_GEOMETRY[vae_family])
    for path, _ in map(parse_lora, args.lora):
        if not path.is_file():
            raise FileNotFoundError(f"--lora {path}: not found")
    if not Path(args.text_encoder).exists():
        raise FileNotFoundError(f"--text-encoder {args.text_encoder}: not found")
    for job in jobs:
        for ref in job.references:
            if not ref.is_file():
                raise FileNotFoundError(f"reference file not found: {ref}")
            media.probe(ref)  # raises MediaError naming the file if it cannot be decoded
    return model_family, vae_family


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def load_components(args: argparse.Namespace, device: torch.device) -> Components:
    from ..checkpoints import load_dit
    from ..lora import merge_lora
    from ..text.t5 import load_t5_encoder
    from ..vae import load_vae

    on_gpu = device.type != "cpu"
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    t5_dtype = DTYPES[args.t5_dtype or ("bf16" if on_gpu else "fp32")]
    loaded = load_dit(args.model, dtype=dtype, device=device)
    log.info("model: %s (%s) from %s", loaded.class_name, loaded.preset or "custom size", args.model)
    for path, strength in map(parse_lora, args.lora):
        merged = merge_lora(loaded.model, path, strength)
        log.info("merged LoRA %s (%d layers, strength %g)", path, len(merged), strength)
    vae = load_vae(args.vae, dtype=dtype, device=device)
    max_length = loaded.model.y_embedder.y_embedding.shape[0]
    text = load_t5_encoder(args.text_encoder, args.tokenizer, max_length=max_length, dtype=t5_dtype, device=device)
    return Components(loaded.model, vae, text)


def _progress(quiet: bool):
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", desc="sampling", file=sys.stderr)

    def callback(info: dict) -> None:
        bar.total = info["steps"]
        bar.set_postfix_str(f"round {info['round'] + 1}/{info['rounds']}")
        bar.update(info["step"] - bar.n)

    return bar, callback


def run(args: argparse.Namespace) -> list[Path]:
    jobs = collect_jobs(args)
    model_family, _ = check_files(args, jobs)
    family = FAMILIES[model_family]
    size = resolve_size(args, family.release)
    phrases = trained_score_phrases(args.model)
    if phrases is not None and "aesthetic score:" not in phrases and args.aesthetic_score is None:
        log.info("%s was fine-tuned on captions without an aesthetic score: none is appended "
                 "(--aesthetic-score adds one)", args.model)
    specs = [make_spec(args, job, size, phrases) for job in jobs]
    for job, spec in zip(jobs, specs, strict=True):
        plan_generation(family, spec, [media.probe(r).num_frames for r in job.references])
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    components = load_components(args, device)
    written = []
    for job, spec in zip(jobs, specs, strict=True):
        refs = [media.read_frames(r)[0] for r in job.references]
        bar, callback = _progress(args.quiet)
        try:
            result = generate(components, spec, refs, tiling=_tiling(args), callback=callback)
        finally:
            if bar is not None:
                bar.close()
        path = media.save_output(result.frames[0], job.output, result.fps)
        print(f"wrote {path.resolve()} ({result.frames.shape[1]} frames, {result.frames.shape[2]}x{result.frames.shape[3]}, "
              f"{result.fps:g} fps)")
        written.append(path)
    return written


def _tiling(args: argparse.Namespace):
    if not args.tile:
        return None
    from ..vae import TilingOptions

    return TilingOptions()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except FileNotFoundError as err:  # --demo without the demo folder
        print(f"opensora-generate: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"opensora-generate: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
