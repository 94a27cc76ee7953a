"""Loading weights files into models: diffusion transformers (:mod:`.dit`) and video VAEs (:mod:`.vae`; the
Open-Sora-Plan VAEs in :mod:`.osp_vae` and the Hunyuan VAE in :mod:`.hunyuan_vae` until their families register).

Both read files with :mod:`opensora_core.checkpoints` (generic, safe IO), ask the family registry
(:mod:`opensora_core.families`) what a file holds, build the model from its shapes and load it with the
one strict routine, ``checkpoints.load_into``. T5 files are loaded by :mod:`opensora_core.text.t5`.
"""

from .dit import LoadedModel, infer_dit_config, load_dit, load_dit_weights, model_family, read_dit_config
from .hunyuan_vae import load_hunyuan_vae
from .osp_vae import load_osp_vae
from .vae import load_vae, read_state_dict

__all__ = [
    "LoadedModel",
    "infer_dit_config",
    "load_dit",
    "load_dit_weights",
    "load_hunyuan_vae",
    "load_osp_vae",
    "load_vae",
    "model_family",
    "read_dit_config",
    "read_state_dict",
]
