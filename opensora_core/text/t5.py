"""T5 text encoder as Open-Sora uses it (DeepFloyd/t5-v1_1-xxl through ``transformers``), and the
mT5-XXL encoder of Open-Sora-Plan v1.2/v1.3 (google/mt5-xxl, ``MT5EncoderModel``, 512 tokens).

Follows opensora/models/text_encoder/t5.py (v1.0-v1.2): prompts are tokenised with
padding to exactly L tokens (``padding="max_length"``), truncated to L (the last kept
token is then the end-of-sequence token), and the encoder runs with the attention
mask. ``last_hidden_state`` (B, L, C) becomes ``y`` (B, 1, L, C) and the tokenizer's
attention mask the caption ``mask`` (B, L). T5 runs in float32 in the official
inference configs; bfloat16 works; float16 overflows in T5 v1.1.

Open-Sora-Plan v1.3 (opensora/sample/pipeline_opensora.py ``encode_prompt`` @v1.3.1) does the same
with mT5-XXL and L = 512 (:data:`MT5_V1_3`): all 512 positions go to the transformer, which masks the
padded ones. mT5 is the T5 v1.1 architecture with a 250k vocabulary (``model_type`` "mt5"); every
loader below takes either (``model_type`` from the folder's config.json, or the ``model_type``
argument for a single file). :meth:`T5TextEncoder.encode_ids` encodes ready token ids.

Weights load from

* a Hugging Face folder (``config.json`` + ``model.safetensors`` / sharded index /
  ``pytorch_model*.bin``, tokenizer files beside it or in ``tokenizer/``), or
* a single ``.safetensors`` file of ``T5EncoderModel`` keys as ComfyUI users keep it
  (``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``,
  ``t5xxl_fp8_e4m3fn_scaled.safetensors``), with the tokenizer from a separate
  folder (ComfyUI ships one as ``comfy/text_encoders/t5_tokenizer``). The T5 config
  is read off the tensor shapes; fp8 weights are upcast to the compute dtype.

Nothing is ever downloaded (``local_files_only=True``, configs built locally).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from .caption import Caption
from .encoder_files import encoder_prefix, transformers_dtype_kwarg

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel

logger = logging.getLogger("opensora")

# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderPreset:
    """The T5 setup of one Open-Sora release."""

    name: str
    max_length: int  # caption tokens L (model_max_length); the STDiT's y_embedding has L rows
    hub_id: str = "DeepFloyd/t5-v1_1-xxl"  # the only T5 the official wrapper accepts (informative)
    model_type: str = "t5"  # transformers model_type: "t5" or "mt5"


T5_V1_0 = TextEncoderPreset("v1.0", max_length=120)  # T5Encoder default; configs/opensora/inference/*.py
T5_V1_1 = TextEncoderPreset("v1.1", max_length=200)  # configs/opensora-v1-1/inference/sample.py
T5_V1_2 = TextEncoderPreset("v1.2", max_length=300)  # configs/opensora-v1-2/inference/sample.py
# Open-Sora-Plan v1.3: --text_encoder_name_1 google/mt5-xxl, --model_max_length / max_sequence_length 512
MT5_V1_3 = TextEncoderPreset("osp-v1.3", max_length=512, hub_id="google/mt5-xxl", model_type="mt5")
# Open-Sora 2.0: configs/diffusion/inference/256px.py t5= (512 tokens, encoded without the attention mask)
T5_V2_0 = TextEncoderPreset("v2.0", max_length=512, hub_id="google/t5-v1_1-xxl")
T5_PRESETS = {p.name: p for p in (T5_V1_0, T5_V1_1, T5_V1_2, MT5_V1_3, T5_V2_0)}
T5_XXL_CHANNELS = 4096  # d_model of T5-XXL (and mT5-XXL): the caption channels of every model here
MODEL_TYPES = ("t5", "mt5")

TOKENIZER_CONFIG = "tokenizer_config.json"  # names the tokenizer class and the special tokens
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # the vocabulary: either one
BYTE_LEVEL_TOKENIZERS = ("ByT5Tokenizer",)  # byte-level: the config alone is the whole tokenizer
_TOKENIZER_EXPECTED = (
    f"{TOKENIZER_CONFIG} plus {' or '.join(TOKENIZER_FILES)} "
    f"(a byte-level {'/'.join(BYTE_LEVEL_TOKENIZERS)} needs only {TOKENIZER_CONFIG})"
)
SINGLE_FILE_SUFFIX = ".safetensors"


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------


class T5TextEncoder:
    """A ``T5EncoderModel`` with its tokenizer and caption length L."""

    def __init__(
        self,
        model: "T5EncoderModel",
        tokenizer: "PreTrainedTokenizerBase",
        max_length: int = T5_V1_2.max_length,
    ):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        _check_tokenizer_fits(tokenizer, model.config.vocab_size)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if self.dtype == torch.float16:
            logger.warning("T5 v1.1 / mT5 can overflow in float16 (inf/NaN hidden states); use float32 or bfloat16")

    @property
    def output_dim(self) -> int:
        """Caption channels C (4096 for T5-XXL): the STDiT's ``caption_channels``."""
        return self.model.config.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, L) int64 on the CPU: padded, truncated, EOS added."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(
            texts,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        self._warn_truncated(texts)
        return batch["input_ids"].to(torch.int64), batch["attention_mask"].to(torch.int64)

    def _warn_truncated(self, texts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for text, n in zip(texts, lengths):
            if n > self.max_length:
                logger.warning(
                    "prompt has %d T5 tokens; only the first %d are used: %.60r...", n, self.max_length - 1, text
                )

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str]) -> Caption:
        """Caption ``y`` (B, 1, L, C) in the encoder's dtype and ``mask`` (B, L) on its device."""
        return self.encode_ids(*self.tokenize(texts))

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> Caption:
        """Caption from token ids and attention mask, both (B, L) (see :func:`encode_token_ids`)."""
        return encode_token_ids(self.model, ids, mask)

    @torch.no_grad()
    def encode_unmasked(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, L, C) states of prompts padded to L and encoded WITHOUT an attention mask: the padding tokens
        take part in the attention and change every state (Open-Sora 2.0's ``HFEmbedder``)."""
        ids, _ = self.tokenize(texts)
        return encoder_states(self.model, ids, None)


@torch.no_grad()
def encode_token_ids(model, ids: torch.Tensor, mask: torch.Tensor) -> Caption:
    """``model(input_ids=ids, attention_mask=mask).last_hidden_state`` as a Caption: y (B, 1, L, C) in the
    encoder's dtype, mask (B, L) int64, on the encoder's device. No pooling, scaling or cropping: every
    position (padding included) is kept, as the official pipelines pass them on."""
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"token ids and attention mask must both be (B, L), got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}")
    mask = mask.to(device=model.get_input_embeddings().weight.device, dtype=torch.int64)
    hidden = encoder_states(model, ids, mask)  # (B, L, C)
    return Caption(y=hidden[:, None], mask=mask)  # (B, 1, L, C), (B, L)


