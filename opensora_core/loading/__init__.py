"""Loading weights files into models: diffusion transformers (:mod:`.dit`) and video VAEs (:mod:`.vae`, every
registered VAE kind incl. the Open-Sora-Plan VAEs and the Open-Sora 2.0 Hunyuan VAE).

Both read files with :mod:`opensora_core.checkpoints` (generic, safe IO), ask the family registry
(:mod:`opensora_core.families`) what a file holds, build the model from its shapes and load it with the
one strict routine, ``checkpoints.load_into``. T5 files are loaded by :mod:`opensora_core.text.t5`.
"""

from .dit import LoadedModel, infer_dit_config, load_dit, load_dit_weights, model_family, read_dit_config
from .vae import load_vae, read_state_dict

__all__ = [
    "LoadedModel",
    "infer_dit_config",
    "load_dit",
    "load_dit_weights",
    "load_vae",
    "model_family",
    "read_dit_config",
    "read_state_dict",
]
