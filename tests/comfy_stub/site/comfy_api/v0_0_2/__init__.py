"""Test stand-in for ``comfy_api.v0_0_2``: the V3 node schema (``io``) and ``ComfyExtension``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import io


class ComfyExtension(ABC):
    """What a pack's ``comfy_entrypoint`` returns: ComfyUI awaits ``get_node_list`` and registers each class."""

    async def on_load(self) -> None:
        return None

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]: ...


__all__ = ["ComfyExtension", "io"]
