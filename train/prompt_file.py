"""``validation.prompt_file``: validation prompts with their own seed, size, length, guidance or reference.

One prompt per line; ``#`` starts a comment line; options follow the prompt::

    a red circle moves to the right --seed 3 --size 64x64 --frames 17 --fps 8 --cfg 5 --steps 20
    the same circle, from this frame --ref first_frame.png --mask 0

Options default to the ``[validation]`` values. ``--size`` is HEIGHTxWIDTH; ``--ref`` is an image (relative
paths are relative to the prompt file) sampled as image-to-video with ``--mask`` (default
``validation.mask_strategy``); ``--seed`` defaults to ``validation.seed`` + the prompt's number.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from opensora_core.pipeline import GenerationSpec

from .config import ValidationConfig

OPTIONS = ("--seed", "--size", "--frames", "--fps", "--cfg", "--steps", "--ref", "--mask")


def read_prompt_file(path: str | Path, cfg: ValidationConfig, aesthetic: float | None,
                     first_index: int | None = None) -> list[tuple[GenerationSpec, Path | None]]:
    """(spec, reference image or None) per prompt line; errors name the file, the line and the option."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"validation.prompt_file: file not found: {path}")
    start = len(cfg.prompts) if first_index is None else first_index
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            where = f"{path}:{number}"
            found.append(_parse_line(line, where, cfg, aesthetic, start + len(found), path.parent))
    if not found:
        raise ValueError(f"validation.prompt_file: {path} holds no prompt")
    return found


def _parse_line(line: str, where: str, cfg: ValidationConfig, aesthetic: float | None, index: int,
                base: Path) -> tuple[GenerationSpec, Path | None]:
    cut = line.find(" --")
    prompt, rest = (line, "") if cut < 0 else (line[:cut], line[cut:])
    if not prompt.strip():
        raise ValueError(f"{where}: the line has options but no prompt")
    words = shlex.split(rest)
    if len(words) % 2:
        raise ValueError(f"{where}: every option needs a value ({' '.join(OPTIONS)})")
    options = dict(zip(words[::2], words[1::2]))
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise ValueError(f"{where}: unknown option {unknown[0]}; known: {' '.join(OPTIONS)}")
    try:
        height, width = (int(v) for v in options["--size"].lower().split("x")) if "--size" in options \
            else (cfg.height, cfg.width)
        ref = options.get("--ref")
        reference = (base / ref if not Path(ref).is_absolute() else Path(ref)) if ref else None
        spec = GenerationSpec(
            prompts=[prompt.strip()], height=height, width=width,
            num_frames=int(options.get("--frames", cfg.num_frames)), fps=float(options.get("--fps", cfg.fps)),
            steps=int(options["--steps"]) if "--steps" in options else (cfg.steps or None),
            cfg_scale=float(options.get("--cfg", cfg.cfg_scale)), seed=int(options.get("--seed", cfg.seed + index)),
            mask_strategy=options.get("--mask", cfg.mask_strategy) if reference else "", aesthetic_score=aesthetic,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err} (sizes are HEIGHTxWIDTH, the others numbers)") from None
    if reference is not None and not reference.is_file():
        raise ValueError(f"{where}: --ref {reference} not found")
    return spec, reference


__all__ = ["OPTIONS", "read_prompt_file"]
