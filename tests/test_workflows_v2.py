"""The Open-Sora 2.0 workflows: valid nodes, links and widget values on the official file names, equal to
what scripts/make_v2_workflows.py writes, and each runs to an MP4 on tiny models of the real classes (at
48x32, 9 frames, 2 steps instead of the shipped sizes; 1 block on the device of the tiny model's 2), the
native MODEL ones through the stand-in's SamplerCustomAdvanced.
The text-to-image-to-video workflow's Flux half (ComfyUI core nodes) is checked for links and values here
and runs with a loaded image in its place; the whole graph runs in a real ComfyUI (tests/tiny_flux_files.py)."""

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
from opensora_core.geometry.opensora_v2 import image_size  # noqa: E402

WORKFLOWS = sorted((REPO / "workflows").glob("open_sora_2_*.json"))
OFFICIAL = {"Open_Sora_v2.safetensors", "hunyuan_vae.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors"}
FLUX_FILES = {"diffusion_models": "flux1-dev.safetensors", "vae": "ae.safetensors"}  # listed here, never loaded
FILE_INPUTS = ("model_name", "vae_name", "t5_name", "clip_name", "unet_name", "clip_name1", "clip_name2")


def _generator():
    spec = importlib.util.spec_from_file_location("make_v2_workflows", REPO / "scripts" / "make_v2_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_v2_workflows")
    write_models(root / "models")
    for folder, name in FLUX_FILES.items():
        (root / "models" / folder / name).write_bytes(b"")
    (root / "input").mkdir()
    image = torch.linspace(0, 1, 48 * 64 * 3).reshape(1, 48, 64, 3)
    media.write_video(image, root / "input" / "opensora_first_frame.png", fps=1)
    media.write_video(image.flip(1), root / "input" / "opensora_last_frame.png", fps=1)
    with comfy_stub.installed(root) as env:
        from comfy_stub.core_nodes import CORE_NODES

        env.defs = {**env.nodes, **CORE_NODES}
        yield env


def test_workflows_are_shipped_as_the_generator_writes_them():
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
    files = {e["inputs"][k] for e in prompt.values() for k in FILE_INPUTS if k in e["inputs"]}
    flux = any(e["class_type"] == "UNETLoader" for e in prompt.values())
    assert files == OFFICIAL | (set(FLUX_FILES.values()) if flux else set())


def _first_frame_loaded(prompt: dict) -> dict:
    """The prompt with the Flux image (the core nodes' VAEDecode) replaced by a loaded image (unchanged
    without Flux nodes)."""
    from comfy_stub.core_nodes import FLUX_NODES

    kept = {i: e for i, e in prompt.items() if e["class_type"] not in FLUX_NODES}
    for decode_id in [i for i, e in prompt.items() if e["class_type"] == "VAEDecode"]:
        kept[decode_id] = {"class_type": "LoadImage", "inputs": {"image": "opensora_first_frame.png"}}
    def cut_off(entry: dict) -> bool:  # fed by a node that is gone (the core KSampler of the Flux half)
        return any(isinstance(v, list) and v[0] not in kept for v in entry["inputs"].values())

    while cut := [i for i, e in kept.items() if cut_off(e)]:
        kept = {i: e for i, e in kept.items() if i not in cut}
    return kept


