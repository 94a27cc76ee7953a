"""ComfyUI nodes: thin adapters over ``opensora_core`` (classic V1 node classes).

Imported only relatively from the pack's root ``__init__.py``: ComfyUI owns the top-level
module name ``nodes``. The core is imported relatively too (``..opensora_core``): the pack is
used from its checkout in ``custom_nodes/`` without being pip-installed, so the nodes always
run the core of the same checkout. Node ids are prefixed ``OpenSora`` and never renamed.
"""

from .loaders import OpenSoraLoraLoader, OpenSoraModelLoader, OpenSoraT5Loader, OpenSoraVAELoader
from .references import OpenSoraMaskBuilder
from .sampling import OpenSoraResolution, OpenSoraSampler
from .text import OpenSoraTextEncode
from .video import OpenSoraSaveVideo, OpenSoraVAEDecode, OpenSoraVAEEncode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "OpenSoraModelLoader": OpenSoraModelLoader,
    "OpenSoraLoraLoader": OpenSoraLoraLoader,
    "OpenSoraVAELoader": OpenSoraVAELoader,
    "OpenSoraT5Loader": OpenSoraT5Loader,
    "OpenSoraTextEncode": OpenSoraTextEncode,
    "OpenSoraMaskBuilder": OpenSoraMaskBuilder,
    "OpenSoraResolution": OpenSoraResolution,
    "OpenSoraSampler": OpenSoraSampler,
    "OpenSoraVAEDecode": OpenSoraVAEDecode,
    "OpenSoraVAEEncode": OpenSoraVAEEncode,
    "OpenSoraSaveVideo": OpenSoraSaveVideo,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "OpenSoraModelLoader": "Open-Sora Model Loader",
    "OpenSoraLoraLoader": "Open-Sora LoRA Loader",
    "OpenSoraVAELoader": "Open-Sora VAE Loader",
    "OpenSoraT5Loader": "Open-Sora T5 Loader",
    "OpenSoraTextEncode": "Open-Sora Text Encode",
    "OpenSoraMaskBuilder": "Open-Sora Mask Builder (references)",
    "OpenSoraResolution": "Open-Sora Resolution & Duration",
    "OpenSoraSampler": "Open-Sora Sampler",
    "OpenSoraVAEDecode": "Open-Sora VAE Decode",
    "OpenSoraVAEEncode": "Open-Sora VAE Encode",
    "OpenSoraSaveVideo": "Open-Sora Save Video (MP4)",
}
