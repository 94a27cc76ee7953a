"""Build the bundled demo model from scratch: procedural data -> VAE v1.2 -> STDiT3 -> ``demo/``.

    ./scripts/make_demo.sh          # = python -m opensora_train.demo --install

Every stage is an ordinary ``opensora-train`` run of a config in ``train/configs/demo/`` (the
same trainer users fine-tune with); this module only chains them and copies the exports into
the folder layout the loader nodes read. Stages whose output already exists are skipped, so
an interrupted build continues where it stopped (``--fresh`` starts over).

1. ``data``: 3000 captioned 18-frame clips in the demo vocabulary (the DiT's, moving CLIP_TRAVEL of the
   frame), 600 clips and 4000 32x32 stills in the same vocabulary (the VAE's), 64x64, written losslessly and
   described by ``opensora-train prepare`` CSVs;
2. ``t5``: a small random T5 encoder with the byte-level ByT5 tokenizer (frozen, as the real
   T5-XXL is frozen in Open-Sora training; the DiT learns to read its features);
3. ``vae_spatial``: the SD-VAE stage, trained on the images (reconstruction + KL);
4. ``vae_temporal``: the VAE v1.2 pipeline around it, temporal stage trained on the clips
   with the spatial stage frozen (latent reconstruction + KL, the official stage-1 objective);
5. ``vae_first_frame``: only the temporal encoder, fine-tuned so that a single image encodes to
   the latent the same frame gets inside a clip (image-to-video), its clip latents held fixed;
6. ``vae_decoder``: only the decoders (temporal and spatial), fine-tuned end to end on the DiT's clips' pixels, so
   that what the temporal stage gets wrong is not drawn as rounded corners; every encoder frozen, so the
   latents (and the DiT trained on them) are those of stage 5;
7. ``dit``: STDiT3 with rectified flow on the cached latents and captions;
8. ``install`` (with ``--install``): ``demo/models/{diffusion_models,vae,text_encoders}``,
   ``demo/inputs`` (reference images and a source video for the workflows), ``demo/demo.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import natural, synthetic

log = logging.getLogger("opensora_train.demo")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs" / "demo"
DEFAULT_WORK = Path("outputs/demo_build")

# The demo's world: a small vocabulary, so a 3-block DiT trained for minutes on 2 CPU cores
# learns every caption word (direction, colour, shape, background).
VOCABULARY = {"colors": ("red", "green", "blue", "yellow"), "shapes": ("circle", "square"), "backgrounds": ("black", "gray")}
SIZE, CLIP_FRAMES, FPS = 64, 18, 8  # 18 frames: a 17-frame bucket (VAE v1.2: 5 latent frames) fits every clip
CLIPS, VAE_CLIPS, IMAGES = 3000, 600, 4000  # the DiT's clips; the VAE's clips and stills (--natural: + as many photos)
STILL_CROP = 32  # the VAE's stills: 32x32 windows of 64x64 frames
SEEDS = {"clips": 0, "vae_clips": 0, "images": 1, "photos": 2, "t5": 0, "train": 0}
T5_WIDTH = 64  # = the DiT's caption_channels
# How far a shape moves in the DiT's clips (fractions of the frame). With the generator's 0.35-0.5 the start
# fixes the direction (a shape moving right must start in the left half), and the DiT learned to move a shape
# away from the edge it was drawn near: 14 of its 17 text-to-video direction errors started on the wrong side.
# From 0.2 the starts of opposite directions overlap in the middle of the frame, where only the caption tells
# which way a shape goes (text-to-video direction 80 -> 88 %, image-to-video shape 97 -> 88 %: demo/README.md).
CLIP_TRAVEL = (0.2, 0.5)

TRAINING_STAGES = ("vae_spatial", "vae_temporal", "vae_first_frame", "vae_decoder", "dit")
VAE_STAGE = "vae_decoder"  # the VAE the DiT trains on and the demo ships

# Names in the ComfyUI folder layout (models/<folder>/<name>) and the sampling defaults.
FILES = {
    "model": "models/diffusion_models/opensora-demo-stdit3.safetensors",
    "vae": "models/vae/opensora-demo-vae-v1.2.safetensors",
    "text_encoder": "models/text_encoders/opensora-demo-t5",
    "reference": "inputs/opensora_demo_first_frame.png",
}
SAMPLING = {"height": SIZE, "width": SIZE, "num_frames": 17, "fps": FPS, "steps": 60, "cfg_scale": 2.0, "seed": 0,
            "condition_frame_length": 1,  # loops continue from the last latent frame (image_head training)
            "shift_scale": 1.0}
# 60 sampling steps (was 30): over 192 text-to-video prompts, shape 86 -> 90 % and direction 81 -> 84 % with the
# depth-3 DiT; 85 -> 90 % direction with the shipped one (demo/README.md). About 1 s per video on a CPU.
# CFG 2 (was 3): the given-frame modes keep the shape better at lower guidance (image-to-video, a square kept in
# every frame of 64 held-out videos: CFG 6 / 4.5 / 3 / 2 / 1.5 / 1: 36 / 38 / 45 / 48 / 51 / 43), and 2 is where
# text-to-video is best (64 prompts, shape 94 / 95 / 92 % at CFG 3 / 2 / 1.5; demo/README.md).
PROMPT = "a red circle moves to the right on a black background"
# Video-to-video (workflows/opensora_demo_video_to_video.json): the source clip re-captioned with the other shape
# (v2v_edit); the source is kept while the noise level is above the edit ratio and regenerated below it. A shape
# is settled late in sampling, after position and colour, so the edit keeps the motion and the colour. 8 held-out
# sources: ratio 0.7 changed the shape in 6 (motion kept in 8, centre within 1.3 px of the source's, one object in
# every frame). A colour edit (0.4: 5 of 8 recoloured, 0.75: 7 of 8 but the centre 5 px off) competes with the
# source's colour, which is decided as early as its position.
V2V_EDIT_RATIO = 0.7
# Workflow inputs (demo/inputs): first/last frames of one clip, and a source video for v2v.
FIRST_FRAME = synthetic.ShapeClip("circle", "red", "black", "right", (0.25, 0.5), 0.15, 0.45 / 16)
STITCH_CLIP = synthetic.ShapeClip("square", "yellow", "gray", "down", (0.5, 0.25), 0.15, 0.45 / 16)
SOURCE_CLIP = synthetic.ShapeClip("circle", "blue", "gray", "left", (0.75, 0.5), 0.15, 0.45 / 16)


def v2v_edit(clip: synthetic.ShapeClip) -> synthetic.ShapeClip:
    """The video-to-video demo's edit: the same clip (colour, motion, background) with the other shape."""
    shapes = VOCABULARY["shapes"]
    return dataclasses.replace(clip, shape=shapes[(shapes.index(clip.shape) + 1) % len(shapes)])


