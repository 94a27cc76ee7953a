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

WORKFLOWS = sorted(p for p in (REPO / "workflows").glob("*.json") if not p.name.startswith("opensora_demo_"))
TASKS = {"text_to_video", "image_to_video", "stitch_two_images", "infinite_extension", "video_to_video"}
OFFICIAL_FILES = {
    "OpenSoraModelLoader": "OpenSora-STDiT-v3.safetensors",
    "OpenSoraVAELoader": "OpenSora-VAE-v1.2.safetensors",
    "OpenSoraT5Loader": "t5xxl_fp16.safetensors",
}
SMALL = {"width": 48, "height": 32, "steps": 2}


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
    assert loaders == OFFICIAL_FILES
    notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote")
    for folder, name in [("diffusion_models", "OpenSora-STDiT-v3"), ("vae", "OpenSora-VAE-v1.2"), ("text_encoders", "t5xxl")]:
        assert folder in notes and name in notes


def _expected_frames(sampler_inputs: dict) -> int:
    frames, loops = sampler_inputs["num_frames"], sampler_inputs["loops"]
    condition = sampler_inputs["condition_frame_length"] or 5
    drop = extension_drop_frames(condition, frames, VAE_V1_2) if loops > 1 else 0
    return frames + (loops - 1) * (frames - drop)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_to_an_mp4(env, path):
    workflow = _load(path)
    prompt = workflow_api.to_api(workflow, env.defs)
    (sampler_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraSampler"]
    sampler = prompt[sampler_id]["inputs"]
    sampler.update(SMALL, num_frames=34 if sampler["loops"] > 1 else 17)
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    assert images.shape == (_expected_frames(sampler), 32, 48, 3) and fps == 24.0
    ((save_id, ui),) = run.ui.items()
    (saved,) = ui["images"]
    file = env.output / saved["subfolder"] / saved["filename"]
    assert file.suffix == ".mp4" and media.probe(file).num_frames == images.shape[0]


# app/custom_node_manager.py (ComfyUI): the folders a pack's templates may sit in, in the order tried.
COMFY_TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def test_comfyui_lists_and_serves_the_official_and_the_demo_workflows():
    """ComfyUI lists ``<pack>/<folder>/*.json`` of every folder above (no subfolders) but serves each pack's
    templates from the first of them that exists only; so all of them must sit directly in one folder."""
    present = [name for name in COMFY_TEMPLATE_FOLDERS if (REPO / name).is_dir()]
    assert present == ["workflows"]
    listed = {p.stem for name in present for p in (REPO / name).glob("*.json")}
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
