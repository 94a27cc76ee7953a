"""The Open-Sora-Plan v1.3 example workflows: valid, on the released file names, and they run to an MP4 on tiny
models of the real classes saved under those names (ComfyUI stand-in; sampled at 64x32, 9 frames, 2 steps
instead of the shipped 640x352, 93 frames, 100 steps)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import comfy_stub
import tiny_osp
import workflow_api
from conftest import REPO
from opensora_core import media

WORKFLOWS = [REPO / "workflows" / f"open_sora_plan_{task}.json" for task in ("text_to_video", "image_to_video")]
MODEL_FILES = {"text_to_video": tiny_osp.COMFY_T2V, "image_to_video": tiny_osp.COMFY_I2V}
SMALL = {"width": 64, "height": 32, "num_frames": 9, "steps": 2}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    tiny_osp.write_comfy(root / "models")
    (root / "input").mkdir()
    media.write_video(torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0)),
                      root / "input" / "opensora_first_frame.png", fps=1)
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.defs = {**env.nodes, **CORE_NODES}
        yield env


def _task(path) -> str:
    return path.stem.removeprefix("open_sora_plan_")


@pytest.mark.parametrize("path", WORKFLOWS, ids=_task)
def test_nodes_links_and_values_are_valid(env, path):
    workflow = json.loads(path.read_text())
    assert workflow_api.check_links(workflow, env.defs) == []
    assert workflow_api.check_values(workflow_api.to_api(workflow, env.defs), env.defs) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=_task)
def test_the_released_file_names_and_settings_are_used_and_explained(path):
    workflow = json.loads(path.read_text())
    values = {n["type"]: n["widgets_values"] for n in workflow["nodes"]}
    assert values["OpenSoraModelLoader"][0] == MODEL_FILES[_task(path)]
    assert (values["OpenSoraVAELoader"][0], values["OpenSoraT5Loader"][0]) == (tiny_osp.COMFY_VAE, tiny_osp.COMFY_MT5)
    width, height, frames, fps, steps, cfg, seed = values["OpenSoraSampler"][:7]
    assert (width, height, frames, fps, steps, cfg, seed) == (640, 352, 93, 18, 100, 7.5, 1234)
    note = values["MarkdownNote"][0]
    for words in ("models/diffusion_models", "models/vae", "models/text_encoders", "LanguageBind/Open-Sora-Plan-v1.3.0",
                  "google/mt5-xxl", "any93x640x640"):
        assert words in note


@pytest.mark.parametrize("path", WORKFLOWS, ids=_task)
def test_runs_to_an_mp4(env, path):
    workflow = json.loads(path.read_text())
    prompt = workflow_api.to_api(workflow, env.defs)
    (sampler_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraSampler"]
    prompt[sampler_id]["inputs"].update(SMALL)
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    assert images.shape == (9, 32, 64, 3) and fps == 18.0
    ((_, ui),) = run.ui.items()
    (saved,) = ui["images"]
    assert media.probe(env.output / saved["subfolder"] / saved["filename"]).num_frames == 9


def test_the_committed_workflows_are_the_generator_output():
    spec = importlib.util.spec_from_file_location("make_osp_workflows", REPO / "scripts" / "make_osp_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, task in zip(WORKFLOWS, ("t2v", "i2v"), strict=True):
        assert json.loads(path.read_text()) == module.build(task), f"run scripts/make_osp_workflows.py ({path.name})"