SOURCE_CRF = 10  # yuv420p H.264 (what browsers and ComfyUI's preview play with the right colours), near-lossless


def write_source_video(path: Path) -> Path:
    """The video-to-video input: SOURCE_CLIP as standard yuv420p H.264 (not the RGB 4:4:4 training encoding)."""
    from opensora_core import media

    return media.write_video(synthetic.render(SOURCE_CLIP, 17, SIZE, SIZE), path, fps=FPS, crf=SOURCE_CRF)


@dataclass(frozen=True)
class Work:
    """Where a build keeps its intermediate files."""

    root: Path

    @property
    def clips_csv(self) -> Path:
        return self.root / "data" / "clips.csv"

    @property
    def vae_clips_csv(self) -> Path:
        return self.root / "data" / "vae_clips.csv"

    @property
    def images_csv(self) -> Path:
        return self.root / "data" / "images.csv"

    @property
    def t5(self) -> Path:
        return self.root / "t5"

    def export(self, stage: str) -> Path:
        """The file ``opensora-train`` exports for ``stage`` (named after its output folder)."""
        suffix = "" if stage == "dit" else "-vae"
        return self.root / stage / "export" / f"{stage}{suffix}.safetensors"


def make_data(work: Work, clips: int = CLIPS, images: int = IMAGES, natural_images: bool = False) -> None:
    from .prepare import prepare_dataset

    # Every set uses the demo's vocabulary. (The VAE's sets had every colour, shape and background of the
    # generator, 24 colour/background pairs: the small VAE then decoded some of the demo's own pairs in another
    # colour, red on black as magenta, yellow on black as orange.) The stills are 32x32 windows of 64x64
    # frames: the same scale, a quarter of the pixels (the spatial VAE is convolutional).
    # ``natural`` adds as many natural pictures to the stills (photographs of natural.TRAINING, recoloured, and
    # "dead leaves" pictures). The shipped demo leaves them out: beside them this small VAE reached 16.6 dB on
    # held-out photographs but decoded the demo's own shapes in the wrong colours (0 of 8 named), and the
    # temporal stages lost 5 dB on shapes with natural pan/zoom clips (demo/README.md).
    vae_clips = min(clips, VAE_CLIPS)
    for name, count, frames, csv, travel, photos in (
            ("clips", clips, CLIP_FRAMES, work.clips_csv, CLIP_TRAVEL, False),
            ("vae_clips", vae_clips, CLIP_FRAMES, work.vae_clips_csv, synthetic.TRAVEL, False),
            ("images", images, 1, work.images_csv, synthetic.TRAVEL, natural_images)):
        if csv.is_file():
            continue
        folder = work.root / "data" / name
        crop = STILL_CROP if frames == 1 else None
        synthetic.write_dataset(folder, count, seed=SEEDS[name], num_frames=frames, height=SIZE, width=SIZE, fps=FPS,
                                crop=crop, travel=travel, **VOCABULARY)
        if photos:
            natural.write_dataset(folder, count, seed=SEEDS["photos"], num_frames=frames, size=SIZE, fps=FPS, crop=crop)
        report = prepare_dataset(folder, csv, min_frames=frames)
        log.info("%s: %d files -> %s", name, len(report.rows), csv)


