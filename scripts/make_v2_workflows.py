#!/usr/bin/env python3
"""Write workflows/open_sora_2_*.json: the Open-Sora 2.0 example workflows on the official file names.

* ``text_to_video``: 256px 16:9 (336x192), 129 frames, 50 steps, guidance 7.5 / image 3.0 (the released
  256px.py settings), T5 + CLIP-L, tiled Hunyuan decode.
* ``image_to_video``: the same with a start image (condition type i2v_head) and the 2.0 Guidance node.
* ``low_memory_loop``: 768px 16:9 (1024x576) for a 24 GB card: fp8 weights, 20 of 57 blocks on the GPU
  (block swap), a first and a last image (i2v_loop), tiled decode.
* ``native_text_to_video`` / ``native_image_to_video``: the same two videos with the MMDiT as a native ComfyUI
  MODEL: ComfyUI's SamplerCustomAdvanced (euler) with the Open-Sora 2.0 Guider (three passes, oscillation,
  image ramp) and Open-Sora Sigmas (the official 50-step schedule); i2v through Open-Sora 2.0 Image to Video.
* ``text_to_image_to_video``: the official t2i2v route: ComfyUI's own Flux nodes (FLUX.1-dev, T5-XXL + CLIP-L,
  guidance 4.0, Euler with the Flux shift for the image size, 50 steps) make the first frame at the 768px
  size of the video's aspect ratio (``img_resolution`` of the official t2i2v configs), which the 2.0 chain
  resizes and centre-crops to the video size and uses as the i2v_head reference. One prompt node feeds both
  text encoders; the Flux and the 2.0 text encoders read the same two files.

The graphs are described below (nodes, widget values, links) and written in ComfyUI's UI format; only the
socket inputs are listed per node (widgets are filled by position, as ComfyUI's frontend loads them). Run it
again after changing a node's inputs; a test checks that the committed files equal its output.

    python scripts/make_v2_workflows.py [--output workflows]
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from opensora_core.geometry.opensora_v2 import image_size  # noqa: E402

# Socket inputs (in schema order) and outputs of the node types used, as the UI format lists them.
SOCKETS = {
    "OpenSoraModelLoader": ([], [("model", "OPENSORA_MODEL")]),
    "OpenSoraModelLoaderMemory": ([], [("model", "OPENSORA_MODEL")]),
    "OpenSoraVAELoader": ([], [("vae", "OPENSORA_VAE")]),
    "OpenSoraT5Loader": ([], [("t5", "OPENSORA_T5")]),
    "OpenSoraCLIPLoader": ([], [("clip_l", "OPENSORA_CLIP")]),
    "OpenSoraTextEncode": ([("t5", "OPENSORA_T5"), ("clip", "CLIP"), ("model", "OPENSORA_MODEL"),
                            ("clip_l", "OPENSORA_CLIP")], [("caption", "OPENSORA_CAPTION"),
                                                           ("conditioning", "CONDITIONING")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "OpenSoraConditionImages": ([("image_1", "IMAGE"), ("image_2", "IMAGE")], [("references", "OPENSORA_REFERENCES")]),
    "OpenSoraGuidance": ([], [("guidance", "OPENSORA_GUIDANCE")]),
    "OpenSoraSampler": ([("model", "OPENSORA_MODEL"), ("vae", "OPENSORA_VAE"), ("positive", "OPENSORA_CAPTION"),
                         ("negative", "OPENSORA_CAPTION"), ("references", "OPENSORA_REFERENCES"),
                         ("guidance", "OPENSORA_GUIDANCE")], [("latent", "LATENT")]),
    "OpenSoraVAEDecode": ([("vae", "OPENSORA_VAE"), ("samples", "LATENT")], [("images", "IMAGE"), ("fps", "FLOAT")]),
    "OpenSoraSaveVideo": ([("images", "IMAGE"), ("fps", "FLOAT")], []),
    "MarkdownNote": ([], []),
    # the native MODEL path
    "OpenSoraNativeModelLoader": ([], [("model", "MODEL")]),
    "OpenSoraSamplingSettings": ([("model", "MODEL")], [("model", "MODEL")]),
    "OpenSoraEmptyLatentVideo": ([("vae", "OPENSORA_VAE")], [("latent", "LATENT")]),
    "OpenSoraNullConditioning": ([("positive", "CONDITIONING")], [("negative", "CONDITIONING")]),
    "OpenSoraV2ImageToVideo": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                                ("references", "OPENSORA_REFERENCES"), ("vae", "OPENSORA_VAE"), ("latent", "LATENT")],
                               [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "OpenSoraV2Guider": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                         [("guider", "GUIDER")]),
    "OpenSoraSigmas": ([("model", "MODEL")], [("sigmas", "SIGMAS")]),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")]),
    "RandomNoise": ([], [("NOISE", "NOISE")]),
    "SamplerCustomAdvanced": ([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                               ("latent_image", "LATENT")], [("output", "LATENT"), ("denoised_output", "LATENT")]),
    # ComfyUI core nodes (v0.3.64) of the Flux first frame
    "PrimitiveStringMultiline": ([], [("STRING", "STRING")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "ModelSamplingFlux": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
}
WIDGET_SOCKETS = {"text": "STRING"}  # widgets a link may feed (the frontend then lists them as inputs)

VIDEO_SIZE = ("256px", "16:9")  # the shipped video size (official 256px.py default)
LOW_MEMORY_SIZE = ("768px", "16:9")
FLUX_RESOLUTION = "768px"  # img_resolution of configs/diffusion/inference/plugins/t2i2v.py
FLUX_GUIDANCE = 4.0  # modify_option_to_t2i
FLUX_STEPS = 50  # the video's num_steps, which the t2i option copies
PROMPT = "a lighthouse on a rocky coast at sunset, waves crashing against the rocks, clouds drifting across the sky"
TILED = ["on", 512, 128]  # the Hunyuan VAE's own tiling: 256-px tiles officially; 512 px here (fewer seams)


def _text_encode(text: str) -> list:
    return [text, "from model", -1, -1, "none", True]  # no aesthetic score (2.0 has none); -1 motion = official 4


def _sampler(width: int, height: int) -> list:
    return [width, height, 129, 24, 50, 7.5, 42, "fixed", 1, 0, 0, 0, 1.0]  # 256px.py: 129 frames, 50 steps, cfg 7.5


def graph(task: str) -> tuple[list[tuple], list[tuple]]:
    """(nodes: (id, type, widget values, title), links: (from id, from slot, to id, to input name))."""
    if task.startswith("native_"):
        return native_graph(task)
    if task == "text_to_image_to_video":
        return flux_first_frame_graph()
    return video_graph(task)


def video_graph(task: str) -> tuple[list[tuple], list[tuple]]:
    low = task == "low_memory_loop"
    loader = (1, "OpenSoraModelLoaderMemory", ["Open_Sora_v2.safetensors", "bf16", "sdpa", "fp8 e4m3fn", 20], None) \
        if low else (1, "OpenSoraModelLoader", ["Open_Sora_v2.safetensors", "bf16", "sdpa"], None)
    nodes = [
        loader,
        (2, "OpenSoraVAELoader", ["hunyuan_vae.safetensors", "bf16"], None),
        (3, "OpenSoraT5Loader", ["t5xxl_fp16.safetensors", "bf16"], None),
        (4, "OpenSoraCLIPLoader", ["clip_l.safetensors", "bf16"], None),
        (5, "OpenSoraTextEncode", _text_encode(PROMPT), "Open-Sora Text Encode (prompt)"),
        (6, "OpenSoraSampler", _sampler(*_width_height(*(LOW_MEMORY_SIZE if low else VIDEO_SIZE))), None),
        (7, "OpenSoraVAEDecode", TILED, None),
        (8, "OpenSoraSaveVideo", [24, f"OpenSora2/{task}", 18], None),
        (9, "MarkdownNote", [_note(task)], None),
    ]
    links = [(3, 0, 5, "t5"), (1, 0, 5, "model"), (4, 0, 5, "clip_l"), (1, 0, 6, "model"), (2, 0, 6, "vae"),
             (5, 0, 6, "positive"), (2, 0, 7, "vae"), (6, 0, 7, "samples"), (7, 0, 8, "images"), (7, 1, 8, "fps")]
    if task == "text_to_video":
        return nodes, links
    nodes += [(10, "LoadImage", ["opensora_first_frame.png", "image"], "First frame"),
              (11, "OpenSoraConditionImages", ["i2v_loop" if low else "i2v_head"], None),
              (12, "OpenSoraGuidance", [3.0, True], None)]
    links += [(10, 0, 11, "image_1"), (11, 0, 6, "references"), (12, 0, 6, "guidance")]
    if low:
        nodes.append((13, "LoadImage", ["opensora_last_frame.png", "image"], "Last frame"))
        links.append((13, 0, 11, "image_2"))
    return nodes, links


NATIVE_SIZE = [336, 192, 129]  # 256px 16:9, 129 frames (256px.py), on the settings node and the empty latent
# column of each node of the native graphs (-1: the note)
NATIVE_COLUMNS = {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 1, 8: 1, 17: 1, 18: 1, 19: 1, 9: 2, 10: 2, 11: 2, 12: 2,
                  13: 2, 14: 3, 15: 3, 16: -1}


def native_graph(task: str) -> tuple[list[tuple], list[tuple]]:
    """The native MODEL graphs: loader -> settings -> guider / sigmas -> SamplerCustomAdvanced -> decode."""
    image = task == "native_image_to_video"
    nodes = [
        (1, "OpenSoraNativeModelLoader", ["Open_Sora_v2.safetensors", "default"], None),
        (2, "OpenSoraVAELoader", ["hunyuan_vae.safetensors", "bf16"], None),
        (3, "OpenSoraT5Loader", ["t5xxl_fp16.safetensors", "bf16"], None),
        (4, "OpenSoraCLIPLoader", ["clip_l.safetensors", "bf16"], None),
        (5, "OpenSoraTextEncode", [PROMPT, "v2.0 (512 tokens)", -1, -1, "none", True],
         "Open-Sora Text Encode (prompt)"),
        (6, "OpenSoraNullConditioning", [], "Negative (the empty prompt)"),
        (7, "OpenSoraSamplingSettings", [*NATIVE_SIZE, 24, "exact", 1.0], None),
        (8, "OpenSoraEmptyLatentVideo", [*NATIVE_SIZE, 1], None),
        (9, "OpenSoraV2Guider", [7.5, 3.0, True], None),  # 256px.py: guidance 7.5, image 3.0, oscillation
        (10, "OpenSoraSigmas", [50], None),
        (11, "KSamplerSelect", ["euler"], None),
        (12, "RandomNoise", [42, "fixed"], None),
        (13, "SamplerCustomAdvanced", [], None),
        (14, "OpenSoraVAEDecode", TILED, None),
        (15, "OpenSoraSaveVideo", [24, f"OpenSora2/{task}", 18], None),
        (16, "MarkdownNote", [NATIVE_NOTE.format(task=task.removeprefix("native_").replace("_", " "),
                                                 extra=EXTRA[task])], None),
    ]
    links = [(3, 0, 5, "t5"), (4, 0, 5, "clip_l"), (5, 1, 6, "positive"), (1, 0, 7, "model"), (2, 0, 8, "vae"),
             (7, 0, 9, "model"), (7, 0, 10, "model"), (12, 0, 13, "noise"), (9, 0, 13, "guider"),
             (11, 0, 13, "sampler"), (10, 0, 13, "sigmas"), (8, 0, 13, "latent_image"), (2, 0, 14, "vae"),
             (13, 0, 14, "samples"), (14, 0, 15, "images"), (14, 1, 15, "fps")]
    if not image:
        return nodes, links + [(5, 1, 9, "positive"), (6, 0, 9, "negative")]
    nodes += [(17, "LoadImage", ["opensora_first_frame.png", "image"], "First frame"),
              (18, "OpenSoraConditionImages", ["i2v_head"], None),
              (19, "OpenSoraV2ImageToVideo", [42, "fixed"], None)]  # the seed of the reference encode
    links += [(17, 0, 18, "image_1"), (5, 1, 19, "positive"), (6, 0, 19, "negative"), (18, 0, 19, "references"),
              (2, 0, 19, "vae"), (8, 0, 19, "latent"), (19, 0, 9, "positive"), (19, 1, 9, "negative")]
    return nodes, links


NATIVE_NOTE = """## Open-Sora 2.0 as a native ComfyUI MODEL: {task}

