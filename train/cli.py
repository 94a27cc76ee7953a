"""``opensora-train``: prepare data, cache, train, export, check a config.

    opensora-train prepare clips/ --output data/meta.csv [--min-frames 17]
    opensora-train prepare videos/ -o data/meta.csv --scene-cut --scores all --filter "flow>=0.5" \
        --caption-scores aesthetic,motion   # the data pipeline (pip install .[data]); see train/README.md
    opensora-train init-t5 outputs/tiny/t5 --d-model 64   # random small T5 for from-scratch demos
    opensora-train synthetic outputs/demo/clips --count 600 --seed 0   # procedural captioned clips
    opensora-train check  --config train/configs/v1_2_finetune.toml [--set optimizer.lr=2e-5 ...]
    opensora-train cache  --config ...            # T5 + VAE caches only (train does this too)
    opensora-train train  --config ... [--set run.max_steps=200]
    opensora-train export --config ... [--checkpoint outputs/run/checkpoints/checkpoint-00000200]
    opensora-train train  --config train/configs/v2_lora.toml   # Open-Sora 2.0 MMDiT LoRA (fp8/bf16 base, block swap)

Multi-GPU: ``accelerate launch [--config_file train/configs/accelerate_ddp.yaml] -m opensora_train train ...``
(see train/README.md). Errors in the config name the key and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config

log = logging.getLogger("opensora")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensora-train", description="Fine-tune Open-Sora models with accelerate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="folder of clips + .txt captions (or a path,text CSV) -> metadata CSV")
    prep.add_argument("source", help="folder with videos/images and same-name .txt captions, or a CSV with path,text")
    prep.add_argument("--output", "-o", required=True, help="metadata CSV to write")
    prep.add_argument("--min-frames", type=int, default=1, help="skip videos with fewer frames (default 1)")
    prep.add_argument("--workers", type=int, default=4, help="files probed in parallel")
    prep.add_argument("--relative", action="store_true", help="write paths relative to the CSV's folder")
    add_pipeline_arguments(prep)

    t5 = sub.add_parser("init-t5", help="write a small random T5 + byte-level tokenizer (from-scratch demos)")
    t5.add_argument("output", help="folder to write")
    t5.add_argument("--d-model", type=int, default=64, help="feature width = the DiT's caption_channels")
    t5.add_argument("--layers", type=int, default=2)
    t5.add_argument("--heads", type=int, default=4)
    t5.add_argument("--seed", type=int, default=0)

    syn = sub.add_parser("synthetic", help="write procedural captioned clips (coloured shapes moving in a direction)")
    syn.add_argument("output", help="folder to write (clip_00000.mp4 + clip_00000.txt, ...)")
    syn.add_argument("--count", type=int, default=600, help="number of clips")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--num-frames", type=int, default=18, help="frames per clip (a 17-frame bucket needs 18)")
    syn.add_argument("--height", type=int, default=64)
    syn.add_argument("--width", type=int, default=64)
    syn.add_argument("--fps", type=int, default=8)
    syn.add_argument("--prefix", default="clip", help="file names: PREFIX_00000.mp4 (.png for one frame) + .txt")
    for name in ("colors", "shapes", "backgrounds"):
        syn.add_argument(f"--{name}", help=f"comma-separated {name} to draw from (default: all)")

    for name, text in (("check", "validate a config and print it resolved"), ("cache", "fill the T5/VAE caches"),
                       ("train", "train (DiT or VAE, per run.task)"), ("export", "export weights from a state")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", "-c", required=True, help="TOML config file")
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set optimizer.lr=2e-5 (repeatable)")
        if name == "export":
            cmd.add_argument("--checkpoint", help="state folder (default: the latest under run.output_dir)")
            cmd.add_argument("--overwrite", action="store_true", help="replace files already in the export folder")
        if name == "check":
            cmd.add_argument("--processes", type=int, default=0, help="processes the run will use (default: "
                             "WORLD_SIZE or 1), for the batch arithmetic")
            cmd.add_argument("--print-config", action="store_true", help="also print the resolved config as JSON")
        if name == "train":
            start = cmd.add_mutually_exclusive_group()
            start.add_argument("--resume", action="store_true", help="continue from the latest state "
                               "(checkpoint.resume = \"latest\")")
            start.add_argument("--fresh", action="store_true", help="start over: ignore and remove the run's "
                               "states, loss log and samples (caches and exports are kept)")
    return parser


def add_pipeline_arguments(prep: argparse.ArgumentParser) -> None:
    """The data-pipeline stages of ``prepare`` (all optional; see train/README.md "Data pipeline")."""
    cut = prep.add_argument_group("scene cut (PySceneDetect)")
    cut.add_argument("--scene-cut", action="store_true", help="split videos into clips at scene changes")
    cut.add_argument("--scene-rows", action="store_true", help="write (start_frame, end_frame) rows of the videos "
                     "instead of clip files")
    cut.add_argument("--clips-dir", help="folder for the clip files (default: <output stem>_clips beside the CSV)")
    cut.add_argument("--min-seconds", type=float, default=2.0, help="drop shorter scenes (official: 2)")
    cut.add_argument("--max-seconds", type=float, default=15.0, help="keep the first seconds of longer scenes "
                     "(official: 15; 0 = no limit)")
    cut.add_argument("--split-long", action="store_true", help="cut long scenes into max-seconds pieces instead")
    cut.add_argument("--scene-threshold", type=float, default=3.0, help="AdaptiveDetector threshold (official: 3)")
    scores = prep.add_argument_group("scores and filters")
    scores.add_argument("--scores", default="", help="comma-separated: motion (optical flow + camera motion), "
                        "text (OCR), quality (sharpness/exposure), aesthetic, match; or all")
    scores.add_argument("--clip-model", help="local CLIP folder (transformers layout) for aesthetic and match")
    scores.add_argument("--aesthetic-model", help="LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth)")
    scores.add_argument("--device", default="", help="device of the CLIP / captioner models (default: cuda if any)")
    scores.add_argument("--filter", dest="filters", action="append", default=[], metavar="EXPR",
                        help="keep clips with e.g. flow>=0.5, text_area<=0.02, aes>=5, cmotion!=static (repeatable)")
    caps = prep.add_argument_group("captions")
    caps.add_argument("--captioner", default="", help="a vision-language model folder (transformers) or "
                      "package.module:function, for clips without a caption")
    caps.add_argument("--recaption", action="store_true", help="caption every clip, not only those without one")
    caps.add_argument("--caption-prompt", help="the captioner's instruction")
    caps.add_argument("--caption-scores", default="", help="append the official score phrases to the captions: "
                      "comma-separated aesthetic, motion, camera")
    out = prep.add_argument_group("report and resuming")
    out.add_argument("--report", help="HTML report (default with any stage: <output stem>_report.html)")
    out.add_argument("--no-report", action="store_true")
    out.add_argument("--work-dir", help="finished work kept for the next run (default: <output stem>_work)")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .checkpointing import TrainingStopped

    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on device while writing {err.filename or 'a file'}; free space and run "
              "again", file=sys.stderr)
        return 1


def _prepare(args) -> int:
    if any((args.scene_cut, args.scores, args.filters, args.captioner, args.caption_scores, args.report)):
        return _pipeline(args)
    from .prepare import prepare_dataset

    report = prepare_dataset(args.source, args.output, min_frames=args.min_frames, workers=args.workers,
                             relative=args.relative)
    print(report.summary())
    return 0


def _pipeline(args) -> int:
    from .pipeline.captions import CAPTION_PROMPT
    from .pipeline.run import PipelineOptions, run_pipeline
    from .pipeline.scenes import SceneOptions

    split = lambda text: tuple(p.strip() for p in text.split(",") if p.strip())  # noqa: E731
    scenes = SceneOptions(threshold=args.scene_threshold, min_seconds=args.min_seconds,
                          max_seconds=args.max_seconds, split_long=args.split_long)
    options = PipelineOptions(
        args.source, args.output, min_frames=args.min_frames, workers=args.workers, relative=args.relative,
        work_dir=args.work_dir, progress=not args.no_progress, scene_cut=args.scene_cut, scenes=scenes,
        clips_dir=args.clips_dir, scene_rows=args.scene_rows, scores=split(args.scores),
        clip_model=Path(args.clip_model) if args.clip_model else None,
        aesthetic_model=Path(args.aesthetic_model) if args.aesthetic_model else None, device=args.device,
        filters=tuple(args.filters), captioner=args.captioner, recaption=args.recaption,
        caption_prompt=args.caption_prompt or CAPTION_PROMPT, caption_scores=split(args.caption_scores),
        report=args.report, no_report=args.no_report,
    )
    print(run_pipeline(options).summary())
    return 0


def _init_t5(args) -> int:
    from .tiny_t5 import write_random_t5

    print(write_random_t5(args.output, d_model=args.d_model, layers=args.layers, heads=args.heads, seed=args.seed))
    return 0


def _synthetic(args) -> int:
    from .synthetic import write_dataset

    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    vocabulary = {k: getattr(args, k).split(",") for k in ("colors", "shapes", "backgrounds") if getattr(args, k)}
    paths = write_dataset(args.output, args.count, seed=args.seed, num_frames=args.num_frames, height=args.height,
                          width=args.width, fps=args.fps, prefix=args.prefix, **vocabulary)
    print(f"wrote {len(paths)} clips to {args.output}")
    return 0


def _check(args) -> int:
    import os

    from .model_facts import trained_settings
    from .plan import make_plan, mismatch_warnings, plan_text
    from .validate import validate_config

    cfg = load_config(args.config, args.overrides)
    validate_config(cfg)
    if args.print_config:
        print(cfg.to_json())
    plan = make_plan(cfg, args.processes or int(os.environ.get("WORLD_SIZE", "1")))
    print(plan_text(cfg, plan))
    warnings = mismatch_warnings(cfg, plan.entries, trained_settings(cfg.model.checkpoint))
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"config ok{f' ({len(warnings)} warning(s))' if warnings else ''}", file=sys.stderr)
    return 0


def _cache(args) -> int:
    from .trainer import make_accelerator, make_task
    from .validate import validate_config

    cfg = load_config(args.config, args.overrides)
    validate_config(cfg)
    if cfg.run.task != "dit":
        raise ConfigError("run.task", "only DiT training uses caches")
    data = make_task(cfg).prepare_data(make_accelerator(cfg))
    print(data.summary)
    return 0


def _train(args) -> int:
    from .trainer import train

    overrides = list(args.overrides) + (["checkpoint.resume=latest"] if args.resume else []) + (
        ["checkpoint.resume="] if args.fresh else [])
    cfg = load_config(args.config, overrides)
    if args.fresh and _is_main_process():
        _clear_run(cfg)
    result = train(cfg)
    if not _is_main_process():
        return 0
    if result.already_finished:
        print(f"nothing to train: {cfg.output_dir} had already finished at step {result.final_step} "
              f"(run.max_steps = {cfg.run.max_steps}); raise run.max_steps to continue or pass --fresh to start over")
    else:
        print(f"trained to step {result.final_step}; exported: {', '.join(map(str, result.exports)) or 'nothing'}")
    return 0


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _clear_run(cfg) -> None:
    """--fresh: remove the states, loss log, samples and TensorBoard logs of earlier runs (caches, exports stay)."""
    import shutil

    from .checkpointing import checkpoint_root

    for path in (checkpoint_root(cfg.output_dir), cfg.output_dir / "validation", cfg.output_dir / "logs"):
        if path.is_dir():
            shutil.rmtree(path)
            print(f"--fresh: removed {path}", file=sys.stderr)
    (cfg.output_dir / "loss.jsonl").unlink(missing_ok=True)


def _export(args) -> int:
    from .export import export_from_state

    cfg = load_config(args.config, args.overrides)
    paths = export_from_state(cfg, Path(args.checkpoint) if args.checkpoint else None, overwrite=args.overwrite)
    print("\n".join(map(str, paths)))
    return 0


COMMANDS = {
    "prepare": _prepare, "init-t5": _init_t5, "synthetic": _synthetic, "check": _check, "cache": _cache, "train": _train, "export": _export,
}


if __name__ == "__main__":
    sys.exit(main())