def test_text_to_image_to_video_feeds_one_prompt_and_the_flux_image_to_the_2_0_chain(env):
    prompt = workflow_api.to_api(json.loads((REPO / "workflows" / "open_sora_2_text_to_image_to_video.json")
                                            .read_text()), env.defs)
    by_type = {e["class_type"]: (i, e["inputs"]) for i, e in prompt.items()}
    (text_id, _), (decode_id, _) = by_type["PrimitiveStringMultiline"], by_type["VAEDecode"]
    assert by_type["CLIPTextEncode"][1]["text"] == by_type["OpenSoraTextEncode"][1]["text"] == [text_id, 0]
    assert by_type["OpenSoraConditionImages"][1] == {"condition_type": "i2v_head", "image_1": [decode_id, 0]}
    flux_clip, video = by_type["DualCLIPLoader"][1], (by_type["OpenSoraT5Loader"][1], by_type["OpenSoraCLIPLoader"][1])
    assert (flux_clip["clip_name1"], flux_clip["clip_name2"]) == (video[0]["t5_name"], video[1]["clip_name"])
    latent, sampler = by_type["EmptySD3LatentImage"][1], by_type["OpenSoraSampler"][1]
    flux_hw, video_hw = (latent["height"], latent["width"]), (sampler["height"], sampler["width"])
    assert flux_hw == image_size("768px", "16:9") and video_hw == image_size("256px", "16:9")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_to_an_mp4(env, path):
    workflow = json.loads(path.read_text())
    prompt = _first_frame_loaded(workflow_api.to_api(workflow, env.defs))
    for entry in prompt.values():
        if entry["class_type"] in ("OpenSoraSampler", "OpenSoraSamplingSettings", "OpenSoraEmptyLatentVideo"):
            entry["inputs"].update(width=48, height=32, num_frames=9)
        if entry["class_type"] in ("OpenSoraSampler", "OpenSoraSigmas"):
            entry["inputs"]["steps"] = 2
        if entry["class_type"] == "OpenSoraModelLoaderMemory":  # the tiny model has 2 blocks (57 released)
            entry["inputs"]["blocks_on_device"] = 1
    run = workflow_api.execute(prompt, env.defs, extra_pnginfo={"workflow": workflow})
    (decode_id,) = [i for i, e in prompt.items() if e["class_type"] == "OpenSoraVAEDecode"]
    images, fps = run.outputs[decode_id]
    assert images.shape == (9, 32, 48, 3) and fps == 24.0
    ((_, ui),) = run.ui.items()
    (saved,) = ui["images"]
    assert media.probe(env.output / saved["subfolder"] / saved["filename"]).num_frames == 9


def test_reduced_text_to_image_to_video_for_the_real_comfyui_is_valid(env):
    """tests/tiny_flux_files.py's reduced copy (what the real-ComfyUI run executes) keeps the graph valid."""
    from tiny_flux_files import T5_FP8_NAME, reduced_workflow

    (env.models / "text_encoders" / T5_FP8_NAME).write_bytes(b"")  # listed only
    shipped = json.loads((REPO / "workflows" / "open_sora_2_text_to_image_to_video.json").read_text())
    workflow = reduced_workflow(shipped)
    prompt = workflow_api.to_api(workflow, env.defs)
    assert workflow_api.check_links(workflow, env.defs) == [] and workflow_api.check_values(prompt, env.defs) == []
    by_type = {e["class_type"]: e["inputs"] for e in prompt.values()}
    assert (by_type["OpenSoraSampler"]["width"], by_type["OpenSoraSampler"]["num_frames"]) == (48, 9)
    assert by_type["DualCLIPLoader"]["clip_name1"] == T5_FP8_NAME and by_type["KSampler"]["steps"] == 1
    path = REPO / "workflows" / "open_sora_2_text_to_image_to_video.json"
    assert shipped == json.loads(path.read_text())  # reduced_workflow copies; the loaded workflow is unchanged


def test_fp8_safetensors_writer_gives_a_file_safetensors_reads(tmp_path):
    from safetensors.torch import load_file
    from tiny_flux_files import write_fp8_safetensors

    shapes = {"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 4), "encoder.final_layer_norm.weight": (4,)}
    write_fp8_safetensors(tmp_path / "t5.safetensors", shapes)
    loaded = load_file(str(tmp_path / "t5.safetensors"))
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    assert all(v.dtype == torch.float8_e4m3fn for v in loaded.values())
    assert torch.equal(loaded["encoder.final_layer_norm.weight"].float(), torch.ones(4))
    assert 0 < loaded["encoder.block.0.layer.0.SelfAttention.q.weight"].float().std() < 0.1
