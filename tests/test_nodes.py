"""The ComfyUI nodes called directly, with the ComfyUI stand-in (tests/comfy_stub) and tiny models on disk."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys

import pytest
import torch

import comfy_stub
from comfy_stub import tiny_models
from conftest import REPO
from opensora_core import media
from opensora_core.conditioning import PIXEL, MaskGroup

NODES_DIR = REPO / "nodes"
COMFY_ROOTS = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "latent_preview", "server", "execution"}
STANDARD_TYPES = {"IMAGE", "LATENT", "CLIP", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MODEL", "CONDITIONING",
                  "SIGMAS", "GUIDER"}
BASE_NODES = {"OpenSoraModelLoader", "OpenSoraLoraLoader", "OpenSoraVAELoader", "OpenSoraT5Loader", "OpenSoraTextEncode",
              "OpenSoraMaskBuilder", "OpenSoraResolution", "OpenSoraSampler", "OpenSoraVAEDecode", "OpenSoraVAEEncode",
              "OpenSoraSaveVideo"}
BASE_NODES |= {"OpenSoraModelLoaderMemory", "OpenSoraCLIPLoader", "OpenSoraConditionImages", "OpenSoraGuidance"}  # 2.0
NATIVE_NODES = {"OpenSoraNativeModelLoader", "OpenSoraSamplingSettings", "OpenSoraSigmas", "OpenSoraEmptyLatentVideo",
                "OpenSoraNullConditioning", "OpenSoraReferenceLatent", "OpenSoraV2ImageToVideo", "OpenSoraV2Guider"}
OFF = "off (retry tiled on out-of-memory)"
SMALL = dict(width=48, height=32, num_frames=17, fps=24.0, steps=2, cfg=7.0, seed=42, loops=1,
             condition_frame_length=0, condition_frame_edit=0.0, align=0)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    tiny_models.write(root / "models")
    with comfy_stub.installed(root) as env:
        yield env


@pytest.fixture(scope="module")
def v12(env):
    (model,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v3.safetensors", "fp32", "sdpa")
    (vae,) = env.run("OpenSoraVAELoader", "OpenSora-VAE-v1.2.safetensors", "fp32")
    (t5,) = env.run("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    return model, vae, t5


def _encode(env, t5=None, model=None, text="a red ball rolls", length="from model", clip=None, **kw):
    scores = dict(aesthetic_score=6.5, motion_score=-1.0, camera_motion="none", clean_caption=True) | kw
    caption, _ = env.run("OpenSoraTextEncode", text, length, **scores, t5=t5, clip=clip, model=model)
    return caption


def _sample(env, model, vae, caption, **kw):
    (latent,) = env.run("OpenSoraSampler", model, vae, caption, **(SMALL | kw))
    return latent


def _image(seed: int, frames: int = 1) -> torch.Tensor:
    return torch.rand(frames, 40, 56, 3, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# The pack as ComfyUI sees it
# ---------------------------------------------------------------------------


def test_pack_imports_with_only_the_v3_schema_of_comfyui():
    """ComfyUI imports the pack and calls its entry point before any node runs: that needs the pinned V3 schema
    module (comfy_api.v0_0_2) and the server's on-prompt hook (server), nothing else of ComfyUI (no comfy.*,
    folder_paths, latent_preview, nodes); the node list then probes ComfyUI's internals for the native nodes (the
    stand-in has them)."""
    code = (
        "import asyncio, sys; sys.path.insert(0, 'tests'); import comfy_stub;"
        "sys.path.insert(0, str(comfy_stub.SITE)); pack = comfy_stub.load_pack(); extension = pack.comfy_entrypoint();"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in %r and not m.startswith(('comfy_api', 'server'))"
        " or m == 'nodes');"
        "listed = asyncio.run(extension.get_node_list());"
        "print(len(listed), bad)" % sorted(COMFY_ROOTS)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(BASE_NODES | NATIVE_NODES)), "[]"]


def test_pack_needs_no_installed_core(tmp_path):
    """In ComfyUI the pack is custom_nodes/<folder>, imported under that name; opensora_core is not installed
    there, so every module (and every schema) must reach the core relatively, resources included."""
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('opensora_core', 'opensora_train'):\n"
        "            raise ModuleNotFoundError(f'absolute import of {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = [{str(REPO / 'tests')!r}]\n"
        "import pathlib, comfy_stub\n"
        "with comfy_stub.installed(pathlib.Path('comfy')) as env:\n"
        "    print(len(env.nodes))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(BASE_NODES | NATIVE_NODES))]


def test_every_node_is_a_v3_node_registered_by_the_entrypoint(env):
    """All node classes in nodes/ are V3 nodes (define_schema + execute), and the extension lists each once."""
    io = sys.modules["comfy_api.v0_0_2.io"]
    declared = {node.name for path in NODES_DIR.glob("*.py") for node in ast.parse(path.read_text()).body
                if isinstance(node, ast.ClassDef) and node.name.startswith("OpenSora") and not node.name.endswith(
                    ("Extension", "Handle"))}
    assert set(env.nodes) == declared == BASE_NODES | NATIVE_NODES
    for node_id, cls in env.nodes.items():
        assert issubclass(cls, io.ComfyNode) and "execute" in vars(cls) and "define_schema" in vars(cls)


def test_a_failed_probe_leaves_the_native_nodes_out_and_says_why(env, monkeypatch, caplog):
    """ComfyUI's internals are not a public API: when one the native path needs changed, only the native nodes
    are missing, and the log names what changed."""
    import asyncio

    samplers = sys.modules.get("comfy.samplers") or __import__("comfy.samplers").samplers

    def changed(self, x, sigma, denoise_mask, model_options={}, seed=None):  # no longer calls our mask rule
        return self.inner_model(x, sigma)

    monkeypatch.setattr(samplers.KSamplerX0Inpaint, "__call__", changed)
    with caplog.at_level("WARNING", logger="opensora"):
        listed = asyncio.run(env.pack.comfy_entrypoint().get_node_list())
    assert {cls.__name__ for cls in listed} == BASE_NODES
    assert "KSamplerX0Inpaint.__call__ no longer uses denoise_mask_function" in caplog.text


def test_node_ids_names_and_socket_types(env):
    for node_id, cls in env.nodes.items():
        schema = cls.GET_SCHEMA()
        assert node_id.startswith("OpenSora") and node_id == cls.__name__ == schema.node_id
        assert schema.display_name.startswith("Open-Sora") and schema.description.strip()
        assert cls.CATEGORY.startswith("OpenSora") and cls.FUNCTION == "EXECUTE_NORMALIZED"
        spec = cls.INPUT_TYPES()
        sockets = [s for section in ("required", "optional") for s in spec.get(section, {}).values()]
        for typ in [*(s[0] for s in sockets), *cls.RETURN_TYPES]:
            assert typ in STANDARD_TYPES or typ.startswith("OPENSORA_"), (node_id, typ)


def test_every_widget_keeps_its_tooltip(env):
    """Descriptions and input tooltips survive the V3 schema (the frontend shows them on hover)."""
    for node_id, cls in env.nodes.items():
        for item in cls.GET_SCHEMA().inputs:
            is_widget = item.io_type in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
            assert not is_widget or item.tooltip, f"{node_id}.{item.id} has no tooltip"


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node))
    return found


def _module_level(tree: ast.Module) -> set[int]:
    """ids of the statements that run at import: the module body and the bodies of its try/if blocks."""
    found, pending = set(), list(tree.body)
    while pending:
        stmt = pending.pop()
        found.add(id(stmt))
        if isinstance(stmt, ast.Try | ast.If):
            pending += stmt.body + stmt.orelse + [s for h in getattr(stmt, "handlers", []) for s in h.body]
    return found


def test_comfyui_is_imported_only_in_the_bridge_and_the_schema_is_pinned():
    """One module imports ComfyUI; at module level only the V3 schema, pinned to a versioned module."""
    for path in NODES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        comfy = [(name, node) for name, node in _imports(tree) if name.split(".")[0] in COMFY_ROOTS]
        if path.name != "comfy_bridge.py":
            assert comfy == [], f"{path.name} imports ComfyUI; go through comfy_bridge"
            continue
        at_import = {name for name, node in comfy if id(node) in _module_level(tree)}
        assert at_import == {"comfy_api.v0_0_2"}, at_import


def test_node_functions_are_thin_glue():
    for path in NODES_DIR.glob("*.py"):
        for cls in ast.parse(path.read_text()).body:
            if not isinstance(cls, ast.ClassDef) or not cls.name.startswith("OpenSora"):
                continue
            for body in (f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "execute"):
                assert body.end_lineno - body.lineno < 30, f"{cls.name}.execute is {body.end_lineno - body.lineno} lines"


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def test_model_loader_detects_the_version_and_registers_with_comfyui(env):
    assert env.nodes["OpenSoraModelLoader"].INPUT_TYPES()["required"]["model_name"][1]["options"] == [
        "OpenSora-STDiT-v2-stage3.safetensors", "OpenSora-STDiT-v3.safetensors"]
    (v12,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v3.safetensors", "bf16", "sdpa")
    (v11,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32", "sdpa")
    assert (v12.family.release, v11.family.release) == ("v1.2", "v1.1")
    assert next(v12.module.parameters()).dtype == torch.bfloat16
    assert v12.managed.patcher.model.inner is v12.module  # ComfyUI's ModelPatcher manages it


def test_vae_loader_reads_both_kinds(env):
    (v12,) = env.run("OpenSoraVAELoader", "OpenSora-VAE-v1.2.safetensors", "bf16")
    (sd,) = env.run("OpenSoraVAELoader", "sd-vae-ft-ema.safetensors", "fp32")
    assert (v12.geometry.time_factor, sd.geometry.time_factor) == (4, 1)
    assert next(v12.module.parameters()).dtype == torch.bfloat16


def test_t5_loader_lists_files_and_folders_and_finds_the_tokenizer(env, tmp_path):
    choices = env.nodes["OpenSoraT5Loader"].INPUT_TYPES()["required"]["t5_name"][1]["options"]
    assert choices == ["t5-v1_1-xxl/", "t5xxl_fp16.safetensors"]
    (single,) = env.run("OpenSoraT5Loader", "t5xxl_fp16.safetensors", "fp32")
    (folder,) = env.run("OpenSoraT5Loader", "t5-v1_1-xxl/", "fp32")
    text = "a cat"
    assert torch.equal(single.encoder.encode(text).y, folder.encoder.encode(text).y)
    lonely = env.models / "text_encoders" / "lonely" / "t5.safetensors"
    lonely.parent.mkdir()
    lonely.write_bytes((env.models / "text_encoders" / "t5xxl_fp16.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="t5_name: no T5 tokenizer for lonely/t5.safetensors"):
        env.run("OpenSoraT5Loader", "lonely/t5.safetensors", "fp32")
    lonely.unlink()


# ---------------------------------------------------------------------------
# Text encode
# ---------------------------------------------------------------------------


def test_text_encode_gives_the_official_t5_caption(env, v12):
    from opensora_core.text.prompts import prepare_prompt
    from opensora_core.text.t5 import T5TextEncoder

    model, _, t5 = v12
    caption = _encode(env, t5, model, "A Red Ball <b>rolls</b>")
    text = prepare_prompt("A Red Ball <b>rolls</b>", 6.5)
    assert caption.texts == [text] and text.endswith("aesthetic score: 6.5.")
    expected = T5TextEncoder(t5.encoder.model, t5.encoder.tokenizer, max_length=300).encode([text])
    (start, got), = caption.segments
    assert start == 0 and torch.equal(got.y, expected.y) and torch.equal(got.mask, expected.mask)


def test_text_encode_splits_loop_prompts_per_round(env, v12):
    model, _, t5 = v12
    caption = _encode(env, t5, model, "|0|a sunny day|2|a rainy night")
    assert [start for start, _ in caption.segments] == [0, 2]
    assert [c is caption.segments[0][1] for c in caption.per_round(4)] == [True, True, False, False]


def test_text_encode_takes_the_length_from_the_model_or_the_widget(env, v12):
    model, _, t5 = v12
    assert _encode(env, t5, None, length="v1.1 (200 tokens)").max_length == 200
    with pytest.raises(ValueError, match="caption_length is 'v1.1 \\(200 tokens\\)' but the connected STDiT3"):
        _encode(env, t5, model, length="v1.1 (200 tokens)")
    with pytest.raises(ValueError, match="needs the model input connected"):
        _encode(env, t5, None)
    with pytest.raises(ValueError, match="connect a text encoder"):
        _encode(env, None, model)


def test_score_phrases_only_for_v1_2(env, v12):
    model, _, t5 = v12
    (v11,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32", "sdpa")
    assert _encode(env, t5, v11, "a cat", motion_score=5.0, camera_motion="pan left").texts == ["a cat"]
    assert _encode(env, t5, model, "a cat", motion_score=5.0, camera_motion="pan left").texts == [
        "a cat aesthetic score: 6.5. motion score: 5.0. camera motion: pan left."]


class FakeClip:
    """ComfyUI's CLIP (CLIPLoader type sd3, only the T5 loaded), reduced to what Text Encode calls.

    As comfy/sd1_clip.py SDTokenizer: '(word)' is weight syntax unless ``disable_weights``; the T5 tokens
    are padded with id 0 to 77 unless ``tokenizer_options={"t5xxl_min_length": n}``; nothing is truncated;
    CLIP-L/G tokens come along. As sd3_clip.T5XXLModel: the T5 runs without an attention mask.
    """

    def __init__(self, encoder):
        self.model, self.tokenizer = encoder.model, encoder.tokenizer
        self.calls = []

    def tokenize(self, text, return_word_ids=False, **kwargs):
        self.calls.append(kwargs)
        if not kwargs.get("disable_weights"):
            text = text.replace("(", "").replace(")", "")
        ids = self.tokenizer(text)["input_ids"]
        minimum = kwargs.get("tokenizer_options", {}).get("t5xxl_min_length", 77)
        ids = ids + [0] * (minimum - len(ids))
        return {"g": [[(49406, 1.0)]], "l": [[(49406, 1.0)]], "t5xxl": [[(i, 1.0) for i in ids]]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        assert tokens["g"] == [] and tokens["l"] == []
        ids = torch.tensor([[i for i, _ in tokens["t5xxl"][0]]])
        with torch.no_grad():
            return {"cond": self.model(input_ids=ids).last_hidden_state, "pooled_output": None}


@pytest.mark.parametrize("text", ["a (red) ball", "a long prompt " * 40], ids=["weights", "truncated"])
def test_comfyui_clip_gives_the_same_caption_as_our_t5(env, v12, text):
    model, _, t5 = v12
    clip = FakeClip(t5.encoder)
    ours, theirs = _encode(env, t5, model, text), _encode(env, None, model, text, clip=clip)
    assert clip.calls == [{"disable_weights": True, "tokenizer_options": {"t5xxl_min_length": 1}}]
    (_, a), (_, b) = ours.segments[0], theirs.segments[0]
    n = int(a.mask.sum())  # the model reads only the real tokens; padded rows differ (T5 output vs zeros)
    assert torch.equal(a.mask, b.mask) and (n == 300) == ("long" in text)
    torch.testing.assert_close(a.y[:, :, :n], b.y[:, :, :n], rtol=1e-5, atol=1e-5)


def test_a_clip_without_t5_is_refused(env, v12):
    class ClipL:
        def tokenize(self, text, **kwargs):
            return {"l": [[(49406, 1.0), (49407, 1.0)]]}

    with pytest.raises(ValueError, match="clip: this CLIP has no T5-XXL"):
        _encode(env, None, v12[0], clip=ClipL())


# ---------------------------------------------------------------------------
# Mask builder
# ---------------------------------------------------------------------------


def test_mask_builder_validates_at_queue_time(env):
    validate = env.nodes["OpenSoraMaskBuilder"].validate_inputs
    # ComfyUI reports a failed check on every input validate_inputs names: a strategy error is reported once
    assert list(inspect.signature(validate).parameters) == ["mask_strategy"]
    assert validate("0;0,1,0,-1,1") is True
    assert validate("0,0,0,0,1,1.5").startswith("mask_strategy group 1")
    assert validate("0,x").startswith("mask_strategy")
    assert validate("0,4").startswith("mask_strategy group 1 ('0,4")


def test_mask_builder_checks_the_connected_references(env):
    def build(*args, **kwargs):
        return env.run("OpenSoraMaskBuilder", *args, **kwargs)

    with pytest.raises(ValueError, match="mask_strategy group 2 .* uses reference 1, but only 1 reference"):
        build(_image(0), "custom", "0;0,1,0,-1,1", "latent frames", 17, 0.4)
    with pytest.raises(ValueError, match="image_2 is empty but a later image is connected"):
        build(_image(0), "custom", "0", "latent frames", 17, 0.4, image_3=_image(1))
    (refs,) = build(_image(0), "first and last frame (stitching)", "", "latent frames", 17, 0.4, image_2=_image(1))
    assert refs.frame_counts == [1, 1] and refs.task == "first_last"


def test_mask_builder_hands_on_typed_groups_in_their_units(env):
    """The builder parses the text once; the sampler gets the same groups, units included."""
    (refs,) = env.run("OpenSoraMaskBuilder", _image(0, frames=17), "custom", "0,0,0,16,1", "pixel frames", 17, 0)
    [group] = refs.groups  # the pack's own copy of the core classes: compare by value
    assert (group.format(), group.units) == (MaskGroup(target_start=16).format(), PIXEL)
    assert refs.strategy == refs.groups


# ---------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape, message",
                         [((1, 40, 56, 1), "image_2: .*1 channel"), ((0, 40, 56, 3), "image_2: .*empty")])
def test_mask_builder_names_an_image_input_that_holds_no_rgb_frames(env, shape, message):
    with pytest.raises(ValueError, match=message):
        env.run("OpenSoraMaskBuilder", _image(0), "custom", "0;0,1,0,-1,1", "latent frames", 1, 0,
                                              image_2=torch.zeros(shape))


def test_vae_encode_and_save_name_their_images_input(env, v12):
    _, vae, _ = v12
    with pytest.raises(ValueError, match="images: .*1 channel"):
        env.run("OpenSoraVAEEncode", vae, torch.zeros(2, 32, 32, 1))
    with pytest.raises(ValueError, match="images: .*empty"):
        env.run("OpenSoraSaveVideo", torch.zeros(0, 32, 32, 3), 8.0, "empty", 18)


def test_vae_decode_names_a_foreign_latent_and_bad_tiles(env, v12):
    _, vae, _ = v12
    def decode(*args):
        return env.run("OpenSoraVAEDecode", *args)

    with pytest.raises(ValueError, match="samples: the latent has 16 channels but this VAE decodes 4"):
        decode(vae, {"samples": torch.zeros(1, 16, 5, 4, 6)}, OFF, 512, 128)
    with pytest.raises(ValueError, match=r"tile_overlap \(512\) must be smaller than tile_size \(256\)"):
        decode(vae, {"samples": torch.zeros(1, 4, 5, 4, 6)}, "on", 256, 512)


def test_custom_preset_with_an_empty_strategy_is_refused(env):
    """image_1 is required, so an empty custom strategy always leaves a connected reference unused. The
    queue-time check sees only mask_strategy (naming preset there would report every failure on it too),
    so it cannot tell 'custom' from a preset that ignores the text: the node refuses when it runs."""
    builder = env.nodes["OpenSoraMaskBuilder"]
    assert builder.validate_inputs("") is True  # fine with a preset, which does not read the text
    with pytest.raises(ValueError, match="mask_strategy: empty"):
        env.run("OpenSoraMaskBuilder", _image(0), "custom", "", "latent frames", 1, 0)
    (references,) = env.run("OpenSoraMaskBuilder", _image(0), "first frame (image to video)", "", "latent frames", 1, 0)
    assert references.task is not None


def test_sampler_sizes_step_by_8_and_other_sizes_are_refused_with_the_nearest(env, v12):
    inputs = env.nodes["OpenSoraSampler"].INPUT_TYPES()["required"]
    assert inputs["width"][1]["step"] == inputs["height"][1]["step"] == 8  # the UI enters only valid sizes
    model, vae, t5 = v12
    with pytest.raises(ValueError, match="width 70 is not a multiple of 8.*(64|72)"):
        _sample(env, model, vae, _encode(env, t5, model), width=70, height=64)


def _queue_sampler(env, num_frames: int, model_file: str, *, lora: bool = False):
    """Queue a loader -> (LoRA loader) -> sampler prompt as POST /prompt does (on-prompt handlers first), then run
    the sampler's queue-time check on a clone that knows its node id, as ComfyUI's validation does."""
    prompt = {"1": {"class_type": "OpenSoraModelLoader", "inputs": {"model_name": model_file}},
              "3": {"class_type": "OpenSoraSampler", "inputs": {"model": ["2" if lora else "1", 0]}}}
    if lora:
        prompt["2"] = {"class_type": "OpenSoraLoraLoader", "inputs": {"model": ["1", 0]}}
    sys.modules["server"].PromptServer.instance.trigger_on_prompt({"prompt": prompt})
    clone = env.nodes["OpenSoraSampler"].PREPARE_CLASS_CLONE({"UNIQUE_ID": "3"})
    return clone.validate_inputs(num_frames=num_frames)


def test_sampler_refuses_frame_counts_its_model_cannot_take_at_queue_time(env):
    """v1.2's timestep transform takes 1 or >= 17 frames: refused when queued, for the file the loader names
    (also through a LoRA loader), reported once (on num_frames); v1.1 (IDDPM) takes any count."""
    assert list(inspect.signature(env.nodes["OpenSoraSampler"].validate_inputs).parameters) == ["num_frames"]
    v12, v11 = "OpenSora-STDiT-v3.safetensors", "OpenSora-STDiT-v2-stage3.safetensors"
    refused = _queue_sampler(env, 9, v12)
    assert "num_frames=9" in refused and "Open-Sora v1.2" in refused and "17" in refused
    assert "num_frames=9" in _queue_sampler(env, 9, v12, lora=True)
    assert _queue_sampler(env, 17, v12) is True and _queue_sampler(env, 1, v12) is True
    assert _queue_sampler(env, 9, v11) is True
    assert _queue_sampler(env, 9, "missing.safetensors") is True  # the loader reports a missing file


def test_empty_prompt_is_warned_about(env, v12, caplog):
    model, _, t5 = v12
    with caplog.at_level("WARNING", logger="opensora"):
        _encode(env, t5, model, "   ")
    assert "text: the prompt is empty" in caplog.text


def test_loader_nodes_name_a_damaged_file(env, v12):
    """Every loader node: a cut-off download is named with its size and the fix, never a bare SafetensorError."""
    import shutil

    models = env.models
    shutil.copytree(models / "text_encoders" / "t5xxl_fp16_tokenizer", models / "text_encoders" / "cut_tokenizer",
                    dirs_exist_ok=True)
    calls = {
        "diffusion_models": lambda name: env.run("OpenSoraModelLoader", name, "fp32", "sdpa"),
        "vae": lambda name: env.run("OpenSoraVAELoader", name, "fp32"),
        "text_encoders": lambda name: env.run("OpenSoraT5Loader", name, "fp32"),
        "loras": lambda name: env.run("OpenSoraLoraLoader", v12[0], name, 1.0),
    }
    for folder, load in calls.items():
        path = models / folder / "cut.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")  # a header cut short
        with pytest.raises(ValueError, match=r"cut\.safetensors: not a valid safetensors file \(12 bytes.*download"):
            load("cut.safetensors")
        path.unlink()


def test_sampler_reports_every_step_and_loads_through_comfyui(env, v12):
    model, vae, t5 = v12
    caption = _encode(env, t5, model, "|0|a sunny day|1|a rainy night")
    env.progress.clear()
    env.model_management.LOADS.clear()
    env.model_management.REQUIRED.clear()
    latent = _sample(env, model, vae, caption, num_frames=34, loops=2, condition_frame_length=2)
    assert [(value, total) for value, total, _ in env.progress] == [(i, 4) for i in range(1, 5)]
    loads, required = env.model_management.LOADS, env.model_management.REQUIRED
    assert {p.model.inner for p in loads} == {model.module, vae.module}
    assert all(p.full_loads for p in loads)  # plain torch modules cannot run partially loaded
    # the sampling stage asks ComfyUI for room for its activations (T5 is unloaded if needed)
    assert {r for p, r in zip(loads, required) if p.model.inner is model.module} == {
        model.module.sampling_memory_bytes(1, (10, 4, 6))}  # one guided step on the 10 x 4 x 6 latent
    assert {r for p, r in zip(loads, required) if p.model.inner is vae.module} == {0}
    assert latent["opensora"] == {"clip_latent_frames": [10, 10], "clip_num_frames": [34, 34],
                                  "drop_frames": [0, 5], "fps": 24.0, "family": "STDiT3"}
    assert latent["samples"].shape == (1, 4, 20, 4, 6) and latent["samples"].device.type == "cpu"


def test_latent_previews_for_every_vae_with_the_map_fitted_on_it(env, v12):
    """Both latent spaces (SD-VAE for v1.0/v1.1, the video VAE for v1.2) are previewed at every step, with the
    latent -> RGB map the VAE loader fitted on that VAE (not hard-coded factors)."""
    preview = sys.modules[f"{comfy_stub.PACK_NAME}.nodes.preview"]
    model, vae, t5 = v12
    (v11,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32", "sdpa")
    (sd_vae,) = env.run("OpenSoraVAELoader", "sd-vae-ft-ema.safetensors", "fp32")
    for dit, video_vae, frames, shape in [(v11, sd_vae, 4, (1, 4, 4, 4, 6)), (model, vae, 17, (1, 4, 5, 4, 6))]:
        env.progress.clear()
        env.previews.clear()
        env.preview_factors.clear()
        _sample(env, dit, video_vae, _encode(env, t5, dit), num_frames=frames)
        assert env.previews == [shape] * 2 and all(p is not None for _, _, p in env.progress)
        assert env.preview_factors == [[list(row) for row in preview.rgb_map(video_vae).weight]]


def test_sampler_shift_scale_changes_the_v1_2_schedule_and_is_refused_without_a_shift(env, v12):
    """shift_scale reaches the schedule (another video from the same seed); 1.0, the default, is the official
    schedule for every family, and another value for a family without a shifted schedule is refused by name."""
    model, vae, t5 = v12
    caption = _encode(env, t5, model, "a red ball rolls")
    official = _sample(env, model, vae, caption)["samples"]
    # exact: 1.0 is passed on as "not given", so both calls run the same code in the same process
    assert torch.equal(_sample(env, model, vae, caption, shift_scale=1.0)["samples"], official)
    scaled = _sample(env, model, vae, caption, shift_scale=2.0)["samples"]
    assert scaled.shape == official.shape and not torch.allclose(scaled, official, atol=1e-3)
    (v11,) = env.run("OpenSoraModelLoader", "OpenSora-STDiT-v2-stage3.safetensors", "fp32", "sdpa")
    (sd_vae,) = env.run("OpenSoraVAELoader", "sd-vae-ft-ema.safetensors", "fp32")
    v11_caption = _encode(env, t5, v11)
    _sample(env, v11, sd_vae, v11_caption, num_frames=4, shift_scale=1.0)
    with pytest.raises(ValueError, match="shift_scale is not an option"):
        _sample(env, v11, sd_vae, v11_caption, num_frames=4, shift_scale=2.0)


def test_sampler_stops_when_comfyui_is_interrupted(env, v12):
    model, vae, t5 = v12
    env.progress.clear()
    env.model_management.interrupt_current_processing(True)
    with pytest.raises(env.model_management.InterruptProcessingException):
        _sample(env, model, vae, _encode(env, t5, model))
    assert env.progress == []  # stopped at the first step


def test_sampler_checks_references_against_the_real_frame_counts(env, v12):
    model, vae, t5 = v12
    (refs,) = env.run("OpenSoraMaskBuilder", _image(0, frames=17), "custom", "0,0,0,7,1", "latent frames", 1, 0)
    env.progress.clear()
    with pytest.raises(ValueError, match="target_start lies beyond the latent video: 7 with 5 frame"):
        _sample(env, model, vae, _encode(env, t5, model), references=refs, num_frames=17)
    with pytest.raises(ValueError, match="STDiT3 \\(Open-Sora v1.2\\) needs the Open-Sora VAE v1.2"):
        _sample(env, model, env.run("OpenSoraVAELoader", "sd-vae-ft-ema.safetensors", "fp32")[0],
                _encode(env, t5, model))
    assert env.progress == []


def test_references_and_negative_prompt_change_the_video(env, v12):
    model, vae, t5 = v12
    caption = _encode(env, t5, model)
    plain = _sample(env, model, vae, caption)["samples"]
    (refs,) = env.run("OpenSoraMaskBuilder", _image(3), "first frame (image to video)", "", "latent frames", 1, 0)
    with_image = _sample(env, model, vae, caption, references=refs)["samples"]
    negative = _sample(env, model, vae, caption, negative=_encode(env, t5, model, "blurry"))["samples"]
    assert torch.equal(plain, _sample(env, model, vae, caption)["samples"])
    assert not torch.equal(plain, with_image) and not torch.equal(plain, negative)


# ---------------------------------------------------------------------------
# Decode, encode, save
# ---------------------------------------------------------------------------


def test_decode_joins_loop_clips_and_reads_plain_latents(env, v12):
    model, vae, t5 = v12
    latent = _sample(env, model, vae, _encode(env, t5, model), num_frames=34, loops=2, condition_frame_length=2)
    images, fps = env.run("OpenSoraVAEDecode", vae, latent, OFF, 512, 128)
    assert images.shape == (34 + 34 - 5, 32, 48, 3) and images.dtype == torch.float32 and fps == 24.0
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    plain, _ = env.run("OpenSoraVAEDecode", vae, {"samples": latent["samples"][:, :, :5]}, OFF, 512, 128)
    assert plain.shape[0] == 17  # 5 latent frames decode to at most 17 frames
    tampered = {"samples": latent["samples"][:, :, :12], "opensora": latent["opensora"]}
    with pytest.raises(ValueError, match="samples: the LATENT has 12 latent frames"):
        env.run("OpenSoraVAEDecode", vae, tampered, OFF, 512, 128)


def test_decode_asks_comfyui_for_the_vaes_own_estimate(env, v12):
    """The decode stage loads the VAE through ComfyUI's memory manager asking for the decode's working memory,
    as the VAE estimates it for this latent (two loop clips decode one after another: the larger one)."""
    _, vae, _ = v12
    latent = {"samples": torch.randn(1, 4, 5, 4, 6)}
    env.model_management.LOADS.clear()
    env.model_management.REQUIRED.clear()
    env.run("OpenSoraVAEDecode", vae, latent, OFF, 512, 128)
    expected = vae.module.decode_memory_bytes((1, 4, 5, 4, 6), 17)
    assert expected > 0 and env.model_management.REQUIRED == [expected]


def test_encode_then_decode_keeps_frame_count_and_size(env, v12):
    _, vae, _ = v12
    frames = _image(5, frames=17)[:, :36, :52]  # 36x52: the VAE floors it to a 4x6 latent, as the official VAEs
    (latent,) = env.run("OpenSoraVAEEncode", vae, frames)
    assert latent["samples"].shape == (1, 4, 5, 4, 6)
    images, _ = env.run("OpenSoraVAEDecode", vae, latent, "on", 64, 16)
    assert images.shape == (17, 32, 48, 3)


def test_save_video_counts_up_shows_the_file_and_keeps_the_workflow(env):
    frames = _image(6, frames=9)[:, :32, :48]
    hidden = {"PROMPT": {"1": {}}, "EXTRA_PNGINFO": {"workflow": {"nodes": []}}}
    first = env.ui("OpenSoraSaveVideo", frames, 12.0, "clips/test", 18, hidden=hidden)
    second = env.ui("OpenSoraSaveVideo", frames, 12.0, "clips/test", 18)
    assert first == {"images": [{"filename": "test_00001_.mp4", "subfolder": "clips", "type": "output"}],
                     "animated": (True,)}
    assert second["images"][0]["filename"] == "test_00002_.mp4"
    path = env.output / "clips" / "test_00001_.mp4"
    info = media.probe(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (9, 32, 48, 12.0)
    import av

    with av.open(str(path)) as container:
        assert json.loads(container.metadata["workflow"]) == {"nodes": []}


def test_lora_loader_merges_into_a_copy(env, v12):
    """The LoRA node returns a merged copy: the loaded model (cached by ComfyUI) stays as it was."""
    import copy

    from opensora_core.lora import add_lora, lora_layers, save_lora

    model, _, _ = v12
    trained = copy.deepcopy(model.module)
    add_lora(trained, rank=2, targets=("attn.qkv",))
    with torch.no_grad():
        for layer in lora_layers(trained).values():
            layer.lora_B.weight.normal_(0, 0.1)
    save_lora(trained, env.models / "loras" / "demo-lora.safetensors")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}

    (patched,) = env.run("OpenSoraLoraLoader", model, "demo-lora.safetensors", 1.0)

    key = next(k for k in before if k.endswith("attn.qkv.weight"))
    assert torch.equal(model.module.state_dict()[key], before[key])
    assert not torch.equal(patched.module.state_dict()[key], before[key])
    assert patched.family is model.family and "demo-lora" in patched.source
