"""T5 text encoding: tokenisation, loading (HF folder, single file, fp8) and errors, on a tiny T5.

The model is a 2-layer T5 v1.1 (gated GELU) of width 16 and the tokenizer a
whitespace word-level tokenizer with T5's special tokens (<pad> = 0, </s> = 1),
both built here: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel  # noqa: E402

from opensora_core.text.t5 import (  # noqa: E402
    T5_PRESETS,
    T5TextEncoder,
    load_t5_encoder,
    load_t5_tokenizer,
    t5_config_from_shapes,
)

WORDS = "a cat dog on the sofa sits in sunset night day beautiful rainy snow aesthetic score : . 6.5".split()
L = 8  # caption length of the tests
PROMPT = "a cat sits on the sofa"  # 6 words + EOS = 7 tokens < L
LONG_PROMPT = "a cat sits on the sofa in the rainy night"  # 10 words + EOS > L


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _model() -> T5EncoderModel:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", attn_implementation="eager",
    )
    return T5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def tiny():
    return _model(), _tokenizer()


@pytest.fixture(scope="module")
def hf_folder(tiny, tmp_path_factory):
    model, tokenizer = tiny
    folder = tmp_path_factory.mktemp("t5_hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer_folder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_tokenizer")
    tiny[1].save_pretrained(folder)
    return folder


def _encoder_state(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The keys a ComfyUI t5xxl file holds: T5EncoderModel's, with the tied embedding stored once."""
    return {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def _reference_y(model: T5EncoderModel, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, max_length=L, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def _with_weights(state: dict[str, torch.Tensor]) -> T5EncoderModel:
    model = _model()
    model.load_state_dict(state, strict=False)
    return model


# ---------------------------------------------------------------------------
# Tokenisation and encoding
# ---------------------------------------------------------------------------


def test_caption_shapes_and_dtypes(tiny):
    encoder = T5TextEncoder(*tiny, max_length=L)
    caption = encoder.encode([PROMPT, "a dog"])
    assert caption.y.shape == (2, 1, L, 16)
    assert caption.mask.shape == (2, L) and caption.mask.dtype == torch.int64


def test_padding_tokens_are_masked(tiny):
    encoder = T5TextEncoder(*tiny, max_length=L)
    ids, mask = encoder.tokenize([PROMPT, "a dog"])
    assert mask.tolist() == [[1] * 7 + [0], [1] * 3 + [0] * 5]
    assert ids[1].tolist() == tiny[1].convert_tokens_to_ids(["a", "dog", "</s>"] + ["<pad>"] * 5)


def test_output_equals_a_direct_t5_run(tiny):
    model, tokenizer = tiny
    caption = T5TextEncoder(model, tokenizer, max_length=L).encode([PROMPT, "a dog"])
    torch.testing.assert_close(caption.y[:, 0], _reference_y(model, tokenizer, [PROMPT, "a dog"]), rtol=0, atol=0)


def test_padding_does_not_change_the_real_tokens(tiny):
    """With the attention mask, the real tokens' states equal those of the unpadded prompt."""
    model, tokenizer = tiny
    caption = T5TextEncoder(model, tokenizer, max_length=L).encode("a dog")
    ids = tokenizer("a dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        alone = model(input_ids=ids).last_hidden_state  # (1, 3, C)
    torch.testing.assert_close(caption.y[0, 0, :3], alone[0], rtol=1e-5, atol=1e-6)


def test_long_prompt_is_truncated_to_l_minus_1_tokens_plus_eos(tiny):
    encoder = T5TextEncoder(*tiny, max_length=L)
    ids, mask = encoder.tokenize(LONG_PROMPT)
    full = tiny[1](LONG_PROMPT)["input_ids"]
    assert ids[0].tolist() == full[: L - 1] + [tiny[1].eos_token_id]
    assert mask.sum() == L


def test_truncation_is_logged(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="opensora"):
        T5TextEncoder(*tiny, max_length=L).tokenize(LONG_PROMPT)
    assert "only the first 7 are used" in caplog.text


def test_official_max_lengths():
    assert {name: p.max_length for name, p in T5_PRESETS.items()} == {
        "v1.0": 120, "v1.1": 200, "v1.2": 300, "osp-v1.3": 512, "v2.0": 512,
    }


def test_fp16_warns(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="opensora"):
        T5TextEncoder(_model().half(), tiny[1], max_length=L)
    assert "float16" in caplog.text


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def test_load_hf_folder(tiny, hf_folder):
    encoder = load_t5_encoder(hf_folder, max_length=L)
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], _reference_y(*tiny, [PROMPT]), rtol=0, atol=0)


def test_load_sharded_hf_folder_with_tokenizer_subfolder(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path, max_shard_size="4KB")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    encoder = load_t5_encoder(tmp_path, max_length=L)
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], _reference_y(*tiny, [PROMPT]), rtol=0, atol=0)


