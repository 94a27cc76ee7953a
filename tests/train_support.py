"""Shared helpers of the trainer tests: the checkout's trainer package, tiny assets and a tiny dataset.

``opensora_train`` is the folder train/ (the distribution maps the name), so an editable install
points at one checkout; :func:`use_checkout_trainer` makes every test (and the launcher script of the
multi-process test) import the trainer of the checkout under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import tiny
from conftest import REPO

ALIAS = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "opensora_train", {str(REPO / "train" / "__init__.py")!r}, submodule_search_locations=[{str(REPO / "train")!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["opensora_train"] = module
spec.loader.exec_module(module)
"""


def use_checkout_trainer() -> None:
    current = sys.modules.get("opensora_train")
    if current is not None and Path(current.__file__).resolve() == (REPO / "train" / "__init__.py").resolve():
        return
    for name in [n for n in sys.modules if n == "opensora_train" or n.startswith("opensora_train.")]:
        del sys.modules[name]
    exec(ALIAS, {})


use_checkout_trainer()


def launcher_script(folder: Path) -> Path:
    """A script that runs ``opensora-train`` with this checkout's trainer (for accelerate launch)."""
    path = folder / "launch_train.py"
    sys_path = [str(REPO), str(REPO / "tests")]
    path.write_text(f"import sys\nsys.path[:0] = {sys_path!r}\n{ALIAS}\n"
                    "from opensora_train.cli import main\nsys.exit(main())\n")
    return path


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

H, W = 32, 48  # tiny training size (latent 4 x 6)


def moving_square(frames: int, seed: int, height: int = H, width: int = W) -> torch.Tensor:
    """(T, H, W, 3) uint8: a coloured square moving over a plain background (learnable, compressible)."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(60, 255, (3,), generator=g, dtype=torch.uint8)
    background = torch.randint(0, 60, (3,), generator=g, dtype=torch.uint8)
    video = background.expand(frames, height, width, 3).clone()
    size, dx = height // 3, int(torch.randint(1, 3, (1,), generator=g))
    for t in range(frames):
        x = (t * dx) % (width - size)
        video[t, size : 2 * size, x : x + size] = colour
    return video


def write_clips(folder: Path, count: int = 4, frames: int = 20) -> Path:
    """``count`` MP4 clips with same-name .txt captions."""
    from opensora_core.media import write_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_video(moving_square(frames, seed=i), folder / f"clip{i}.mp4", fps=24)
        (folder / f"clip{i}.txt").write_text(f"a square of colour {i} moves right")
    return folder


# ---------------------------------------------------------------------------
# Tiny weight files
# ---------------------------------------------------------------------------


def write_t5(folder: Path) -> Path:
    """A tiny random T5 encoder folder with the byte-level ByT5 tokenizer (tokenizer_config.json only)."""
    tiny.t5_model().save_pretrained(folder)
    tiny.t5_tokenizer().save_pretrained(folder)
    return folder


def write_vae(path: Path, kind: str = "v1.2") -> Path:
    from opensora_core.checkpoints import save_checkpoint

    vae = tiny.vae_v1_2() if kind == "v1.2" else tiny.sd_vae()
    state = vae.state_dict() if kind == "v1.2" else vae.module.state_dict()
    return save_checkpoint(state, path)


def write_dit(path: Path, class_name: str = "STDiT3", seed: int = 0) -> Path:
    from opensora_core.checkpoints import save_checkpoint

    model = tiny.stdit3(seed) if class_name == "STDiT3" else tiny.stdit2(seed)
    config = tiny.STDIT3 if class_name == "STDiT3" else tiny.STDIT2
    return save_checkpoint(model.state_dict(), path, class_name=class_name, config=config)


def tiny_config(root: Path, *, clips: Path, class_name: str = "STDiT3", **sections) -> dict:
    """A raw config dict for a tiny CPU run (sections merged over the defaults below)."""
    from opensora_train.prepare import prepare_dataset

    csv = root / "meta.csv"
    if not csv.exists():
        prepare_dataset(clips, csv, workers=1)
    assets = root / "assets"
    if not (assets / "t5").exists():
        write_t5(assets / "t5")
    vae = assets / ("vae_v1_2.safetensors" if class_name == "STDiT3" else "sd_vae.safetensors")
    if not vae.exists():
        write_vae(vae, "v1.2" if class_name == "STDiT3" else "sd")
    model = {"class_name": class_name, "config": dict(tiny.STDIT3 if class_name == "STDiT3" else tiny.STDIT2)}
    frames = 17 if class_name == "STDiT3" else 4
    config = {
        "run": {"output_dir": str(root / "out"), "max_steps": 6, "tensorboard": False, "progress_bar": False,
                "seed": 3},
        "model": {**model, "gradient_checkpointing": False},
        "vae": {"path": str(vae), "norm_num_groups": 4},
        "text_encoder": {"path": str(assets / "t5")},
        "data": {"csv": str(csv), "buckets": {"tiny": {str(frames): [1.0, 2]}},
                 "resolutions": {"tiny": {"pixels": H * W, "sizes": {"0.67": [H, W]}}}},
        "optimizer": {"lr": 1e-3, "eps": 1e-8},
        "checkpoint": {"every": 0, "keep_last": 2},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_toml(config: dict, path: Path) -> Path:
    """Write a config dict as TOML (strings, numbers, booleans, lists and nested tables)."""
    lines: list[str] = []

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + " }"
        raise TypeError(type(v))

    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f'"{k}" = {value(v)}' for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


