#!/usr/bin/env python3
"""Write workflows/open_sora_plan_{text,image}_to_video.json: the Open-Sora-Plan v1.3 example workflows.

Both are built from the shipped Open-Sora image-to-video workflow (same nodes, layout and node versions)
with the released Open-Sora-Plan v1.3 files and the release sample scripts' settings (93 frames at
640x352, 100 Euler-ancestral steps, guidance 7.5, seed 1234, saved at 18 fps). Run it again after editing
workflows/opensora_image_to_video.json; a test checks that the committed files equal its output.

    python scripts/make_osp_workflows.py [--output workflows]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = "opensora_image_to_video.json"

RELEASE = "Open-Sora-Plan-v1.3.0"
WEIGHTS = "diffusion_pytorch_model.safetensors"
FILES = {  # loader -> widget values: the released folders kept as they are inside ComfyUI's model folders
    "t2v": [f"{RELEASE}/any93x640x640/{WEIGHTS}", "bf16", "sdpa"],
    "i2v": [f"{RELEASE}/any93x640x640_i2v/{WEIGHTS}", "bf16", "sdpa"],
    "OpenSoraVAELoader": [f"{RELEASE}/vae/{WEIGHTS}", "bf16"],
    "OpenSoraT5Loader": ["mt5-xxl/", "bf16"],
}
# sample_t2v_v1_3.sh / sample_inpaint_v1_3.sh: 93x352x640, 100 steps, guidance 7.5, seed 1234, fps 18
SAMPLER = [640, 352, 93, 18, 100, 7.5, 1234, "fixed", 1, 0, 0, 0, 1.0]
DECODE = ["on", 512, 128]
PROMPTS = {
    "t2v": "A quiet beach at dawn, the waves gently lapping at the shore and the sky painted in pastel hues.",
    "i2v": "a lighthouse on a rocky coast, waves crashing, clouds drifting across the sky",
}

NOTE_FILES = f"""## Open-Sora-Plan v1.3: model files

Keep the released folders as they are (the loaders read the `config.json` beside each weights file):

| ComfyUI folder | put there | download |
| --- | --- | --- |
| `models/diffusion_models` | `{RELEASE}/any93x640x640/` (text to video) and `{RELEASE}/any93x640x640_i2v/` (image to video), each `config.json` + `{WEIGHTS}` | [LanguageBind/Open-Sora-Plan-v1.3.0](https://huggingface.co/LanguageBind/Open-Sora-Plan-v1.3.0): `huggingface-cli download LanguageBind/Open-Sora-Plan-v1.3.0 --include "any93x640x640/*" --local-dir models/diffusion_models/{RELEASE}` |
| `models/vae` | `{RELEASE}/vae/` (the WF-VAE: `config.json` + `{WEIGHTS}`) | same repository, `--include "vae/*" --local-dir models/vae/{RELEASE}` |
| `models/text_encoders` | `mt5-xxl/` (the whole folder with its tokenizer) | [google/mt5-xxl](https://huggingface.co/google/mt5-xxl) |

Memory: mT5-XXL encoder (bf16, about 11 GB), the transformer (2.8B, bf16 5.6 GB) and the WF-VAE (0.15B) run one after
another; ComfyUI moves each to the GPU when needed. The sampler holds negative and positive prompt in one batch.
VAE Decode tiling *on* decodes the WF-VAE in exact temporal chunks (the same video, less memory).
"""
NOTE_TASK = {
    "t2v": """### Text to video
The release settings: 93 frames at 640x352 (width x height), 100 Euler-ancestral v-prediction steps, guidance 7.5,
seed 1234, saved at 18 fps. The prompt is wrapped in the release template (`high quality, high aesthetic, ...`)
and the release negative prompt is used unless a Text Encode is connected to the sampler's `negative`.
Frames must be 4n+1; width and height multiples of 16 (the model was trained on multiples of 32). The aesthetic and
motion scores are Open-Sora v1.2 features and are ignored here.""",
    "i2v": """### Image to video
The image becomes the first frame (mask type `i2v`): it is centre-cropped to the output's aspect ratio and resized
as the release script does (`--crop_for_hw`). Mask Builder presets: *first and last frame* = `transition` (connect
`image_2`), *extend from last frames* = `continuation` of a video given as an image batch. Settings as for text to
video: 93 frames at 640x352, 100 steps, guidance 7.5, seed 1234, 18 fps.""",
}


SHIFT_FROM, SHIFT = 1300, 420  # text to video: the sample and save columns move left by the width the image column had


def _source() -> dict:
    return json.loads((REPO / "workflows" / SOURCE).read_text())


def _by_type(workflow: dict, node_type: str) -> dict:
    (node,) = [n for n in workflow["nodes"] if n["type"] == node_type]
    return node


def _drop_reference_nodes(workflow: dict) -> None:
    """Text to video: no LoadImage, no Mask Builder, the sampler's references input unlinked."""
    dropped = {n["id"] for n in workflow["nodes"] if n["type"] in ("LoadImage", "OpenSoraMaskBuilder")}
    gone = {link[0] for link in workflow["links"] if link[1] in dropped or link[3] in dropped}
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] not in dropped]
    workflow["links"] = [link for link in workflow["links"] if link[0] not in gone]
    for node in workflow["nodes"]:
        for socket in node.get("inputs", []):
            if socket.get("link") in gone:
                socket["link"] = None
    group = next(g for g in workflow["groups"] if g["title"].startswith("2."))
    group["title"], group["bounding"] = "2. Prompt", [405, -75, 445, 475]
    for node in workflow["nodes"]:  # close the gap the reference nodes leave
        if node["pos"][0] >= SHIFT_FROM:
            node["pos"] = [node["pos"][0] - SHIFT, node["pos"][1]]
    for group in workflow["groups"]:
        if group["bounding"][0] >= SHIFT_FROM:
            group["bounding"] = [group["bounding"][0] - SHIFT, *group["bounding"][1:]]


def build(task: str) -> dict:
    workflow = copy.deepcopy(_source())
    if task == "t2v":
        _drop_reference_nodes(workflow)
    workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-opensora/open_sora_plan_{task}"))
    _by_type(workflow, "OpenSoraModelLoader")["widgets_values"] = list(FILES[task])
    for loader in ("OpenSoraVAELoader", "OpenSoraT5Loader"):
        _by_type(workflow, loader)["widgets_values"] = list(FILES[loader])
    encode = _by_type(workflow, "OpenSoraTextEncode")
    encode["widgets_values"] = [PROMPTS[task], "from model", -1, -1, "none", True]
    _by_type(workflow, "OpenSoraSampler")["widgets_values"] = list(SAMPLER)
    _by_type(workflow, "OpenSoraVAEDecode")["widgets_values"] = list(DECODE)
    name = "text_to_video" if task == "t2v" else "image_to_video"
    _by_type(workflow, "OpenSoraSaveVideo")["widgets_values"] = [18, f"OpenSoraPlan/{name}", 18]
    _by_type(workflow, "MarkdownNote")["widgets_values"] = [NOTE_FILES + "\n" + NOTE_TASK[task]]
    return workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "workflows")
    args = parser.parse_args(argv)
    for task, name in (("t2v", "text_to_video"), ("i2v", "image_to_video")):
        path = args.output / f"open_sora_plan_{name}.json"
        path.write_text(json.dumps(build(task), indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
