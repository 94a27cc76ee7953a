"""workflows/opensora_demo_*: the five example workflows switched to the bundled demo model run to MP4s.

They are executed with the ComfyUI stand-in on the shipped demo files, laid out as a user would
(demo/models/* in the models folder, demo/inputs/* in the input folder), at the shipped settings.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

import comfy_stub
import workflow_api
from conftest import REPO
from opensora_core import media
from opensora_train import demo

DEMO_WORKFLOWS = sorted((REPO / "workflows").glob("opensora_demo_*.json"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_demo_workflows", REPO / "scripts" / "make_demo_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_demo")
    shutil.copytree(REPO / "demo" / "models", root / "models")
    shutil.copytree(REPO / "demo" / "inputs", root / "input")
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.defs = {**env.nodes, **CORE_NODES}
        yield env


def test_every_example_workflow_has_a_demo_copy_made_by_the_script(tmp_path):
    official = sorted(p.stem.removeprefix("opensora_") for p in (REPO / "workflows").glob("opensora_*.json")
                      if not p.name.startswith("opensora_demo_"))  # Open-Sora's (the demo model is an STDiT3)
    assert [p.stem.removeprefix("opensora_demo_") for p in DEMO_WORKFLOWS] == official
    _generator().main(["--output", str(tmp_path)])
    for path in DEMO_WORKFLOWS:
        assert json.loads(path.read_text()) == json.loads((tmp_path / path.name).read_text()), (
            f"{path.name} is stale: run python scripts/make_demo_workflows.py")


@pytest.mark.parametrize("path", DEMO_WORKFLOWS, ids=lambda p: p.stem)
def test_demo_workflow_runs_on_the_shipped_files(env, path):
    workflow = json.loads(path.read_text())
    prompt = workflow_api.to_api(workflow, env.defs)
    assert workflow_api.check_values(prompt, env.defs) == []
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    loops = next((e["inputs"]["loops"] for e in prompt.values() if e["class_type"] == "OpenSoraSampler"), 1)
    frames = demo.SAMPLING["num_frames"]
    expected = frames + (loops - 1) * (frames - 1)  # a round continues from 1 latent = 1 pixel frame
    assert images.shape == (expected, demo.SIZE, demo.SIZE, 3)
    native = any(e["class_type"] == "OpenSoraNativeModelLoader" for e in prompt.values())
    assert fps == (24.0 if native else demo.SAMPLING["fps"])  # native: the video's fps is set in CreateVideo
    ((_, ui),) = run.ui.items()
    (saved,) = ui["images"]
    file = env.output / saved["subfolder"] / saved["filename"]
    assert media.probe(file).num_frames == expected


@pytest.mark.parametrize("path", DEMO_WORKFLOWS, ids=lambda p: p.stem)
def test_demo_workflow_samples_at_the_demo_guidance(env, path):
    """Every guidance widget (Open-Sora Sampler, KSampler, CFGGuider) is the demo's CFG, not the official one's:
    the small DiT overshoots at high guidance (demo/README.md)."""
    prompt = workflow_api.to_api(json.loads(path.read_text()), env.defs)
    guidance = [e["inputs"]["cfg"] for e in prompt.values() if "cfg" in e["inputs"]]
    assert guidance and all(cfg == demo.SAMPLING["cfg_scale"] for cfg in guidance), guidance