@torch.no_grad()
def encoder_states(model, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Last hidden states (B, L, C) of a T5/mT5 encoder for token ids (B, L); ``mask`` None lets every token
    (padding included) attend everywhere. Inputs are moved to the encoder's device."""
    if ids.dim() != 2:
        raise ValueError(f"token ids must be (B, L), got {tuple(ids.shape)}")
    device = model.get_input_embeddings().weight.device
    mask = None if mask is None else mask.to(device=device, dtype=torch.int64)
    return model(input_ids=ids.to(device=device, dtype=torch.int64), attention_mask=mask).last_hidden_state


def _check_tokenizer_fits(tokenizer: "PreTrainedTokenizerBase", vocab_size: int) -> None:
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the T5 weights only {vocab_size} embeddings: "
            "tokenizer and weights do not belong together (T5 v1.1 uses a 32100-token tokenizer)"
        )


# ---------------------------------------------------------------------------
# Loading: entry point
# ---------------------------------------------------------------------------


def load_t5_encoder(
    path: str | Path,
    tokenizer_path: str | Path | None = None,
    *,
    max_length: int = T5_V1_2.max_length,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    model_type: str | None = None,
) -> T5TextEncoder:
    """Load a T5 (or mT5) encoder from a Hugging Face folder or a single ``.safetensors`` file.

    ``tokenizer_path``: folder with ``tokenizer_config.json`` and ``tokenizer.json`` or
    ``spiece.model`` (sentencepiece needed for the latter); required for a
    single file, optional for a folder (default: the folder itself or its ``tokenizer/``).
    ``model_type``: "t5" or "mt5"; a folder's config.json must agree when given; a single file is
    built as ``model_type`` (default "t5").
    """
    path = Path(path)
    if path.is_dir():
        folder = find_model_folder(path)
        model = load_t5_folder(folder, dtype=dtype, device=device, model_type=model_type)
        tokenizer = load_t5_tokenizer(tokenizer_path or find_tokenizer_folder(folder))
    elif path.is_file():
        if tokenizer_path is None:
            raise ValueError(
                f"{path}: a single-file T5 has no tokenizer; pass tokenizer_path, a folder with "
                f"{_TOKENIZER_EXPECTED} (ComfyUI ships one in comfy/text_encoders/t5_tokenizer)"
            )
        model = load_t5_file(path, dtype=dtype, device=device, model_type=model_type or "t5")
        tokenizer = load_t5_tokenizer(tokenizer_path)
    else:
        raise FileNotFoundError(f"T5 weights not found: {path}")
    return T5TextEncoder(model, tokenizer, max_length=max_length)