def make_t5(work: Work) -> None:
    from .tiny_t5 import write_random_t5

    if not (work.t5 / "model.safetensors").is_file():
        write_random_t5(work.t5, d_model=T5_WIDTH, seed=SEEDS["t5"])


def stage_overrides(work: Work, stage: str, max_steps: int | None = None) -> list[str]:
    """The work-folder paths of a stage's config (the TOML files hold the default work folder)."""
    sets = [f'run.output_dir="{work.root / stage}"', f"run.seed={SEEDS['train']}"]
    if max_steps is not None:  # quick trials and the smoke test
        sets.append(f"run.max_steps={max_steps}")
    if stage == "vae_spatial":
        sets.append(f'data.csv="{work.images_csv}"')
    elif stage == "vae_temporal":
        sets += [f'data.csv="{work.vae_clips_csv}"',
                 f'vae_training.spatial_checkpoint="{work.export("vae_spatial")}"']
    elif stage == "vae_first_frame":
        sets += [f'data.csv="{work.vae_clips_csv}"', f'vae_training.checkpoint="{work.export("vae_temporal")}"']
    elif stage == "vae_decoder":
        # the DiT's 3000 clips: more kinds of clip than the VAE's 600 (demo/README.md: the VAE alone keeps the shape of
        # 55 -> 61 of 64 held-out clips)
        sets += [f'data.csv="{work.clips_csv}"', f'vae_training.checkpoint="{work.export("vae_first_frame")}"']
    elif stage == "dit":
        sets += [f'data.csv="{work.clips_csv}"', f'vae.path="{work.export(VAE_STAGE)}"',
                 f'text_encoder.path="{work.t5}"']
    return sets


def run_stage(work: Work, stage: str, max_steps: int | None = None) -> Path:
    from .config import load_config
    from .trainer import train

    exported = work.export(stage)
    if not exported.is_file():
        cfg = load_config(CONFIGS / f"{stage}.toml", stage_overrides(work, stage, max_steps))
        cfg.run.tensorboard = False
        cfg.run.mixed_precision = machine_precision(cfg.run.mixed_precision)
        result = train(cfg)
        if exported not in result.exports:
            raise RuntimeError(f"demo stage {stage}: expected the export {exported}, got {result.exports}")
    return exported


def machine_precision(wanted: str) -> str:
    """A stage's ``run.mixed_precision`` on this machine: its bf16 (the temporal VAE stage: ~2x faster on a CPU
    with bf16 instructions) falls back to fp32 where bf16 would be emulated (1.6-8x slower than fp32)."""
    from .trainer import native_bf16

    return "no" if wanted == "bf16" and not native_bf16() else wanted


def stage_precisions() -> dict[str, str]:
    """The precision every training stage runs at on this machine (``demo.json`` keeps it)."""
    from .config import load_config

    return {stage: machine_precision(load_config(CONFIGS / f"{stage}.toml").run.mixed_precision)
            for stage in TRAINING_STAGES}


