"""Every shipped workflow: valid nodes, links and widget values, and it runs to an MP4 on tiny models.

The workflows are converted from the UI format with our own converter (tests/workflow_api.py)
and executed with the ComfyUI stand-in (tests/comfy_stub) on tiny models saved under the
official file names. To stay fast, the sampler runs at 48x32 pixels with 2 steps (and 17 frames,
34 with loops) instead of the shipped 426x240, 51 frames, 30 steps; everything else is as shipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import comfy_stub
import workflow_api
from comfy_stub import tiny_models
from conftest import REPO
from opensora_core import media
from opensora_core.conditioning import extension_drop_frames
from opensora_core.geometry import VAE_V1_2

# Open-Sora v1.x's workflows, ours and the native ones (the other systems' are tested in their own files:
# test_osp_workflows.py, test_workflows_v2.py)
WORKFLOWS = sorted(p for p in (REPO / "workflows").glob("opensora_*.json") if not p.name.startswith("opensora_demo_"))
NATIVE_TASKS = {"native_text_to_video", "native_image_to_video"}  # the native MODEL with ComfyUI's samplers
TASKS = {"text_to_video", "image_to_video", "stitch_two_images", "infinite_extension", "video_to_video"} | NATIVE_TASKS
OFFICIAL_FILES = {
    "OpenSoraModelLoader": "OpenSora-STDiT-v3.safetensors",
    "OpenSoraNativeModelLoader": "OpenSora-STDiT-v3.safetensors",
    "OpenSoraVAELoader": "OpenSora-VAE-v1.2.safetensors",
    "OpenSoraT5Loader": "t5xxl_fp16.safetensors",
}
MODEL_LOADERS = {"OpenSoraModelLoader", "OpenSoraNativeModelLoader"}
SMALL = {"width": 48, "height": 32, "steps": 2}
SIZED = ("OpenSoraSampler", "OpenSoraEmptyLatentVideo", "OpenSoraSamplingSettings")  # nodes with width/height/frames


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    tiny_models.write(root / "models", v1_1=False)
    (root / "input").mkdir()
    image = torch.linspace(0, 1, 48 * 64 * 3).reshape(1, 48, 64, 3)
    media.write_video(image, root / "input" / "opensora_first_frame.png", fps=1)
    media.write_video(image.flip(1), root / "input" / "opensora_last_frame.png", fps=1)
    media.write_video(torch.rand(24, 48, 64, 3, generator=torch.Generator().manual_seed(0)),
                      root / "input" / "opensora_source.mp4", fps=24)
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.defs = {**env.nodes, **CORE_NODES}
        yield env


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_five_tasks_are_shipped():
    assert {p.stem.removeprefix("opensora_") for p in WORKFLOWS} == TASKS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_nodes_links_and_values_are_valid(env, path):
    workflow = _load(path)
    used = {n["type"] for n in workflow["nodes"]} - set(workflow_api.FRONTEND_ONLY)
    assert used <= set(env.defs), f"unknown node types: {used - set(env.defs)}"
    assert workflow_api.check_links(workflow, env.defs) == []
    prompt = workflow_api.to_api(workflow, env.defs)
    assert workflow_api.check_values(prompt, env.defs) == []
    assert workflow["last_node_id"] >= max(n["id"] for n in workflow["nodes"])
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_uses_the_official_file_names_and_explains_them(path):
    workflow = _load(path)
    loaders = {n["type"]: n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in OFFICIAL_FILES}
    assert len(set(loaders) & MODEL_LOADERS) == 1 and len(loaders) == 3
    assert loaders == {kind: OFFICIAL_FILES[kind] for kind in loaders}
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote")
    for folder, name in [("diffusion_models", "OpenSora-STDiT-v3"), ("vae", "OpenSora-VAE-v1.2"), ("text_encoders", "t5xxl")]:
        assert folder in notes and name in notes


def _expected_frames(sampler_inputs: dict) -> int:
    frames, loops = sampler_inputs["num_frames"], sampler_inputs.get("loops", 1)
    condition = sampler_inputs.get("condition_frame_length") or 5
    drop = extension_drop_frames(condition, frames, VAE_V1_2) if loops > 1 else 0
    return frames + (loops - 1) * (frames - drop)


def shrink(prompt: dict) -> dict:
    """The shipped prompt at 48x32 pixels and 2 steps (17 frames, 34 with loops), to stay fast on a CPU."""
    for entry in prompt.values():
        kind, inputs = entry["class_type"], entry["inputs"]
        if kind in SIZED:
            inputs.update(width=SMALL["width"], height=SMALL["height"], num_frames=34 if inputs.get("loops", 1) > 1 else 17)
        if kind in ("OpenSoraSampler", "OpenSoraSigmas", "KSampler"):
            inputs["steps"] = SMALL["steps"]
    return prompt


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_to_an_mp4(env, path):
    workflow = _load(path)
    prompt = shrink(workflow_api.to_api(workflow, env.defs))
    sized = next(e["inputs"] for e in prompt.values() if e["class_type"] in SIZED)
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    assert images.shape == (_expected_frames(sized), 32, 48, 3) and fps == 24.0
    ((save_id, ui),) = run.ui.items()
    (saved,) = ui["images"]
    file = env.output / saved["subfolder"] / saved["filename"]
    assert file.suffix == ".mp4" and media.probe(file).num_frames == images.shape[0]


def test_native_workflows_use_comfyui_samplers_and_save_nodes():
    """The native examples: our loader/settings/latent nodes, ComfyUI's own sampler and video save nodes."""
    for task in NATIVE_TASKS:
        used = {n["type"] for n in _load(REPO / "workflows" / f"opensora_{task}.json")["nodes"]}
        assert {"OpenSoraNativeModelLoader", "OpenSoraSamplingSettings", "OpenSoraEmptyLatentVideo",
                "OpenSoraNullConditioning", "CreateVideo", "SaveVideo"} <= used
        assert used & {"KSampler", "SamplerCustomAdvanced"} and "OpenSoraSampler" not in used


# app/custom_node_manager.py (ComfyUI): the folders a pack's templates may sit in, in the order tried.
COMFY_TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def test_comfyui_lists_and_serves_the_official_and_the_demo_workflows():
    """ComfyUI lists ``<pack>/<folder>/*.json`` of every folder above (no subfolders) but serves each pack's
    templates from the first of them that exists only; so all of them must sit directly in one folder."""
    present = [name for name in COMFY_TEMPLATE_FOLDERS if (REPO / name).is_dir()]
    assert present == ["workflows"]
    listed = {p.stem for name in present for p in (REPO / name).glob("opensora_*.json")}  # v1.x (2.0: open_sora_2_*)
    tasks = {t.replace("_", " ") for t in TASKS}
    assert {n.removeprefix("opensora_").replace("_", " ") for n in listed if "_demo_" not in n} == tasks
    assert {n.removeprefix("opensora_demo_").replace("_", " ") for n in listed if "_demo_" in n} == tasks


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_node_titles_say_what_the_node_does(path):
    """A title that names a frame count ('First 51 frames') matches the node's length widget."""
    import re

    for node in json.loads(path.read_text())["nodes"]:
        match = re.search(r"(\d+) frames", node.get("title", ""))
        if match and node["type"] == "ImageFromBatch":
            assert int(match.group(1)) == node["widgets_values"][1], (node["title"], node["widgets_values"])
