"""ComfyUI nodes: thin adapters over ``opensora_core``, declared with ComfyUI's V3 node schema.

ComfyUI calls the pack's ``comfy_entrypoint`` (re-exported by the root ``__init__.py``) and registers
every class :meth:`OpenSoraExtension.get_node_list` returns under its schema's ``node_id``. Imported
only relatively from the pack's root: ComfyUI owns the top-level module name ``nodes``. The core is
imported relatively too (``..opensora_core``): the pack is used from its checkout in ``custom_nodes/``
without being pip-installed, so the nodes always run the core of the same checkout. Node ids are
prefixed ``OpenSora`` and never renamed (saved workflows refer to them).
"""

import logging

from . import comfy_bridge as bridge
from .comfy_bridge import ComfyExtension, io
from .loaders import (
    OpenSoraCLIPLoader,
    OpenSoraLoraLoader,
    OpenSoraModelLoader,
    OpenSoraModelLoaderMemory,
    OpenSoraT5Loader,
    OpenSoraVAELoader,
)
from .references import OpenSoraConditionImages, OpenSoraMaskBuilder
from .sampling import OpenSoraGuidance, OpenSoraResolution, OpenSoraSampler
from .native_nodes import NATIVE_NODES
from .native_v2_nodes import NATIVE_V2_NODES
from .text import OpenSoraTextEncode
from .video import OpenSoraSaveVideo, OpenSoraVAEDecode, OpenSoraVAEEncode

log = logging.getLogger("opensora")

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
    OpenSoraModelLoaderMemory,
    OpenSoraCLIPLoader,
    OpenSoraConditionImages,
    OpenSoraGuidance,
]


def native_nodes() -> list[type[io.ComfyNode]]:
    """The native MODEL nodes, when ComfyUI's internal API is as they expect (probed); else none, logged."""
    try:
        bridge.native_api()
    except bridge.NativeUnavailable as err:
        log.warning("Open-Sora: the native MODEL nodes are not registered (%s); the other Open-Sora nodes work", err)
        return []
    return list(NATIVE_NODES) + list(NATIVE_V2_NODES)


class OpenSoraExtension(ComfyExtension):
    """The pack as a V3 extension: the node classes ComfyUI registers."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.x calls get_node_list (not on_load) once when it loads the pack
        bridge.watch_queued_prompts()
        return list(NODES) + native_nodes()


def comfy_entrypoint() -> OpenSoraExtension:
    """What ComfyUI calls after importing the pack (nodes.py ``load_custom_node``)."""
    return OpenSoraExtension()
