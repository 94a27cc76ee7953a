"""What the Hugging Face text encoders (T5 / mT5 in :mod:`.t5`, CLIP in :mod:`.clip`) share when they are
read from files: the ``transformers`` dtype keyword, the key prefix of a single-file encoder, and a guess
at what a wrong file holds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def transformers_dtype_kwarg() -> str:
    """The ``from_pretrained`` keyword for the dtype in the installed transformers (``dtype`` from 4.56)."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def encoder_prefix(keys: Sequence[str], final_norm: str, path: Path, name: str) -> str:
    """The one prefix ("" for plain files) under which a file holds the ``name`` encoder, found from its final
    norm key; a ``ValueError`` naming what the file holds when there is none or several."""
    prefixes = sorted({k[: -len(final_norm)] for k in keys if k.endswith(final_norm)})
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        raise ValueError(f"{path}: not a {name} text encoder; it looks like {describe_state_dict(keys)}")
    if len(prefixes) > 1:
        raise ValueError(f"{path}: holds several {name} text encoders (prefixes {prefixes}); extract one")
    return prefixes[0]


def describe_state_dict(keys: Sequence[str]) -> str:
    """A short guess at what a state dict holds, for error messages."""
    joined = "\n".join(keys)
    guesses = (
        (("y_embedder.", "x_embedder.", "spatial_blocks.", "t_embedder."), "a diffusion transformer (STDiT / DiT)"),
        (("spatial_vae.", "temporal_vae.", "post_quant_conv.", "decoder.up_blocks.", "decoder.conv_in."), "a VAE"),
        (("text_model.encoder.", "transformer.resblocks."), "a CLIP text encoder"),
        (("model.layers.0.self_attn.",), "a decoder-only language model"),
        (("double_blocks.", "joint_blocks.", "input_blocks."), "an image diffusion model (Flux / SD3 / SD)"),
    )
    for markers, what in guesses:
        if any(marker in joined for marker in markers):
            return what
    return f"an unknown model (first keys: {', '.join(list(keys)[:3])})"


__all__ = ["describe_state_dict", "encoder_prefix", "transformers_dtype_kwarg"]
