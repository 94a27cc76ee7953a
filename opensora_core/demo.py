"""The demo model shipped in the repository's ``demo/`` folder: where its files are and how to sample it.

``demo/demo.json`` names the files (a ComfyUI models-folder layout under ``demo/models``) and the
settings the model was trained for (64x64, 17 frames, 8 fps, no aesthetic score); ``opensora-generate
--demo`` and the demo tests read it through :func:`load_demo`. The files are made from scratch by
``scripts/make_demo.sh`` (see ``demo/README.md``). Nothing is read at import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .loading import load_dit, load_vae
from .pipeline import Components, GenerationSpec
from .text.t5 import load_t5_encoder

DEMO_DIR_ENV = "OPENSORA_DEMO_DIR"
DEMO_CONFIG = "demo.json"


@dataclass(frozen=True)
class Demo:
    """The demo files and their sampling settings."""

    root: Path
    model: Path  # STDiT3 (diffusion_models/)
    vae: Path  # VAE v1.2 pipeline (vae/)
    text_encoder: Path  # T5 folder with a ByT5 byte tokenizer (text_encoders/)
    reference: Path  # a 64x64 first frame for image-to-video
    prompt: str
    height: int
    width: int
    num_frames: int
    fps: float
    steps: int
    cfg_scale: float
    seed: int
    condition_frame_length: int  # latent frames a loop round continues from (a clip has 5)
    shift_scale: float = 1.0  # factor on the official timestep shift the demo samples with (1.0 = official)


def demo_dir() -> Path:
    """``$OPENSORA_DEMO_DIR``, else the ``demo/`` folder of the checkout this package runs from."""
    env = os.environ.get(DEMO_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "demo"


def load_demo(root: str | os.PathLike | None = None) -> Demo:
    """Read ``demo.json`` and check that every file it names exists."""
    root = Path(root) if root is not None else demo_dir()
    config_path = root / DEMO_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(
            f"demo files not found: {config_path} is missing. The demo model ships in the repository's demo/ "
            f"folder: run from a clone (pip install -e .), or set {DEMO_DIR_ENV} to that folder"
        )
    config = json.loads(config_path.read_text())
    files = {key: root / config["files"][key] for key in ("model", "vae", "text_encoder", "reference")}
    for key, path in files.items():
        if not path.exists():
            raise FileNotFoundError(f"demo {key} file not found: {path}; rebuild it with scripts/make_demo.sh")
    sampling = config["sampling"]
    return Demo(root=root, prompt=config["prompt"], **files, **sampling)


def load_components(demo: Demo | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32):
    """The demo's STDiT3, VAE v1.2 and T5 as :class:`opensora_core.pipeline.Components`."""
    demo = demo or load_demo()
    model = load_dit(demo.model, dtype=dtype, device=device).model
    vae = load_vae(demo.vae, dtype=dtype, device=device)
    max_length, _ = model.caption_shape
    text = load_t5_encoder(demo.text_encoder, max_length=max_length, dtype=dtype, device=device)
    return Components(model, vae, text)


def demo_spec(demo: Demo | None = None, **overrides):
    """A :class:`opensora_core.pipeline.GenerationSpec` with the demo's settings (``overrides`` win)."""
    demo = demo or load_demo()
    settings = dict(prompts=[demo.prompt], height=demo.height, width=demo.width, num_frames=demo.num_frames,
                    fps=demo.fps, steps=demo.steps, cfg_scale=demo.cfg_scale, seed=demo.seed,
                    condition_frame_length=demo.condition_frame_length, aesthetic_score=None,
                    shift_scale=demo.shift_scale)
    return GenerationSpec(**{**settings, **overrides})


__all__ = ["DEMO_CONFIG", "DEMO_DIR_ENV", "Demo", "demo_dir", "demo_spec", "load_components", "load_demo"]