def test_load_hf_folder_in_bfloat16(hf_folder):
    encoder = load_t5_encoder(hf_folder, max_length=L, dtype=torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and encoder.encode(PROMPT).y.dtype == torch.bfloat16


def test_load_single_file(tiny, tmp_path, tokenizer_folder):
    save_file(_encoder_state(tiny[0]), tmp_path / "t5xxl_fp16.safetensors")
    encoder = load_t5_encoder(tmp_path / "t5xxl_fp16.safetensors", tokenizer_folder, max_length=L)
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], _reference_y(*tiny, [PROMPT]), rtol=0, atol=0)


def test_single_file_config_is_read_from_shapes(tiny, tmp_path, tokenizer_folder):
    save_file(_encoder_state(tiny[0]), tmp_path / "t5.safetensors")
    config = load_t5_encoder(tmp_path / "t5.safetensors", tokenizer_folder, max_length=L).model.config
    expected = tiny[0].config
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets"):
        assert getattr(config, field) == getattr(expected, field), field
    assert config.is_gated_act and config.dense_act_fn == expected.dense_act_fn


def test_single_file_with_prefix_and_decoder_keys(tiny, tmp_path, tokenizer_folder):
    """A bundled file (prefix) or a full T5 (decoder / lm_head keys) still yields the encoder."""
    state = {f"text_encoders.t5xxl.transformer.{k}": v for k, v in _encoder_state(tiny[0]).items()}
    state["text_encoders.t5xxl.transformer.decoder.final_layer_norm.weight"] = torch.ones(16)
    state["text_encoders.t5xxl.transformer.lm_head.weight"] = torch.zeros(32, 16)
    save_file(state, tmp_path / "bundle.safetensors")
    encoder = load_t5_encoder(tmp_path / "bundle.safetensors", tokenizer_folder, max_length=L)
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], _reference_y(*tiny, [PROMPT]), rtol=0, atol=0)


def test_load_fp8_file_upcasts(tiny, tmp_path, tokenizer_folder):
    state = {k: v.to(torch.float8_e4m3fn) for k, v in _encoder_state(tiny[0]).items()}
    save_file(state, tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    encoder = load_t5_encoder(tmp_path / "t5xxl_fp8_e4m3fn.safetensors", tokenizer_folder, max_length=L)
    assert encoder.dtype == torch.float32
    reference = _with_weights({k: v.float() for k, v in state.items()})
    expected = _reference_y(reference, tiny[1], [PROMPT])
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], expected, rtol=0, atol=0)