ComfyUI's own SamplerCustomAdvanced samples the MMDiT: euler, *Open-Sora Sigmas* (the official 50-step schedule,
shifted for the video by *Open-Sora Sampling Settings*) and the *Open-Sora 2.0 Guider* (per step the prompt with
the image, the empty prompt with the image and the empty prompt alone; oscillation; the image guidance ramp) give
the official sampler: the same video as the *Open-Sora Sampler* on the same seed, up to float32 rounding.
KSampler works too (euler, simple, 50 steps, CFG 7.5): the same without oscillation and the third pass.

| ComfyUI folder | file name | download |
| --- | --- | --- |
| `models/diffusion_models` | `Open_Sora_v2.safetensors` (11B MMDiT) | [hpcai-tech/Open-Sora-v2](https://huggingface.co/hpcai-tech/Open-Sora-v2) |
| `models/vae` | `hunyuan_vae.safetensors` | the same repository |
| `models/text_encoders` | `t5xxl_fp16.safetensors`, `clip_l.safetensors` | [comfyanonymous/flux_text_encoders](https://huggingface.co/comfyanonymous/flux_text_encoders) |

Keep the size and frames of *Open-Sora Sampling Settings* and *Open-Sora Empty Latent Video* equal (4k+1 frames,
sides multiples of 16). The negative is the empty prompt that Text Encode encodes beside the prompt.
{extra}"""

def _width_height(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    height, width = image_size(resolution, aspect_ratio)
    return width, height


def flux_first_frame_graph() -> tuple[list[tuple], list[tuple]]:
    """image_to_video with the LoadImage replaced by ComfyUI's Flux nodes (as the flux1-dev example workflow
    of ComfyUI wires them: cfg 1 and the guidance embedded through FluxGuidance)."""
    nodes, links = video_graph("text_to_image_to_video")  # image_to_video's graph ...
    nodes = [n for n in nodes if n[1] != "LoadImage"]  # ... without its LoadImage (id 10)
    links = [link for link in links if link[0] != 10]
    width, height = _width_height(FLUX_RESOLUTION, VIDEO_SIZE[1])
    nodes += [
        (20, "PrimitiveStringMultiline", [PROMPT], "Prompt (image and video)"),
        (21, "UNETLoader", ["flux1-dev.safetensors", "default"], None),
        (22, "DualCLIPLoader", ["t5xxl_fp16.safetensors", "clip_l.safetensors", "flux", "default"], None),
        (23, "CLIPTextEncode", [PROMPT], "CLIP Text Encode (Flux)"),
        (24, "FluxGuidance", [FLUX_GUIDANCE], None),
        (25, "ConditioningZeroOut", [], None),
        (26, "ModelSamplingFlux", [1.15, 0.5, width, height], None),
        (27, "EmptySD3LatentImage", [width, height, 1], "First frame size (768px)"),
        (28, "KSampler", [42, "fixed", FLUX_STEPS, 1.0, "euler", "simple", 1.0], "KSampler (Flux)"),
        (29, "VAELoader", ["ae.safetensors"], None),
        (30, "VAEDecode", [], None),
        (31, "SaveImage", ["OpenSora2/first_frame"], None),
    ]
    links += [(20, 0, 5, "text"), (20, 0, 23, "text"), (22, 0, 23, "clip"), (23, 0, 24, "conditioning"),
              (23, 0, 25, "conditioning"), (21, 0, 26, "model"), (26, 0, 28, "model"), (24, 0, 28, "positive"),
              (25, 0, 28, "negative"), (27, 0, 28, "latent_image"), (28, 0, 30, "samples"), (29, 0, 30, "vae"),
              (30, 0, 11, "image_1"), (30, 0, 31, "images")]
    return nodes, links


NOTE = """## Open-Sora 2.0: {task}

| ComfyUI folder | file name | download |
| --- | --- | --- |
| `models/diffusion_models` | `Open_Sora_v2.safetensors` (11B MMDiT, 22 GB in bf16) | [hpcai-tech/Open-Sora-v2](https://huggingface.co/hpcai-tech/Open-Sora-v2) |
| `models/vae` | `hunyuan_vae.safetensors` (Hunyuan video VAE) | the same repository |
| `models/text_encoders` | `t5xxl_fp16.safetensors` (T5-XXL, as for Flux) | [comfyanonymous/flux_text_encoders](https://huggingface.co/comfyanonymous/flux_text_encoders) |
| `models/text_encoders` | `clip_l.safetensors` (CLIP-L, as for Flux) | the same repository |
{files}
The tokenizers come with ComfyUI (`comfy/text_encoders/t5_tokenizer`, `comfy/sd1_tokenizer`).
Sizes: 256px = 336x192 (16:9), 192x336 (9:16), 256x256 (1:1); 768px = 1024x576, 576x1024, 768x768.
Frames: 4k+1, at most 129. The prompt gets " 24 FPS. 4 motion score." appended (motion_score -1 = 4).
{extra}"""

FLUX_FILES = """| `models/diffusion_models` | `flux1-dev.safetensors` (FLUX.1-dev, for the first frame) | [black-forest-labs/FLUX.1-dev](https://huggingface.co/black-forest-labs/FLUX.1-dev) |
| `models/vae` | `ae.safetensors` (the FLUX.1 image autoencoder) | the same repository |
"""


def _note(task: str) -> str:
    files = FLUX_FILES if task == "text_to_image_to_video" else ""
    return NOTE.format(task=task.replace("_", " "), extra=EXTRA[task], files=files)


EXTRA = {
    "text_to_video": "Memory: about 24 GB at 256px in bf16; see the README for fp8 and block swap.",
    "image_to_video": "The start image becomes latent frame 0 (condition type i2v_head); the 2.0 Guidance node "
                      "sets the image guidance (official 3.0) and the oscillation.",
    "text_to_image_to_video": "The official t2i2v route: FLUX.1-dev makes the first frame at the 768px size of the "
                              "aspect ratio (1024x576 for 16:9; guidance 4.0, Euler, 50 steps), Open-Sora 2.0 animates "
                              "it (i2v_head; the image is resized and centre-cropped to the video size, 336x192). "
                              "The String node feeds both text encoders; keep the two sizes on the same aspect "
                              "ratio. Flux and Open-Sora load the T5 and CLIP-L files separately (ComfyUI's Flux "
                              "CLIP pads T5 to 256 tokens, 2.0 takes 512).",
    "low_memory_loop": "768px on a 24 GB card: fp8 weights and 20 of 57 blocks on the GPU (estimate 18.6 GiB); "
                       "fewer blocks = less memory, slower steps. The first image starts the video and the last "
                       "one ends it (i2v_loop; one image: the same for both).",
    "native_text_to_video": "256px 16:9, 129 frames; ComfyUI loads the model partially when the GPU is small.",
    "native_image_to_video": "The start image is encoded with the seed of *Open-Sora 2.0 Image to Video* and "
                             "conditions latent frame 0 (i2v_head); the guider writes it back at the end.",
}


X_OF_COLUMN = {-1: -620, -2: -1180, -3: -1740}  # the note, then the Flux nodes (ids 20-31) left of it


def _column(task: str, nid: int, node_type: str) -> int:
    if task.startswith("native_"):
        return NATIVE_COLUMNS[nid]
    if node_type == "MarkdownNote":
        return -1
    if nid >= 20:  # the Flux nodes of text_to_image_to_video
        return -3 if nid in (20, 21, 22, 29) else -2
    return 0 if nid <= 4 else 1 if nid in (5, 10, 11, 12, 13) else 2


TASKS = ("text_to_video", "image_to_video", "low_memory_loop", "text_to_image_to_video", "native_text_to_video",
         "native_image_to_video")


def ui_workflow(task: str) -> dict:
    nodes, links = graph(task)
    by_id = {n[0]: n for n in nodes}
    ui_links, ui_nodes = [], []
    inputs = {nid: [dict(name=name, type=kind, link=None) for name, kind in SOCKETS[by_id[nid][1]][0]] for nid in by_id}
    outputs = {nid: [dict(name=name, type=kind, links=[]) for name, kind in SOCKETS[by_id[nid][1]][1]] for nid in by_id}
    for link_id, (src, slot, dst, name) in enumerate(links, start=1):
        if name in WIDGET_SOCKETS and all(entry["name"] != name for entry in inputs[dst]):  # a widget fed by a link
            inputs[dst].append(dict(name=name, type=WIDGET_SOCKETS[name], widget=dict(name=name), link=None))
        target = next(i for i, entry in enumerate(inputs[dst]) if entry["name"] == name)
        kind = outputs[src][slot]["type"]
        ui_links.append([link_id, src, slot, dst, target, kind])
        inputs[dst][target]["link"] = link_id
        outputs[src][slot]["links"].append(link_id)
    tops = {}  # column -> next free y
    for order, (nid, node_type, values, title) in enumerate(sorted(nodes)):
        column = _column(task, nid, node_type)
        height = 520 if node_type in ("MarkdownNote", "LoadImage", "OpenSoraSaveVideo", "SaveImage") else \
            40 + 26 * (len(values) + len(inputs[nid]) + len(outputs[nid])) + (80 if nid in (20, 23) else 0)
        y = tops.get(column, 0)
        tops[column] = y + height + 40
        node = dict(id=nid, type=node_type, pos=[X_OF_COLUMN.get(column, 460 * column), y],
                    size=[560 if column < 0 else 420, height], flags={}, order=order, mode=0, inputs=inputs[nid],
                    outputs=[{**o, "links": o["links"] or None} for o in outputs[nid]],
                    properties={"Node name for S&R": node_type}, widgets_values=values)
        if title:
            node["title"] = title
        ui_nodes.append(node)
    return dict(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"open_sora_2_{task}")), revision=0, last_node_id=max(by_id),
                last_link_id=len(ui_links), nodes=ui_nodes, links=ui_links, groups=[], config={},
                extra={}, version=0.4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "workflows"))
    args = parser.parse_args(argv)
    for task in TASKS:
        path = Path(args.output) / f"open_sora_2_{task}.json"
        path.write_text(json.dumps(ui_workflow(task), indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
