"""``opensora-generate``: prompt(s) -> MP4 (or PNG for one frame) with the same code the nodes run.

Every registered family runs: Open-Sora v1.0-v1.2 (STDiT, T5) and Open-Sora-Plan v1.3 (OpenSoraT2V_v1_3 /
OpenSoraInpaint_v1_3 folders, the WF-VAE folder, an mT5 folder); the defaults (frames, size, steps, guidance,
prompt template, negative prompt) are the family's.

Every input is checked before any weights are loaded: sizes, frame counts, the mask
strategy against the references, reference files, and that the VAE belongs to the model
(both read from the checkpoint headers only). Prompts may carry official per-prompt options,
``text{"reference_path": "a.png;b.mp4", "mask_strategy": "0;0,1,0,-1,1"}``, and per-round
texts for loops, ``|0|text|2|text``.

Open-Sora 2.0 (``Open_Sora_v2.safetensors``, ``hunyuan_vae.safetensors``) takes T5 as ``--text-encoder`` and
CLIP-L as ``--clip``, references through ``--condition-type`` (i2v_head, i2v_tail, i2v_loop) and the memory
settings ``--fp8`` (fp8 weights) and ``--blocks-on-device N`` (block swap); ``--tile`` decodes in tiles.

``--demo`` uses the small model shipped in the repository's ``demo/`` folder (no downloads) with the
settings it was trained for; without ``--prompt`` it animates the demo's first frame (image-to-video).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import geometry, media
from ..checkpoints import CheckpointError, read_checkpoint, trained_score_phrases
from ..conditioning import LATENT, PIXEL, MaskGroup, parse_mask_strategy
from ..demo import load_demo
from ..dtypes import DTYPES
from ..families import Family, TextFile, describe, detect, families
from ..loading import load_dit, load_vae, model_family
from ..lora import merge_lora
from ..models.block_swap import enable_block_swap
from ..pipeline import SEED_RANGE, Components, GenerationSpec, Offload, check_vae_fits, generate, plan_generation
from ..text.prompts import AESTHETIC_PHRASE, parse_prompt_options
from ..vae import TilingOptions

log = logging.getLogger("opensora")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opensora-generate", description=__doc__.split("\n\n")[0])
    files = p.add_argument_group("model files")
    files.add_argument("--model", help="diffusion transformer: STDiT/STDiT2/STDiT3 checkpoint (.safetensors, HF "
                                       "folder or .pth) or an Open-Sora-Plan v1.3 folder (any93x640x640, "
                                       "any93x640x640_i2v)")
    files.add_argument("--preset", help="model preset, for a file that does not store its size (e.g. a renamed "
                                        "v1.0 .pth: STDiT-XL/2-16x512x512)")
    files.add_argument("--vae", help="VAE v1.2 (for STDiT3), SD-VAE (for STDiT/STDiT2) or the Open-Sora-Plan "
                                     "v1.3 vae/ folder (WF-VAE)")
    files.add_argument("--text-encoder", help="T5 (or mT5 for Open-Sora-Plan) folder, or a single .safetensors "
                                              "with --tokenizer")
    files.add_argument("--tokenizer", help="T5/mT5 tokenizer folder (needed for a single-file encoder)")
    files.add_argument("--clip", help="CLIP-L text encoder for Open-Sora 2.0: folder, or clip_l.safetensors with "
                                      "--clip-tokenizer")
    files.add_argument("--clip-tokenizer", help="CLIP tokenizer folder (needed for a single-file CLIP)")
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
    what.add_argument("--negative-prompt", help="text guided away from (default: Open-Sora v1.x's learned null "
                                                "caption; Open-Sora-Plan's release negative prompt; 2.0: the empty "
                                                "prompt)")
    what.add_argument("--no-prompt-template", action="store_true",
                      help="give the prompt to the text encoder as written (Open-Sora-Plan wraps it in its release "
                           "template 'high quality, high aesthetic, {}')")
    what.add_argument("--condition-type", help="Open-Sora 2.0: t2v (default), i2v_head (reference = first frame), "
                                               "i2v_tail (last frame), i2v_loop (first and last)")

    size = p.add_argument_group("size and length")
    size.add_argument("--resolution", help=f"preset: {', '.join(geometry.resolutions())} (v1.x); 256px, 768px "
                                           f"(2.0); default: {_default_sizes()}")
    size.add_argument("--aspect-ratio", help="v1.x: H:W preset, e.g. 9:16 (landscape, default), 1:1, 16:9 (portrait); "
                                             "2.0: W:H, 16:9 (landscape, default), 9:16, 1:1, 2.39:1")
    size.add_argument("--height", type=int, help="pixel height (overrides --resolution/--aspect-ratio with --width)")
    size.add_argument("--width", type=int, help="pixel width")
    size.add_argument("--num-frames", type=int, help=f"pixel frames (default: {_family_defaults('num_frames')})")
    size.add_argument("--duration", help=f"named length instead of --num-frames: {', '.join(geometry.named_durations())}")
    size.add_argument("--fps", type=float, help=f"fps the model is conditioned on (default: {_family_defaults('fps')})")
    size.add_argument("--save-fps", type=float, help="fps of the written video (default: fps / frame interval)")

    run = p.add_argument_group("sampling")
    run.add_argument("--steps", type=int, help=f"sampling steps (default: {_family_defaults('steps')})")
    run.add_argument("--cfg-scale", type=float, help=f"guidance scale (default: {_family_defaults('cfg_scale')})")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--loops", type=int, default=1, help="rounds of infinite extension")
    run.add_argument("--condition-frame-length", type=int, help="latent frames each round continues from (5 / 4)")
    run.add_argument("--condition-frame-edit", type=float, default=0.0)
    run.add_argument("--align", type=int, help="snap strategy starts to multiples of this (official v1.2: 5)")
    run.add_argument("--aesthetic-score", type=float, help=f"default: {_family_defaults('aesthetic_score')}")
    run.add_argument("--no-aesthetic-score", action="store_true")
    run.add_argument("--motion-score", type=float)
    run.add_argument("--camera-motion")
    run.add_argument("--shift-scale", type=float, help="v1.2: a factor on the official timestep shift (default 1.0, "
                                                         "official; >1 spends more steps at high noise)")
    run.add_argument("--image-cfg-scale", type=float, help="Open-Sora 2.0 image guidance (default 3.0)")
    run.add_argument("--no-oscillation", action="store_true", help="Open-Sora 2.0: keep the guidance scales on "
                                                                   "every step (official: 1 on odd steps from 10)")

    dev = p.add_argument_group("device")
    dev.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    dev.add_argument("--dtype", choices=sorted(DTYPES), help="model and VAE dtype (default bf16 on GPU, fp32 on CPU)")
    dev.add_argument("--t5-dtype", choices=sorted(DTYPES), help="T5 dtype (default bf16 on GPU, fp32 on CPU)")
    dev.add_argument("--tile", action="store_true", help="decode in spatial tiles (less memory)")
    dev.add_argument("--fp8", action="store_true", help="store the Open-Sora 2.0 MMDiT's weights in fp8 (e4m3fn, "
                                                        "per-layer scale; computes in --dtype): about half the memory")
    dev.add_argument("--blocks-on-device", type=int, metavar="N", help="block swap: keep N of the MMDiT's 57 blocks "
                     "on the GPU, stream the rest from CPU memory per step (slower, less GPU memory)")

    p.add_argument("--output", "-o", default="outputs/sample.mp4", help="output file; with several prompts, _0, _1, ... are added")
    p.add_argument("--quiet", action="store_true")
    return p


def _default_sizes() -> str:
    """"240p 9:16 for v1.2, ..., 352x640 for Open-Sora-Plan v1.3" from the family declarations."""
    values = {}
    for f in families():
        d = f.defaults
        size = f"{d.size[0]}x{d.size[1]}" if d.size is not None else f"{d.resolution} {d.aspect_ratio}"
        values[f"{size} for {f.short_label}"] = None
    return ", ".join(values)


def _family_defaults(field: str) -> str:
    """"30 for v1.2, 100 for v1.1, ..." from the family declarations (one entry per release)."""
    values = {f"{getattr(f.defaults, field)} for {f.short_label}": None for f in families()}
    return ", ".join(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--demo`` fills in the demo files and settings the user did not give."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        demo = load_demo()
        parser.set_defaults(
            model=str(demo.model), vae=str(demo.vae), text_encoder=str(demo.text_encoder), height=demo.height,
            width=demo.width, num_frames=demo.num_frames, fps=demo.fps, steps=demo.steps, cfg_scale=demo.cfg_scale,
            seed=demo.seed, condition_frame_length=demo.condition_frame_length, no_aesthetic_score=True,
            shift_scale=demo.shift_scale,
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
    mask_strategy: list[MaskGroup]  # parsed once, here
    output: Path


def collect_jobs(args: argparse.Namespace, version: str = "v1.2") -> list[Job]:
    """One job per prompt; ``version``: the model's prompt syntax (v1.1 also splits off a trailing JSON array)."""
    prompts = list(args.prompt)
    if args.prompt_file:
        prompts += [line.strip() for line in _read_prompt_file(args.prompt_file).splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompt given: use --prompt TEXT or --prompt-file FILE")
    out = Path(args.output)
    jobs = []
    for index, raw in enumerate(prompts):
        options = parse_prompt_options(raw, version)
        refs = options.reference_path.split(";") if options.reference_path else list(args.reference)
        strategy = options.mask_strategy if options.mask_strategy is not None else args.mask_strategy
        groups = parse_mask_strategy(strategy, PIXEL if args.pixel_positions else LATENT)
        path = out if len(prompts) == 1 else out.with_name(f"{out.stem}_{index}{out.suffix}")
        jobs.append(Job(options.text, [Path(r) for r in refs if r], groups, path))
    return jobs


def _read_prompt_file(name: str) -> str:
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise ValueError(
            f"--prompt-file {name}: cannot be read ({reason}); give a UTF-8 text file, one prompt a line"
        ) from None


def resolve_size(args: argparse.Namespace, family: Family) -> tuple[int, int, int]:
    """(height, width, num_frames) from explicit values or presets; 0 is a value (refused later), not "not given"."""
    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither (then --resolution and --aspect-ratio apply)")
    if args.height is not None:
        height, width = args.height, args.width
    elif family.image_size is None:
        if args.resolution is not None or args.aspect_ratio is not None:
            raise ValueError(f"{family.title} has no size presets: give --height and --width (default "
                             f"{family.defaults.size[0]}x{family.defaults.size[1]}) instead of --resolution / "
                             "--aspect-ratio")
        height, width = family.defaults.size
    else:
        height, width = family.image_size(args.resolution or family.defaults.resolution,
                                          args.aspect_ratio or family.defaults.aspect_ratio)
    if args.duration is not None and args.num_frames is not None:
        raise ValueError("give --num-frames or --duration, not both")
    if args.duration is not None:
        frames = geometry.num_frames_from_duration(args.duration)
    elif args.num_frames is not None:
        frames = args.num_frames
    else:
        frames = family.defaults.num_frames
    return height, width, frames


def make_spec(args: argparse.Namespace, job: Job, size: tuple[int, int, int],
              trained_phrases: tuple[str, ...] | None = None) -> GenerationSpec:
    """``trained_phrases``: the score phrases the model's training captions carried, when its file says
    (a fine-tune by opensora-train); the default aesthetic phrase is then appended only if they did."""
    height, width, frames = size
    aesthetic = None if args.no_aesthetic_score else (args.aesthetic_score if args.aesthetic_score is not None else "auto")
    if aesthetic == "auto" and trained_phrases is not None and AESTHETIC_PHRASE not in trained_phrases:
        aesthetic = None
    return GenerationSpec(
        prompts=[job.prompt], height=height, width=width, num_frames=frames, fps=args.fps, steps=args.steps,
        cfg_scale=args.cfg_scale, seed=args.seed, mask_strategy=job.mask_strategy,
        loops=args.loops, condition_frame_length=args.condition_frame_length,
        condition_frame_edit=args.condition_frame_edit, align=args.align, aesthetic_score=aesthetic,
        motion_score="auto" if args.motion_score is None else args.motion_score, camera_motion=args.camera_motion,
        negative_prompts=None if args.negative_prompt is None else [args.negative_prompt], save_fps=args.save_fps,
        prompt_template=None if args.no_prompt_template else "auto",
        image_cfg_scale=args.image_cfg_scale, oscillation=False if args.no_oscillation else None,
        condition_type=args.condition_type, shift_scale=args.shift_scale,
    )


# ---------------------------------------------------------------------------
# Checks before any heavy work
# ---------------------------------------------------------------------------


def parse_lora(value: str) -> tuple[Path, float]:
    """``path`` or ``path:strength`` (a finite number)."""
    path, _, strength = value.rpartition(":")
    try:
        scale = float(strength)
    except ValueError:
        return Path(value), 1.0
    if not math.isfinite(scale):
        raise ValueError(f"--lora {value}: the strength must be a finite number, got {strength}")
    return Path(path), scale


def check_numbers(args: argparse.Namespace) -> None:
    """Options the pipeline would only see under its own names: refused here naming the flag."""
    low, high = SEED_RANGE
    if not low <= args.seed <= high:
        raise ValueError(f"--seed must be from {low} to {high} (2**64 - 1), got {args.seed}")
    if args.cfg_scale is not None and not (math.isfinite(args.cfg_scale) and args.cfg_scale >= 0):
        raise ValueError(f"--cfg-scale must be a finite number >= 0 (official 7.0), got {args.cfg_scale}")
    if args.shift_scale is not None and not (math.isfinite(args.shift_scale) and args.shift_scale > 0):
        raise ValueError(f"--shift-scale must be a finite number > 0 (official 1.0), got {args.shift_scale}")
    for flag in ("fps", "save_fps"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number, got {value}")


VIDEO_OUTPUTS = (".mp4", ".mov", ".mkv")  # containers the H.264 writer fills; one frame is written as PNG


def check_output(args: argparse.Namespace) -> None:
    """``--output`` can be written as a video (or PNG), before anything runs."""
    out = Path(args.output)
    if out.suffix.lower() not in (*VIDEO_OUTPUTS, ".png"):
        suffixes = ", ".join(VIDEO_OUTPUTS)
        raise ValueError(f"--output {out}: give a file name ending in {suffixes} (or .png for one frame)")
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--output {out}: {existing} is a file, so no folder can be made there")
    if out.is_dir():
        raise ValueError(f"--output {out}: is a folder; give a file name such as {out / 'sample.mp4'}")


def check_options(args: argparse.Namespace) -> None:
    """Options that would be ignored or used half: refused rather than silently dropped."""
    if args.pixel_positions and not args.mask_strategy and not args.reference:
        raise ValueError("--pixel-positions only changes --mask-strategy; give a mask strategy (or leave it out)")
    if args.camera_motion is not None and not args.camera_motion.strip():
        raise ValueError("--camera-motion is empty; leave it out or give a motion such as 'pan left'")
    for flag in ("tokenizer", "clip_tokenizer"):
        folder = getattr(args, flag)
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"--{flag.replace('_', '-')} {folder}: not a folder (a tokenizer folder is needed)")


def check_model(args: argparse.Namespace) -> Family:
    """The diffusion transformer's family, from the checkpoint header."""
    read_checkpoint(args.model)  # a missing or damaged file is named as such (headers only)
    try:
        return model_family(args.model)
    except CheckpointError as err:
        raise CheckpointError(f"--model {args.model}: not an Open-Sora diffusion transformer ({err})") from None


def check_files(args: argparse.Namespace, jobs: list[Job]) -> Family:
    """The model's family and its VAE from the checkpoint headers; reference files exist and decode."""
    family = check_model(args)
    vae = detect(read_checkpoint(args.vae).state_dict)
    if vae is None or vae.kind.role != "vae":
        raise CheckpointError(f"--vae {args.vae}: not a VAE file (it holds {describe(vae)})")
    check_vae_fits(family, vae.kind.geometry)
    for path, _ in map(parse_lora, args.lora):
        if not path.is_file():
            raise FileNotFoundError(f"--lora {path}: not found")
    for flag, path in _text_files(args, family):
        if not Path(path).exists():
            raise FileNotFoundError(f"{flag} {path}: not found")
    _check_memory_options(args, family)
    for job in jobs:
        for ref in job.references:
            if not ref.is_file():
                raise FileNotFoundError(f"reference file not found: {ref}")
            media.probe(ref)  # raises MediaError naming the file if it cannot be decoded
    return family


def _text_files(args: argparse.Namespace, family: Family) -> list[tuple[str, str]]:
    """(flag, path) of each text encoder the family declares (T5; Open-Sora 2.0: T5 then CLIP-L)."""
    given = [("--text-encoder", args.text_encoder), ("--clip", args.clip)][: len(family.text)]
    missing = [f"{flag} ({encoder.name})" for (flag, path), encoder in zip(given, family.text) if not path]
    if missing:
        raise ValueError(f"{family.title} needs {', '.join(missing)}")
    if args.clip and len(family.text) < 2:
        raise ValueError(f"--clip is for Open-Sora 2.0 models; {family.title} uses T5 only: leave it out")
    return given


def check_condition_type(args: argparse.Namespace, family: Family, jobs: list[Job]) -> None:
    """References for a family conditioned by a condition type (``Defaults.condition_type``: Open-Sora 2.0) need
    ``--condition-type``: its default (t2v) reads none."""
    if family.defaults.condition_type is None or args.condition_type is not None:
        return
    if any(job.references for job in jobs):
        raise ValueError(f"--reference given without --condition-type: {family.title} would use none (default "
                         f"{family.defaults.condition_type}); add --condition-type i2v_head (reference = first frame), "
                         "i2v_tail (last frame) or i2v_loop (first and last)")


def _check_memory_options(args: argparse.Namespace, family: Family) -> None:
    if args.fp8 and not family.model.fp8_weights:
        raise ValueError(f"--fp8 is not available for {family.title} ({family.model.class_name}); leave it out")
    if args.blocks_on_device is not None:
        if not family.model.block_swap:
            raise ValueError(f"--blocks-on-device (block swap) is not available for {family.title}; leave it out")
        if args.blocks_on_device < 0:
            raise ValueError(f"--blocks-on-device must be 0 or more, got {args.blocks_on_device}")


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def load_components(args: argparse.Namespace, device: torch.device, family: Family) -> Components:
    """Everything loaded on the CPU; on a GPU each stage moves its module there and back (:class:`Offload`:
    the text encoders are released before sampling), except a block-swapped model, placed once."""
    on_gpu = device.type != "cpu"
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    t5_dtype = DTYPES[args.t5_dtype or ("bf16" if on_gpu else "fp32")]
    loaded = load_dit(args.model, preset=args.preset, dtype=dtype, device="cpu", fp8=args.fp8)
    log.info("model: %s (%s) from %s", loaded.class_name, loaded.preset or "custom size", args.model)
    for path, strength in map(parse_lora, args.lora):
        merged = merge_lora(loaded.model, path, strength)
        log.info("merged LoRA %s (%d layers, strength %g)", path, len(merged), strength)
    if args.blocks_on_device is not None:
        enable_block_swap(loaded.model, device, args.blocks_on_device)
        log.info("block swap: %d of %d blocks stay on %s", min(args.blocks_on_device, len(loaded.model.blocks)),
                 len(loaded.model.blocks), device)
    vae = load_vae(args.vae, dtype=dtype, device="cpu")
    tokenizers = [args.tokenizer, args.clip_tokenizer]
    files = [TextFile(path, tokenizers[i]) for i, (_, path) in enumerate(_text_files(args, family))]
    max_length = loaded.model.caption_shape[0] or family.caption_length
    text = family.load_text(files, max_length=max_length, dtype=t5_dtype, device="cpu")
    return Components(loaded.model, vae, text, placement=Offload(device))


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
    check_numbers(args)
    check_output(args)
    check_options(args)
    device = resolve_device(args.device)
    jobs = collect_jobs(args, check_model(args).prompt_syntax)
    family = check_files(args, jobs)
    check_condition_type(args, family, jobs)
    size = resolve_size(args, family)
    if Path(args.output).suffix.lower() == ".png" and size[2] > 1:
        raise ValueError(f"--output {args.output}: a PNG holds one frame, not {size[2]}; end the name in .mp4")
    phrases = trained_score_phrases(args.model)
    if phrases is not None and AESTHETIC_PHRASE not in phrases and args.aesthetic_score is None:
        log.info("%s was fine-tuned on captions without an aesthetic score: none is appended "
                 "(--aesthetic-score adds one)", args.model)
    specs = [make_spec(args, job, size, phrases) for job in jobs]
    for job, spec in zip(jobs, specs, strict=True):
        plan_generation(family, spec, [media.probe(r).num_frames for r in job.references])
    components = load_components(args, device, family)
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


def resolve_device(name: str | None) -> torch.device:
    """``--device`` (default: cuda if available, else cpu), checked before any weights are loaded."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this PyTorch has no usable CUDA GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    return device


def _tiling(args: argparse.Namespace):
    if not args.tile:
        return None
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
