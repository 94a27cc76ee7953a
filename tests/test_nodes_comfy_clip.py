"""Text Encode with ComfyUI's real CLIP object (comfy/sd.py, CLIPLoader types sd3 and pixart) gives our T5's caption.

Needs ComfyUI's source and Python environment; skipped otherwise (CI has no ComfyUI)::

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy/venv/bin/python -m pytest tests/test_nodes_comfy_clip.py

Both sides run the same tiny T5 weights (ComfyUI's T5 class with a small config) and ComfyUI's
bundled T5-XXL tokenizer, in float32.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

TINY_T5 = {"d_ff": 64, "d_kv": 8, "d_model": 32, "num_heads": 4, "num_layers": 2, "vocab_size": 32128}
PROMPTS = ["a photo of a cat", "a (red:1.3) car, (night)", "a very long prompt about a city " * 60]


@pytest.fixture(scope="module")
def comfy():
    sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args

    args.cpu = True  # as `main.py --cpu`: read when comfy.model_management is first imported
    import comfy.sd
    import comfy.text_encoders.pixart_t5
    import comfy.text_encoders.sd3_clip

    return comfy


@pytest.fixture(scope="module")
def t5():
    """Our T5 (HF T5EncoderModel) with ComfyUI's bundled tokenizer."""
    from comfy_stub import tiny_models
    from opensora_core.text.t5 import load_t5_tokenizer

    tokenizer = load_t5_tokenizer(Path(COMFYUI_DIR) / "comfy" / "text_encoders" / "t5_tokenizer")
    return tiny_models.t5_model(TINY_T5["vocab_size"]), tokenizer


def _clip(comfy, clip_class, tokenizer_class, state_dict):
    target = types.SimpleNamespace(params={}, clip=clip_class, tokenizer=tokenizer_class)
    clip = comfy.sd.CLIP(target, model_options={"t5xxl_model_config": TINY_T5, "dtype": torch.float32})
    missing, unexpected = clip.load_sd(state_dict)
    assert not missing and not unexpected
    return clip


@pytest.fixture(scope="module", params=["sd3", "pixart"])
def clip(request, comfy, t5):
    state_dict = {k: v.clone() for k, v in t5[0].state_dict().items() if k != "encoder.embed_tokens.weight"}
    if request.param == "sd3":  # CLIPLoader type sd3 with only the T5 file
        clip_class = comfy.text_encoders.sd3_clip.sd3_clip(clip_l=False, clip_g=False, t5=True, dtype_t5=torch.float32)
        return _clip(comfy, clip_class, comfy.text_encoders.sd3_clip.SD3Tokenizer, state_dict)
    clip_class = comfy.text_encoders.pixart_t5.pixart_te(dtype_t5=torch.float32)
    return _clip(comfy, clip_class, comfy.text_encoders.pixart_t5.PixArtTokenizer, state_dict)


@pytest.fixture(scope="module")
def encode_node(comfy):  # comfy: ComfyUI on sys.path first (the nodes import its comfy_api)
    import comfy_stub

    pack = comfy_stub.load_pack("opensora_pack_with_real_comfy")
    return comfy_stub.registered_nodes(pack)["OpenSoraTextEncode"]


def _caption(node, text, **inputs):
    caption, _ = node.execute(text, "v1.2 (300 tokens)", 6.5, -1.0, "none", True, **inputs).args
    ((_, result),) = caption.segments
    return result


@pytest.mark.parametrize("text", PROMPTS, ids=["plain", "weight-syntax", "over-300-tokens"])
def test_comfyui_clip_caption_equals_our_t5(encode_node, clip, t5, text):
    from opensora_core.text.t5 import T5TextEncoder

    handle = types.SimpleNamespace(encoder=T5TextEncoder(*t5, max_length=300), managed=None)
    ours, theirs = _caption(encode_node, text, t5=handle), _caption(encode_node, text, clip=clip)
    n = int(ours.mask.sum())
    assert torch.equal(ours.mask, theirs.mask) and (n == 300) == ("long" in text)
    torch.testing.assert_close(theirs.y[:, :, :n], ours.y[:, :, :n], rtol=1e-4, atol=1e-4)


def test_without_the_fix_sd3_pads_and_weights_differ(clip):
    """Why the node passes its options: by default the sd3 tokenizer pads to 77 and parses weights."""
    default = clip.tokenize("a (red:1.3) car")["t5xxl"][0]
    fixed = clip.tokenize("a (red:1.3) car", disable_weights=True, tokenizer_options={"t5xxl_min_length": 1})["t5xxl"][0]
    assert all(w == 1.0 for _, w in fixed) and fixed[-1][0] == 1  # plain text, ends with EOS
    assert any(w != 1.0 for _, w in default)
    if "g" in clip.tokenize("a"):  # the sd3 type
        assert len(default) == 77