def load_mt5_encoder(
    path: str | Path,
    tokenizer_path: str | Path | None = None,
    *,
    max_length: int = MT5_V1_3.max_length,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5TextEncoder:
    """The Open-Sora-Plan v1.3 text encoder: mT5 (``MT5EncoderModel``) with 512 tokens, from a Hugging Face
    folder (e.g. google/mt5-xxl) or a single ``.safetensors`` file plus a tokenizer folder."""
    return load_t5_encoder(path, tokenizer_path, max_length=max_length, dtype=dtype, device=device,
                           model_type=MT5_V1_3.model_type)


# ---------------------------------------------------------------------------
# Loading: tokenizer
# ---------------------------------------------------------------------------


def _has_tokenizer(folder: Path) -> bool:
    config = folder / TOKENIZER_CONFIG
    if not config.is_file():
        return False
    return any((folder / name).is_file() for name in TOKENIZER_FILES) or _is_byte_level(config)


def _is_byte_level(config: Path) -> bool:
    """True for a tokenizer that needs no vocabulary file (ByT5: bytes are the tokens)."""
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in BYTE_LEVEL_TOKENIZERS
    except (OSError, ValueError, AttributeError):
        return False


def find_tokenizer_folder(model_folder: str | Path) -> Path:
    """The tokenizer beside a Hugging Face model folder: the folder, its ``tokenizer/``, or ``../tokenizer``."""
    model_folder = Path(model_folder)
    candidates = [model_folder, model_folder / "tokenizer", model_folder.parent / "tokenizer"]
    for folder in candidates:
        if _has_tokenizer(folder):
            return folder
    raise FileNotFoundError(
        f"no T5 tokenizer found for {model_folder}: expected {_TOKENIZER_EXPECTED} "
        f"in {', '.join(str(c) for c in candidates)}; pass tokenizer_path"
    )


def load_t5_tokenizer(folder: str | Path) -> "PreTrainedTokenizerBase":
    """Load a local T5 tokenizer folder (``AutoTokenizer``, as the official code) and check it appends EOS."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir() or not _has_tokenizer(folder):
        raise FileNotFoundError(
            f"{folder}: not a T5 tokenizer folder; expected {_TOKENIZER_EXPECTED}, e.g. the tokenizer "
            "of DeepFloyd/t5-v1_1-xxl or ComfyUI's comfy/text_encoders/t5_tokenizer"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # damaged files, or saved by a transformers this one cannot read; error types vary
        import transformers

        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise ValueError(
            f"{folder}: the tokenizer files cannot be read by transformers {transformers.__version__} ({reason}); "
            "download them again, or save them with this transformers version"
        ) from None
    _check_tokenizer(tokenizer, folder)
    return tokenizer


def _check_tokenizer(tokenizer: "PreTrainedTokenizerBase", folder: Path) -> None:
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError(f"{folder}: the tokenizer defines no eos/pad token; a T5 tokenizer has </s> and <pad>")
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        raise ValueError(
            f"{folder}: the tokenizer does not end prompts with {tokenizer.eos_token!r}; not a T5 tokenizer"
        )


# ---------------------------------------------------------------------------
# Loading: Hugging Face folder
# ---------------------------------------------------------------------------


def find_model_folder(path: str | Path) -> Path:
    """``path`` if it has a ``config.json``, else its ``text_encoder/`` (diffusers pipeline layout)."""
    path = Path(path)
    for folder in (path, path / "text_encoder"):
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{path}: no config.json (nor text_encoder/config.json); a Hugging Face T5 folder has config.json "
        "and model.safetensors (or a sharded model.safetensors.index.json)"
    )


def encoder_class(model_type: str) -> type:
    """``T5EncoderModel`` for "t5", ``MT5EncoderModel`` for "mt5"."""
    import transformers

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown text encoder model_type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    return transformers.MT5EncoderModel if model_type == "mt5" else transformers.T5EncoderModel


def load_t5_folder(
    folder: str | Path, *, dtype: torch.dtype, device: torch.device | str, model_type: str | None = None
) -> "T5EncoderModel":
    """``T5EncoderModel`` / ``MT5EncoderModel.from_pretrained`` on a local folder (the class follows the
    config's ``model_type``, which must equal ``model_type`` when given), in ``dtype``, moved to ``device``."""
    from ..checkpoints import check_safetensors, read_json

    folder = Path(folder)
    config = read_json(folder / "config.json")  # a damaged config.json is named
    for weights in sorted(folder.glob("*.safetensors")):  # transformers would only say "SafetensorError"
        check_safetensors(weights)
    found = config.get("model_type")
    if found not in MODEL_TYPES or (model_type is not None and found != model_type):
        wanted = model_type or " or ".join(MODEL_TYPES)
        raise ValueError(
            f"{folder}: config.json describes a {found!r} model "
            f"({', '.join(config.get('architectures') or [])}), not a {wanted} encoder (model_type {wanted!r})"
        )
    model = encoder_class(found).from_pretrained(
        str(folder), local_files_only=True, attn_implementation="eager", **{transformers_dtype_kwarg(): dtype}
    )
    return model.to(device=device).eval()


# ---------------------------------------------------------------------------
# Loading: single .safetensors file (ComfyUI text_encoders layout)
# ---------------------------------------------------------------------------

_FINAL_NORM = "encoder.final_layer_norm.weight"
_REL_BIAS = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
# Entries of T5 files that are not encoder weights: decoder / LM head of a full T5,
# and ComfyUI's scaled-fp8 marker and per-layer input scales (used only for fp8 matmuls).
_SKIPPED_PREFIXES = ("decoder.", "lm_head.")
_SKIPPED_NAMES = ("scaled_fp8",)
_SKIPPED_SUFFIXES = (".scale_input",)
_WEIGHT_SCALE_SUFFIX = ".scale_weight"  # scaled fp8: real weight = stored weight * scale_weight
# Newer quantisation formats whose dequantisation this loader does not implement.
_UNSUPPORTED_SUFFIXES = (".weight_scale", ".comfy_quant", ".weight_scale_2", ".input_scale")


def load_t5_file(
    path: str | Path, *, dtype: torch.dtype, device: torch.device | str, model_type: str = "t5"
) -> "T5EncoderModel":
    """Build a ``T5EncoderModel`` ("t5") or ``MT5EncoderModel`` ("mt5") from a single safetensors file of its
    keys (config from the shapes; the two share key names, so the caller says which it is)."""
    from ..checkpoints import open_safetensors

    path = Path(path)
    if path.suffix != SINGLE_FILE_SUFFIX:
        raise ValueError(
            f"{path}: single-file T5 weights must be {SINGLE_FILE_SUFFIX} (use a Hugging Face folder otherwise)"
        )
    with open_safetensors(path) as handle:
        keys = list(handle.keys())
        prefix = _t5_prefix(keys, path)
        names = {key[len(prefix) :]: key for key in keys if key.startswith(prefix)}
        _reject_unsupported(names, path)
        shapes = {name: tuple(handle.get_slice(key).get_shape()) for name, key in names.items()}
        config = t5_config_from_shapes(shapes, model_type)
        state = _read_encoder_tensors(handle, names, dtype=dtype, device=device)
    return _build_from_state_dict(config, state, path, model_type)


def _t5_prefix(keys: list[str], path: Path) -> str:
    """The prefix under which a file holds T5 encoder keys ("" for plain files)."""
    prefix = encoder_prefix(keys, _FINAL_NORM, path, "T5")
    if not any(prefix + k in keys for k in _EMBED_KEYS) or prefix + _REL_BIAS.format(0) not in keys:
        raise ValueError(
            f"{path}: has T5-like keys but no token embedding or relative attention bias; file incomplete?"
        )
    return prefix


def _reject_unsupported(names: Mapping[str, str], path: Path) -> None:
    odd = sorted(n for n in names if n.endswith(_UNSUPPORTED_SUFFIXES))
    if odd:
        raise ValueError(
            f"{path}: uses a quantisation format this loader does not read (keys like {odd[0]!r}); "
            "use t5xxl_fp16.safetensors, t5xxl_fp8_e4m3fn.safetensors or t5xxl_fp8_e4m3fn_scaled.safetensors"
        )
    if any(_REL_BIAS.format(i) in names for i in range(1, 4)):
        raise ValueError(
            f"{path}: every block has its own relative attention bias: a UMT5 encoder (e.g. Wan's), not T5 v1.1"
        )


def _is_encoder_weight(name: str) -> bool:
    return not (
        name.startswith(_SKIPPED_PREFIXES)
        or name in _SKIPPED_NAMES
        or name.endswith(_SKIPPED_SUFFIXES)
        or name.endswith(_WEIGHT_SCALE_SUFFIX)
    )


def _read_encoder_tensors(handle, names: Mapping[str, str], *, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Encoder tensors in ``dtype`` on ``device``; fp8 upcast, scaled-fp8 weights multiplied by their scale."""
    state = {}
    for name, key in names.items():
        if not _is_encoder_weight(name):
            continue
        tensor = handle.get_tensor(key)
        scale_name = name[: -len("weight")] + _WEIGHT_SCALE_SUFFIX[1:] if name.endswith(".weight") else None
        if scale_name in names:
            scale = handle.get_tensor(names[scale_name]).to(torch.float32)
            tensor = tensor.to(torch.float32) * scale
        state[name] = tensor.to(device=device, dtype=dtype)
    # T5EncoderModel ties encoder.embed_tokens to shared; files usually store one of them.
    embed = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = embed
    return state


def _build_from_state_dict(
    config: "T5Config", state: dict[str, torch.Tensor], path: Path, model_type: str = "t5"
) -> "T5EncoderModel":
    with torch.device("meta"):
        model = encoder_class(model_type)(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: the keys do not form a T5 encoder: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


def t5_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], model_type: str = "t5") -> "T5Config":
    """T5 (or, with ``model_type="mt5"``, MT5) config of an encoder state dict, from its tensor shapes alone.

    d_model and vocabulary from the token embedding, heads and buckets from the
    relative attention bias, d_kv from q, d_ff and the gated-GELU (T5 v1.1) vs ReLU
    (original T5) feed-forward from ``wi_0`` / ``wi``, layers from the block count.
    """
    from transformers import MT5Config, T5Config

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown text encoder model_type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    embed = next(shapes[k] for k in _EMBED_KEYS if k in shapes)
    vocab_size, d_model = embed
    num_buckets, num_heads = shapes[_REL_BIAS.format(0)]
    inner_dim = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    ff = "encoder.block.0.layer.1.DenseReluDense."
    gated = ff + "wi_0.weight" in shapes
    d_ff = shapes[ff + ("wi_0.weight" if gated else "wi.weight")][0]
    num_layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.block."))
    if inner_dim % num_heads:
        raise ValueError(f"attention width {inner_dim} is not a multiple of {num_heads} heads; not a T5 encoder")
    config_class = MT5Config if model_type == "mt5" else T5Config
    return config_class(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=inner_dim // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


__all__ = [
    "MODEL_TYPES",
    "MT5_V1_3",
    "T5TextEncoder",
    "TextEncoderPreset",
    "T5_PRESETS",
    "T5_V2_0",
    "T5_V1_0",
    "T5_V1_1",
    "T5_V1_2",
    "T5_XXL_CHANNELS",
    "TOKENIZER_CONFIG",
    "TOKENIZER_FILES",
    "encode_token_ids",
    "encoder_states",
    "encoder_class",
    "find_model_folder",
    "find_tokenizer_folder",
    "load_mt5_encoder",
    "load_t5_encoder",
    "load_t5_file",
    "load_t5_folder",
    "load_t5_tokenizer",
    "t5_config_from_shapes",
]