def test_load_scaled_fp8_file_applies_weight_scales(tiny, tmp_path, tokenizer_folder):
    """scaled fp8 (ComfyUI): stored weight * scale_weight is the real weight; scale_input is ignored."""
    state, real = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in _encoder_state(tiny[0]).items():
        if value.ndim == 2 and "relative_attention_bias" not in key and key != "shared.weight":
            scale = value.abs().max() / 448.0
            state[key] = (value / scale).to(torch.float8_e4m3fn)
            state[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            state[key[: -len("weight")] + "scale_input"] = torch.ones(())
            real[key] = state[key].float() * scale
        else:
            state[key] = real[key] = value
    save_file(state, tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    encoder = load_t5_encoder(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors", tokenizer_folder, max_length=L)
    reference = _with_weights(real)
    expected = _reference_y(reference, tiny[1], [PROMPT])
    torch.testing.assert_close(encoder.encode([PROMPT]).y[:, 0], expected, rtol=0, atol=0)


def test_t5_xxl_config_from_shapes():
    """The ComfyUI t5xxl file layout gives DeepFloyd/t5-v1_1-xxl's config."""
    shapes = {"shared.weight": (32128, 4096), "encoder.final_layer_norm.weight": (4096,)}
    shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, 64)
    for i in range(24):
        shapes[f"encoder.block.{i}.layer.0.SelfAttention.q.weight"] = (4096, 4096)
        shapes[f"encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"] = (10240, 4096)
    config = t5_config_from_shapes(shapes)
    got = (config.vocab_size, config.d_model, config.d_kv, config.d_ff, config.num_layers, config.num_heads)
    assert got == (32128, 4096, 64, 10240, 24, 64)
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_dit_file_is_rejected_with_what_it_looks_like(tmp_path, tokenizer_folder):
    dit = {"y_embedder.y_embedding": torch.zeros(4, 8), "x_embedder.proj.weight": torch.zeros(8, 4)}
    save_file(dit, tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="not a T5 text encoder; it looks like a diffusion transformer"):
        load_t5_encoder(tmp_path / "dit.safetensors", tokenizer_folder)


def test_vae_file_is_rejected_with_what_it_looks_like(tmp_path, tokenizer_folder):
    vae = {"decoder.conv_in.weight": torch.zeros(4, 4), "post_quant_conv.weight": torch.zeros(4, 4)}
    save_file(vae, tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match="not a T5 text encoder; it looks like a VAE"):
        load_t5_encoder(tmp_path / "vae.safetensors", tokenizer_folder)


def test_umt5_file_is_rejected(tiny, tmp_path, tokenizer_folder):
    state = _encoder_state(tiny[0])
    state["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    save_file(state, tmp_path / "umt5.safetensors")
    with pytest.raises(ValueError, match="UMT5"):
        load_t5_encoder(tmp_path / "umt5.safetensors", tokenizer_folder)


def test_unknown_quantisation_is_rejected(tiny, tmp_path, tokenizer_folder):
    state = _encoder_state(tiny[0])
    state["encoder.block.0.layer.0.SelfAttention.q.weight_scale"] = torch.ones(())
    save_file(state, tmp_path / "quant.safetensors")
    with pytest.raises(ValueError, match="quantisation format"):
        load_t5_encoder(tmp_path / "quant.safetensors", tokenizer_folder)


def test_single_file_needs_a_tokenizer_path(tiny, tmp_path):
    save_file(_encoder_state(tiny[0]), tmp_path / "t5.safetensors")
    with pytest.raises(ValueError, match="pass tokenizer_path"):
        load_t5_encoder(tmp_path / "t5.safetensors")


def test_missing_tokenizer_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json plus tokenizer\.json or spiece\.model"):
        load_t5_tokenizer(tmp_path)


def test_hf_folder_without_tokenizer_names_the_expected_files(tiny, tmp_path):
    tiny[0].save_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json plus tokenizer\.json or spiece\.model"):
        load_t5_encoder(tmp_path / "model")


def test_tokenizer_json_without_config_is_not_a_tokenizer_folder(tokenizer_folder, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tokenizer_folder / "tokenizer.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json plus"):
        load_t5_tokenizer(tmp_path)


def test_sentencepiece_tokenizer_folder_loads(tmp_path):
    """The DeepFloyd/t5-v1_1-xxl layout: spiece.model + tokenizer_config.json (T5Tokenizer)."""
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "corpus.txt").write_text("\n".join(["a cat sits on the sofa", "a dog in the rainy night"] * 10))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spiece"), vocab_size=40, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "pad_token": "<pad>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_t5_tokenizer(tmp_path)
    assert tokenizer("a cat")["input_ids"][-1] == 1


def test_hf_folder_of_another_model_is_rejected(tmp_path, tokenizer_folder):
    config = {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'clip_text_model' model"):
        load_t5_encoder(tmp_path, tokenizer_folder)


def test_tokenizer_larger_than_the_vocabulary_is_rejected(tiny):
    small = T5EncoderModel(T5Config(vocab_size=8, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="do not belong together"):
        T5TextEncoder(small, tiny[1], max_length=L)


# ---------------------------------------------------------------------------
# Captions from ComfyUI's T5 output (unpadded [1, n, C])
# ---------------------------------------------------------------------------


def _unpadded_states(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state  # (1, n, C), as ComfyUI returns


def test_pad_caption_of_unpadded_states_matches_encode(tiny):
    model, tokenizer = tiny
    from opensora_core.text.caption import pad_caption

    ours = pad_caption(_unpadded_states(model, tokenizer(PROMPT)["input_ids"]), L)
    official = T5TextEncoder(model, tokenizer, max_length=L).encode(PROMPT)
    assert torch.equal(ours.mask, official.mask)
    n = int(official.mask.sum())
    torch.testing.assert_close(ours.y[:, :, :n], official.y[:, :, :n], rtol=1e-5, atol=1e-6)


def test_truncate_tokens_before_encoding_matches_encode_of_a_long_prompt(tiny):
    model, tokenizer = tiny
    from opensora_core.text.caption import pad_caption, truncate_tokens

    ids = truncate_tokens(tokenizer(LONG_PROMPT)["input_ids"], L, eos=tokenizer.eos_token_id)
    ours = pad_caption(_unpadded_states(model, ids), L)
    official = T5TextEncoder(model, tokenizer, max_length=L).encode(LONG_PROMPT)
    assert torch.equal(ours.mask, official.mask)
    torch.testing.assert_close(ours.y, official.y, rtol=1e-5, atol=1e-6)


def test_byte_level_tokenizer_folder_needs_no_vocabulary_file(tmp_path):
    """The bundled demo T5 uses ByT5's byte-level tokenizer: config only, nothing downloaded."""
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(tmp_path)
    tokenizer = load_t5_tokenizer(tmp_path)
    assert tokenizer("ab")["input_ids"] == [100, 101, 1]


def test_an_unreadable_tokenizer_folder_is_named_with_the_transformers_version(tmp_path):
    import transformers

    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5TokenizerFast"}')
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match=f"{tmp_path}: the tokenizer files cannot be read by transformers "
                                         f"{transformers.__version__}"):
        load_t5_tokenizer(tmp_path)
