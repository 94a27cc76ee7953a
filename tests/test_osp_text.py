"""mT5 encoding of Open-Sora-Plan v1.3 (a tiny random MT5EncoderModel) and the release prompt texts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import MT5Config, MT5EncoderModel, PreTrainedTokenizerFast  # noqa: E402

from opensora_core.text.osp_prompts import (  # noqa: E402
    OSP_V1_3_NEGATIVE_PROMPT,
    OSP_V1_3_PROMPT_TEMPLATE,
    osp_v1_3_prompt,
)
from opensora_core.text.t5 import (  # noqa: E402
    MT5_V1_3,
    T5TextEncoder,
    encode_token_ids,
    load_mt5_encoder,
    load_t5_encoder,
)

L = 12


def _model() -> MT5EncoderModel:
    torch.manual_seed(0)
    config = MT5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return MT5EncoderModel(config).eval()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "ball": 5, "high": 6, "quality,": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _ids(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 40, (batch, L), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(batch, L, dtype=torch.int64)
    mask[0, :5], mask[1, :9] = 1, 1
    return ids * mask, mask  # padding id 0 after the valid tokens, as the tokenizer pads


def test_encoding_from_ids_is_the_encoder_output_with_every_position_kept():
    model = _model()
    ids, mask = _ids()
    caption = encode_token_ids(model, ids, mask)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert caption.y.shape == (2, 1, L, 16) and caption.mask.tolist() == mask.tolist()
    torch.testing.assert_close(caption.y[:, 0], expected, rtol=0, atol=0)  # same call, same path
    assert caption.y[0, 0, 5:].abs().sum() > 0  # padded positions are not zeroed (the transformer masks them)


def test_the_mask_reaches_the_encoder():
    model = _model()
    ids, mask = _ids()
    full = encode_token_ids(model, ids, torch.ones_like(mask))
    assert (full.y[0, 0, :5] - encode_token_ids(model, ids, mask).y[0, 0, :5]).abs().max() > 1e-4


def test_mismatched_ids_and_mask_raise():
    ids, mask = _ids()
    with pytest.raises(ValueError, match="\\(B, L\\)"):
        encode_token_ids(_model(), ids, mask[:, :4])


@pytest.fixture(scope="module")
def mt5_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mt5")
    _model().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def test_hugging_face_folder_loads_an_mt5_encoder_with_512_tokens(mt5_folder):
    encoder = load_mt5_encoder(mt5_folder)
    assert type(encoder.model).__name__ == "MT5EncoderModel" and encoder.max_length == MT5_V1_3.max_length == 512
    caption = encoder.encode("a red ball")
    assert caption.y.shape == (1, 1, 512, 16) and caption.mask[0, :4].tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(caption.y, encode_token_ids(_model(), *encoder.tokenize("a red ball")).y)


def test_single_file_plus_tokenizer_folder_loads_as_mt5(mt5_folder, tmp_path):
    model = _model()
    path = tmp_path / "mt5.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}, str(path))
    encoder = load_mt5_encoder(path, mt5_folder)
    assert type(encoder.model).__name__ == "MT5EncoderModel"
    ids, mask = _ids()
    torch.testing.assert_close(encoder.encode_ids(ids, mask).y, encode_token_ids(model, ids, mask).y)


def test_a_t5_folder_is_not_taken_for_mt5(mt5_folder, tmp_path):
    config = json.loads((mt5_folder / "config.json").read_text())
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ValueError, match="not a mt5 encoder"):
        load_t5_encoder(folder, model_type="mt5")


def test_encoder_class_is_reused_for_mt5(mt5_folder):
    encoder = load_mt5_encoder(mt5_folder)
    assert isinstance(encoder, T5TextEncoder)


# ---------------------------------------------------------------------------
# Prompt texts
# ---------------------------------------------------------------------------


def test_prompt_template_wraps_the_prompt_with_its_newlines():
    assert osp_v1_3_prompt("a cat") == "\n    high quality, high aesthetic, a cat\n    "
    assert osp_v1_3_prompt("a cat", template=None) == "a cat"
    assert OSP_V1_3_NEGATIVE_PROMPT.startswith("\n    nsfw, lowres,")
    assert OSP_V1_3_NEGATIVE_PROMPT.endswith("blurry.\n    ")
    with pytest.raises(ValueError, match="exactly one"):
        osp_v1_3_prompt("a cat", template="no placeholder")


def test_prompt_texts_equal_the_strings_the_official_sampler_encoded(reference):
    strings = json.loads((reference / "osp/cases/sampler_t2v_v1_3/config.json").read_text())["strings"]
    assert osp_v1_3_prompt(strings["user_prompt"]) == strings["positive"]
    assert OSP_V1_3_NEGATIVE_PROMPT == strings["negative"]
    assert OSP_V1_3_PROMPT_TEMPLATE.format(strings["user_prompt"]) == strings["positive"]
