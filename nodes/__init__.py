"""ComfyUI nodes: thin adapters over ``opensora_core``, declared with ComfyUI's V3 node schema.

ComfyUI calls the pack's ``comfy_entrypoint`` (re-exported by the root ``__init__.py``) and registers
every class :meth:`OpenSoraExtension.get_node_list` returns under its schema's ``node_id``. Imported
only relatively from the pack's root: ComfyUI owns the top-level module name ``nodes``. The core is
imported relatively too (``..opensora_core``): the pack is used from its checkout in ``custom_nodes/``
without being pip-installed, so the nodes always run the core of the same checkout. Node ids are
prefixed ``OpenSora`` and never renamed (saved workflows refer to them).
"""

from .comfy_bridge import ComfyExtension, io
from .loaders import OpenSoraLoraLoader, OpenSoraModelLoader, OpenSoraT5Loader, OpenSoraVAELoader
from .references import OpenSoraMaskBuilder
from .sampling import OpenSoraResolution, OpenSoraSampler
from .text import OpenSoraTextEncode
from .video import OpenSoraSaveVideo, OpenSoraVAEDecode, OpenSoraVAEEncode

NODES: list[type[io.ComfyNode]] = [
    OpenSoraModelLoader,
    OpenSoraLoraLoader,
    OpenSoraVAELoader,
    OpenSoraT5Loader,
    OpenSoraTextEncode,
    OpenSoraMaskBuilder,
    OpenSoraResolution,
    OpenSoraSampler,
    OpenSoraVAEDecode,
    OpenSoraVAEEncode,
    OpenSoraSaveVideo,
]


class OpenSoraExtension(ComfyExtension):
    """The pack as a V3 extension: the node classes ComfyUI registers."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


def comfy_entrypoint() -> OpenSoraExtension:
    """What ComfyUI calls after importing the pack (nodes.py ``load_custom_node``)."""
    return OpenSoraExtension()
