"""The Open-Sora 2.0 workflows: valid nodes, links and widget values on the official file names, equal to
what scripts/make_v2_workflows.py writes, and each runs to an MP4 on tiny models of the real classes (at
48x32, 9 frames, 2 steps instead of the shipped sizes; 1 block on the device of the tiny model's 2), the
native MODEL ones through the stand-in's SamplerCustomAdvanced."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")
import comfy_stub  # noqa: E402
import workflow_api  # noqa: E402
from conftest import REPO  # noqa: E402
from tiny_v2_files import write_models  # noqa: E402

from opensora_core import media  # noqa: E402

WORKFLOWS = sorted((REPO / "workflows").glob("open_sora_2_*.json"))
OFFICIAL = {"Open_Sora_v2.safetensors", "hunyuan_vae.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors"}


def _generator():
    spec = importlib.util.spec_from_file_location("make_v2_workflows", REPO / "scripts" / "make_v2_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_v2_workflows")
    write_models(root / "models")
    (root / "input").mkdir()
    image = torch.linspace(0, 1, 48 * 64 * 3).reshape(1, 48, 64, 3)
    media.write_video(image, root / "input" / "opensora_first_frame.png", fps=1)
    media.write_video(image.flip(1), root / "input" / "opensora_last_frame.png", fps=1)
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.defs = {**env.nodes, **CORE_NODES}
        yield env


def test_the_workflows_are_shipped_as_the_generator_writes_them():
    generator = _generator()
    assert [p.stem for p in WORKFLOWS] == sorted(f"open_sora_2_{t}" for t in generator.TASKS)
    for path in WORKFLOWS:
        task = path.stem.removeprefix("open_sora_2_")
        assert json.loads(path.read_text()) == generator.ui_workflow(task), f"rerun scripts/make_v2_workflows.py"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid_on_the_official_file_names(env, path):
    workflow = json.loads(path.read_text())
    assert workflow_api.check_links(workflow, env.defs) == []
    prompt = workflow_api.to_api(workflow, env.defs)
    assert workflow_api.check_values(prompt, env.defs) == []
    files = {e["inputs"][k] for e in prompt.values() for k in ("model_name", "vae_name", "t5_name", "clip_name")
             if k in e["inputs"]}
    assert files == OFFICIAL


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_to_an_mp4(env, path):
    workflow = json.loads(path.read_text())
    prompt = workflow_api.to_api(workflow, env.defs)
    for entry in prompt.values():
        if entry["class_type"] in ("OpenSoraSampler", "OpenSoraSamplingSettings", "OpenSoraEmptyLatentVideo"):
            entry["inputs"].update(width=48, height=32, num_frames=9)
        if entry["class_type"] in ("OpenSoraSampler", "OpenSoraSigmas"):
            entry["inputs"]["steps"] = 2
        if entry["class_type"] == "OpenSoraModelLoaderMemory":  # the tiny model has 2 blocks (the released 57)
            entry["inputs"]["blocks_on_device"] = 1
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    assert images.shape == (9, 32, 48, 3) and fps == 24.0
    ((_, ui),) = run.ui.items()
    (saved,) = ui["images"]
    assert media.probe(env.output / saved["subfolder"] / saved["filename"]).num_frames == 9
