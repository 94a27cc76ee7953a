"""Open-Sora 2.0 text conditioning on tiny random T5 / CLIP models (nothing downloaded): T5 without an
attention mask, CLIP pooled vector, ComfyUI single-file CLIP-L layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from opensora_core.text.clip import load_clip_encoder  # noqa: E402
from opensora_core.text.t5 import T5TextEncoder  # noqa: E402
from opensora_core.text.v2 import TextEncoderV2  # noqa: E402

WORDS = "a cat dog on the sofa sits . 24 fps 4 motion score".split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789."


def _t5(max_length: int = 12) -> T5TextEncoder:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS + ["FPS."]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", attn_implementation="eager")
    return T5TextEncoder(T5EncoderModel(config).eval(), tokenizer, max_length=max_length)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A CLIP text folder: 2 layers of width 128 (two 64-wide heads), a character-level BPE tokenizer."""
    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(1)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).eval().save_pretrained(folder)
    return folder


def _reference_pooled(folder, text: str) -> torch.Tensor:
    """The pooled vector computed by hand: final-layer-normed state at the first end-of-text token."""
    model = CLIPTextModel.from_pretrained(str(folder)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    ids = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    first_eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
    return hidden[0, first_eos]


def test_t5_states_are_computed_without_the_attention_mask():
    """Official: attention_mask=None. The states then equal the plain unmasked call and differ from the
    masked one on the real tokens, and they change with the padding length."""
    t5 = _t5(max_length=12)
    ids, _ = t5.tokenize(["a cat sits"])
    ours = t5.encode_unmasked(["a cat sits"])
    with torch.no_grad():
        plain = t5.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, plain)
    masked = t5.encode(["a cat sits"]).y[:, 0]
    assert (ours[0, :4] - masked[0, :4]).abs().max() > 1e-4
    longer = _t5(max_length=16).encode_unmasked(["a cat sits"])
    assert (ours[0, :4] - longer[0, :4]).abs().max() > 1e-4


def test_clip_folder_gives_the_pooled_vector(clip_folder):
    encoder = load_clip_encoder(clip_folder, dtype=torch.float32)
    pooled = encoder.encode_pooled(["a cat sits."])
    assert pooled.shape == (1, 128)
    torch.testing.assert_close(pooled[0], _reference_pooled(clip_folder, "a cat sits."))


def test_comfyui_single_file_clip_loads_the_same(clip_folder, tmp_path):
    """clip_l.safetensors keeps text_model.* keys plus text_projection.weight (and a logit_scale)."""
    model = CLIPTextModel.from_pretrained(str(clip_folder))
    state = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    state["text_projection.weight"] = torch.randn(128, 128)
    state["logit_scale"] = torch.tensor(4.6)
    path = tmp_path / "clip_l.safetensors"
    save_file(state, str(path))
    encoder = load_clip_encoder(path, clip_folder, dtype=torch.float32)
    torch.testing.assert_close(encoder.encode_pooled(["a dog."])[0], _reference_pooled(clip_folder, "a dog."))


def test_single_file_needs_a_tokenizer_and_clip_keys(clip_folder, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"double_blocks.0.img_mod.lin.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="tokenizer_path"):
        load_clip_encoder(path)
    with pytest.raises(ValueError, match="not a CLIP"):
        load_clip_encoder(path, clip_folder)


def test_encode_for_sampling_adds_suffixes_and_negatives(clip_folder):
    encoders = TextEncoderV2(_t5(max_length=12), load_clip_encoder(clip_folder, dtype=torch.float32))
    text = encoders.encode_for_sampling(["a cat", "a dog"])
    assert text.txt.shape == (2, 12, 16) and text.y_vec.shape == (2, 128)
    assert text.neg_txt.shape == (1, 12, 16)
    caption = encoders.encode(["a cat. 24 FPS. 4 motion score.", ""])
    torch.testing.assert_close(text.txt[0], caption.txt[0])
    torch.testing.assert_close(text.neg_y_vec[0], caption.y_vec[1])