def timed(work: Work, stage: str, step) -> tuple[float, float]:
    """Run ``step``; its wall and CPU (user + system, all threads) seconds are kept in ``<work>/<stage>.seconds``,
    so a build that skips a finished stage still reports what the stage took when it ran (an interrupted
    stage: the last run). CPU time is what a loaded machine cannot inflate: on 2 free cores, wall ~ CPU / 2."""
    record = work.root / f"{stage}.seconds"
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    if took > 1.0 or not record.is_file():
        record.write_text(f"{took:.1f} {cpu:.1f}\n")
    wall, cpu = (float(v) for v in record.read_text().split())
    return wall, cpu


def install(work: Work, target: Path, figures: dict) -> Path:
    """Copy the exports into ``target`` (the ComfyUI models layout) and write ``demo.json`` and the inputs."""
    from opensora_core import media

    sources = {"model": work.export("dit"), "vae": work.export(VAE_STAGE), "text_encoder": work.t5}
    for key, source in sources.items():
        destination = target / FILES[key]
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(source, destination)
        else:
            shutil.copyfile(source, destination)
    inputs = target / "inputs"
    media.write_video(synthetic.render(FIRST_FRAME, 1, SIZE, SIZE), target / FILES["reference"], fps=FPS)
    stitch = synthetic.render(STITCH_CLIP, 17, SIZE, SIZE)
    media.write_video(stitch[:1], inputs / "opensora_demo_stitch_first.png", fps=FPS)
    media.write_video(stitch[-1:], inputs / "opensora_demo_stitch_last.png", fps=FPS)
    write_source_video(inputs / "opensora_demo_source.mp4")
    config = {"files": FILES, "prompt": PROMPT, "sampling": SAMPLING, "build": figures}
    path = target / "demo.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def build(work_dir: Path = DEFAULT_WORK, target: Path | None = None, *, fresh: bool = False, clips: int = CLIPS,
          images: int = IMAGES, max_steps: int | None = None, natural_images: bool = False) -> dict:
    """Run every stage (skipping finished ones); with ``target``, install there. Returns wall times.

    ``clips``/``images``/``max_steps`` shrink the build for quick trials, ``natural_images`` trains the VAE on
    photographs too (the shipped demo uses the defaults).
    """
    work = Work(Path(work_dir))
    if fresh and work.root.exists():
        shutil.rmtree(work.root)
    work.root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    for stage, step in (("data", lambda: make_data(work, clips, images, natural_images)), ("t5", lambda: make_t5(work)),
                        *((s, lambda s=s: run_stage(work, s, max_steps)) for s in TRAINING_STAGES)):
        log.info("demo stage %s", stage)
        seconds[stage], cpu_seconds[stage] = timed(work, stage, step)
        print(f"[demo] {stage}: {seconds[stage]:.0f} s ({cpu_seconds[stage]:.0f} CPU s)", flush=True)
    figures = {"command": "./scripts/make_demo.sh", "seeds": SEEDS, "clips": clips, "images": images,
               "max_steps": max_steps or "as configured", "natural_images": natural_images,
               "precision": stage_precisions(), "seconds": seconds,
               "total_seconds": round(sum(seconds.values()), 1), "cpu_seconds_per_stage": cpu_seconds,
               "cpu_seconds": round(sum(cpu_seconds.values()), 1)}
    if target is not None:
        print(f"[demo] installed {install(work, Path(target), figures)}")
    print(f"[demo] total {figures['total_seconds'] / 60:.1f} min wall, {figures['cpu_seconds'] / 60:.1f} CPU min")
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opensora_train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="intermediate files (default: %(default)s)")
    p.add_argument("--install", nargs="?", const=REPO / "demo", type=Path, default=None, metavar="DIR",
                   help="copy the result into DIR (default: the repository's demo/ folder)")
    p.add_argument("--fresh", action="store_true", help="delete the work folder first")
    trial = p.add_argument_group("quick trials (not the shipped demo)")
    trial.add_argument("--clips", type=int, default=CLIPS, help="training clips (default: %(default)s)")
    trial.add_argument("--images", type=int, default=IMAGES, help="still images for the VAE (default: %(default)s)")
    trial.add_argument("--max-steps", type=int, help="steps of every training stage (default: the configs')")
    trial.add_argument("--natural", action="store_true",
                       help="also train the VAE on natural photographs (scikit-image's; sharper on camera footage, "
                            "worse on the demo's shapes: demo/README.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    build(args.work, args.install, fresh=args.fresh, clips=args.clips, images=args.images, max_steps=args.max_steps,
          natural_images=args.natural)
    return 0


if __name__ == "__main__":
    sys.exit(main())
