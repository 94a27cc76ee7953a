"""CLIP text encoder as Open-Sora 2.0 uses it: the pooled vector of openai/clip-vit-large-patch14.

Follows ``HFEmbedder`` (opensora/models/text/conditioner.py, 2.0 code): ``CLIPTokenizer`` with padding to 77
tokens and truncation, ``CLIPTextModel`` called without an attention mask (only its causal mask), and the
``pooler_output`` (the final-layer-normed state at the first end-of-text token, 768 wide for CLIP-L) taken
as the MMDiT's ``y_vec``. No text projection is applied.

Weights load from

* a Hugging Face folder (a ``CLIPModel`` such as openai/clip-vit-large-patch14, or a ``CLIPTextModel``;
  tokenizer files ``vocab.json`` + ``merges.txt`` beside it or in ``tokenizer/``), or
* a single ``.safetensors`` of CLIP text keys as ComfyUI keeps it (``clip_l.safetensors``: ``text_model.*``
  plus ``text_projection.weight``, maybe under a prefix), with the tokenizer from a folder (ComfyUI ships
  the CLIP-L tokenizer as ``comfy/sd1_tokenizer``). The config is read off the shapes (OpenAI CLIP text
  models use 64-wide heads and quick-GELU).

Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .encoder_files import encoder_prefix, transformers_dtype_kwarg

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

CLIP_MAX_LENGTH = 77
CLIP_HEAD_DIM = 64  # every OpenAI CLIP text tower (B: 512/8, L: 768/12, G: 1280/20)
TOKENIZER_FILES = ("vocab.json", "merges.txt")
_FINAL_NORM = "text_model.final_layer_norm.weight"
_TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
_POSITION_EMBEDDING = "text_model.embeddings.position_embedding.weight"
_NOT_TEXT_MODEL = ("text_projection.weight", "logit_scale", "text_model.embeddings.position_ids")


class CLIPTextEncoder:
    """A ``CLIPTextModel`` with its tokenizer: prompts -> pooled vectors (B, hidden)."""

    def __init__(self, model: "CLIPTextModel", tokenizer: "PreTrainedTokenizerBase", max_length: int = CLIP_MAX_LENGTH):
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"the CLIP tokenizer has {len(tokenizer)} tokens but the weights only {model.config.vocab_size} "
                "embeddings: tokenizer and weights do not belong together"
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def output_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, 77) int64 ids: start token, prompt, end token, padded with the pad token (CLIP-L: end-of-text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"].to(torch.int64)

    @torch.no_grad()
    def encode_pooled(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, hidden) ``pooler_output`` in the model's dtype, no attention mask (as the official embedder)."""
        ids = self.tokenize(texts).to(self.device)
        return self.model(input_ids=ids, attention_mask=None).pooler_output


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_clip_encoder(path: str | Path, tokenizer_path: str | Path | None = None, *,
                      dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> CLIPTextEncoder:
    """Load CLIP text weights (HF folder or single ``.safetensors``) and the CLIP tokenizer.

    ``tokenizer_path``: a folder with ``vocab.json`` and ``merges.txt``; required for a single file, optional
    for a folder (default: the folder or its ``tokenizer/``).
    """
    path = Path(path)
    if path.is_dir():
        tokenizer = load_clip_tokenizer(tokenizer_path or _find_tokenizer(path))
        model = load_clip_folder(path, dtype=dtype, device=device)
    elif path.is_file():
        if tokenizer_path is None:
            raise ValueError(
                f"{path}: a single-file CLIP has no tokenizer; pass tokenizer_path, a folder with "
                f"{' and '.join(TOKENIZER_FILES)} (ComfyUI ships the CLIP-L one in comfy/sd1_tokenizer)"
            )
        tokenizer = load_clip_tokenizer(tokenizer_path)
        model = load_clip_file(path, tokenizer=tokenizer, dtype=dtype, device=device)
    else:
        raise FileNotFoundError(f"CLIP weights not found: {path}")
    return CLIPTextEncoder(model, tokenizer)


def _find_tokenizer(folder: Path) -> Path:
    for candidate in (folder, folder / "tokenizer", folder.parent / "tokenizer"):
        if all((candidate / name).is_file() for name in TOKENIZER_FILES):
            return candidate
    raise FileNotFoundError(
        f"no CLIP tokenizer ({', '.join(TOKENIZER_FILES)}) in or beside {folder}; pass tokenizer_path"
    )


def load_clip_tokenizer(folder: str | Path) -> "PreTrainedTokenizerBase":
    """``CLIPTokenizer`` from a local folder (the official class), checked to add start and end tokens."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not all((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder}: not a CLIP tokenizer folder; expected {' and '.join(TOKENIZER_FILES)} "
            "(e.g. the tokenizer of openai/clip-vit-large-patch14 or ComfyUI's comfy/sd1_tokenizer)"
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tokenizer("a")["input_ids"]
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        raise ValueError(f"{folder}: the tokenizer does not wrap prompts in start/end tokens; not a CLIP tokenizer")
    return tokenizer


def load_clip_folder(folder: str | Path, *, dtype: torch.dtype, device: torch.device | str) -> "CLIPTextModel":
    """``CLIPTextModel.from_pretrained`` on a local CLIP (or CLIP text) folder, as the official embedder."""
    from transformers import CLIPTextModel

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; a Hugging Face CLIP folder has config.json + weights")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in ("clip", "clip_text_model"):
        raise ValueError(f"{folder}: config.json describes a {model_type!r} model, not CLIP")
    model = CLIPTextModel.from_pretrained(str(folder), local_files_only=True, **{transformers_dtype_kwarg(): dtype})
    return model.to(device=device).eval()


def load_clip_file(path: str | Path, *, tokenizer: "PreTrainedTokenizerBase", dtype: torch.dtype,
                   device: torch.device | str) -> "CLIPTextModel":
    """A ``CLIPTextModel`` from a single safetensors file of CLIP text keys (config from the shapes, special
    token ids from the tokenizer: the pooled state is read at the first end-of-text token)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        keys = list(handle.keys())
        prefix = encoder_prefix(keys, _FINAL_NORM, path, "CLIP")
        names = {k[len(prefix):]: k for k in keys if k.startswith(prefix) and k[len(prefix):] not in _NOT_TEXT_MODEL}
        names = {n: k for n, k in names.items() if n.startswith("text_model.")}
        shapes = {n: tuple(handle.get_slice(k).get_shape()) for n, k in names.items()}
        config = clip_config_from_shapes(shapes, tokenizer)
        state = {n: handle.get_tensor(k).to(device=device, dtype=dtype) for n, k in names.items()}
    return _build(config, state, path)


def _build(config: "CLIPTextConfig", state: dict[str, torch.Tensor], path: Path) -> "CLIPTextModel":
    """Load ``text_model.*`` names into the installed transformers' CLIPTextModel (which, from transformers 5,
    has no ``text_model.`` level)."""
    from transformers import CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(config)
    nested = any(k.startswith("text_model.") for k in model.state_dict())
    state = state if nested else {k.removeprefix("text_model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: the keys do not form a CLIP text encoder: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    _init_position_ids(model)
    return model.eval()


def _init_position_ids(model: "CLIPTextModel") -> None:
    """The non-persistent ``position_ids`` buffer is left on the meta device by a meta build; recreate it."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            weight = module.position_embedding.weight
            module.register_buffer("position_ids", torch.arange(weight.shape[0], device=weight.device)[None],
                                   persistent=False)


def clip_config_from_shapes(shapes: Mapping[str, tuple[int, ...]],
                            tokenizer: "PreTrainedTokenizerBase") -> "CLIPTextConfig":
    """``CLIPTextConfig`` of a CLIP text state dict from its shapes (``text_model.*`` names): widths from the
    embeddings and the MLP, layers from the count, heads of 64 channels, quick-GELU, LayerNorm eps 1e-5."""
    from transformers import CLIPTextConfig

    vocab_size, hidden = shapes[_TOKEN_EMBEDDING]
    layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith("text_model.encoder.layers."))
    if hidden % CLIP_HEAD_DIM:
        raise ValueError(f"CLIP width {hidden} is not a multiple of the {CLIP_HEAD_DIM}-wide heads of OpenAI CLIP")
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // CLIP_HEAD_DIM,
        max_position_embeddings=shapes[_POSITION_EMBEDDING][0],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


__all__ = [
    "CLIP_MAX_LENGTH",
    "CLIPTextEncoder",
    "clip_config_from_shapes",
    "load_clip_encoder",
    "load_clip_file",
    "load_clip_folder",
    "load_clip_tokenizer",
]
