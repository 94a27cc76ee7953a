#!/usr/bin/env python3
"""Write workflows/opensora_demo_*.json: the five example workflows switched to the bundled demo model.

Each demo workflow is the shipped one with the demo file names (demo/models), fp32 weights, the
demo's size and settings (64x64, 17 frames, 8 fps, no aesthetic score), demo prompts and the demo
input files (demo/inputs). They sit beside the official ones in workflows/, the one folder ComfyUI
lists and serves as the pack's templates (it reads ``<pack>/workflows/*.json``, no subfolders). Run it
again after editing a workflow in workflows/; a test checks that the committed files equal its output.

    python scripts/make_demo_workflows.py [--output workflows]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from opensora_train import demo  # the demo's file names, prompt and settings (one place)

REPO = Path(__file__).resolve().parents[1]

FILES = {
    "OpenSoraModelLoader": [Path(demo.FILES["model"]).name, "fp32", "sdpa"],
    "OpenSoraNativeModelLoader": [Path(demo.FILES["model"]).name, "default"],
    "OpenSoraVAELoader": [Path(demo.FILES["vae"]).name, "fp32"],
    "OpenSoraT5Loader": [Path(demo.FILES["text_encoder"]).name + "/", "fp32"],
}
S = demo.SAMPLING
# Per workflow: prompt, input files, mask strategy / frames, loops, condition frames.
TASKS = {
    "text_to_video": {"prompt": "a green square moves up on a gray background"},
    "image_to_video": {"prompt": demo.PROMPT, "images": [Path(demo.FILES["reference"]).name]},
    "stitch_two_images": {"prompt": "a yellow square moves down on a gray background",
                          "images": ["opensora_demo_stitch_first.png", "opensora_demo_stitch_last.png"]},
    "infinite_extension": {"prompt": "|0|a red circle moves to the right on a black background"
                                     "|1|a red circle moves down on a black background", "loops": 2},
    "video_to_video": {"prompt": demo.v2v_edit(demo.SOURCE_CLIP).caption,  # the source's circle as a square
                       "video": "opensora_demo_source.mp4", "strategy": f"0,0,0,0,5,{demo.V2V_EDIT_RATIO}"},
    "native_text_to_video": {"prompt": "a blue square moves to the left on a black background"},
    "native_image_to_video": {"prompt": demo.PROMPT, "images": [Path(demo.FILES["reference"]).name]},
}
# the demo samples with 60 steps; KSampler's 'simple' schedule hits Open-Sora's grid when the steps divide 1000
KSAMPLER_STEPS = 50
NOTE = """## Open-Sora demo model (bundled, no download)

This is the *{task}* example switched to the tiny demo model this repository ships and rebuilds
(`demo/README.md`). It knows one small world: a red, green, blue or yellow circle or square moving
up, down, left or right on a black or gray background, at 64x64, 17 frames, 8 fps.

| ComfyUI folder | demo file (in this repository) |
| --- | --- |
| `models/diffusion_models` | `demo/models/diffusion_models/{model}` |
| `models/vae` | `demo/models/vae/{vae}` |
| `models/text_encoders` | `demo/models/text_encoders/{t5}/` (a folder) |
| `input` | `demo/inputs/*` |

Copy them there, or add `demo/models` to ComfyUI's `extra_model_paths.yaml` (see `demo/README.md`).
The same graph with the official file names and sizes is `workflows/opensora_{task}.json`."""


def convert(workflow: dict, task: str) -> dict:
    spec = TASKS[task]
    out = copy.deepcopy(workflow)
    _drop_resolution_node(out)
    images = iter(spec.get("images", []))
    for node in out["nodes"]:
        kind, values = node["type"], node.get("widgets_values")
        if kind in FILES:
            node["widgets_values"] = list(FILES[kind])
        elif kind == "OpenSoraTextEncode":
            values[0] = spec["prompt"]
            values[2] = -1.0  # the demo was trained without an aesthetic score
        elif kind == "LoadImage":
            values[0] = next(images)
        elif kind == "LoadVideo":
            values[0] = spec["video"]
        elif kind == "ImageFromBatch":
            values[1] = S["num_frames"]
            node["title"] = f"First {S['num_frames']} frames"  # the title says what the node takes
        elif kind == "OpenSoraMaskBuilder" and "strategy" in spec:
            values[1] = spec["strategy"]
            values[4] = demo.V2V_EDIT_RATIO  # the edit_ratio widget: what the 'edit whole video' preset uses
        elif kind == "OpenSoraSampler":
            values[:7] = [S["width"], S["height"], S["num_frames"], S["fps"], S["steps"], S["cfg_scale"], S["seed"]]
            values[8] = spec.get("loops", 1)
            values[9] = S["condition_frame_length"] if spec.get("loops", 1) > 1 else 0
            values[12] = S["shift_scale"]
        elif kind == "OpenSoraSaveVideo":
            values[0], values[1] = S["fps"], f"OpenSora/demo_{task}"
        elif kind == "MarkdownNote":
            values[0] = NOTE.format(task=task, model=FILES["OpenSoraModelLoader"][0],
                                    vae=FILES["OpenSoraVAELoader"][0], t5=FILES["OpenSoraT5Loader"][0][:-1])
        else:
            _convert_native(kind, values, task)
    return out


def _convert_native(kind: str, values: list, task: str) -> None:
    """The native MODEL workflows' nodes: demo size, frames, fps, shift scale, steps and seed."""
    size = [S["width"], S["height"], S["num_frames"]]
    if kind == "OpenSoraEmptyLatentVideo":
        values[:3] = size
    elif kind == "OpenSoraSamplingSettings":
        values[:4] = [*size, S["fps"]]
        values[5] = S["shift_scale"]
    elif kind == "OpenSoraSigmas":
        values[0] = S["steps"]
    elif kind == "KSampler":
        values[0], values[2], values[3] = S["seed"], KSAMPLER_STEPS, S["cfg_scale"]
    elif kind == "CFGGuider":
        values[0] = S["cfg_scale"]
    elif kind in ("RandomNoise", "OpenSoraReferenceLatent"):
        values[0] = S["seed"]
    elif kind == "CreateVideo":
        values[0] = S["fps"]
    elif kind == "SaveVideo":
        values[0] = f"OpenSora/demo_{task}"


def _drop_resolution_node(workflow: dict) -> None:
    """Remove 'Resolution & Duration' (its presets start at 144p) and type the demo size into the sampler."""
    gone = {n["id"] for n in workflow["nodes"] if n["type"] == "OpenSoraResolution"}
    if not gone:
        return
    dropped = {link[0] for link in workflow["links"] if link[1] in gone}
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] not in gone]
    workflow["links"] = [link for link in workflow["links"] if link[0] not in dropped]
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") in dropped:
                slot["link"] = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=REPO / "workflows")
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        source = REPO / "workflows" / f"opensora_{task}.json"
        target = args.output / f"opensora_demo_{task}.json"
        target.write_text(json.dumps(convert(json.loads(source.read_text()), task), indent=2) + "\n")
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
