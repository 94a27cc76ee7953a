"""ComfyUI node pack for Open-Sora (v1.0 / v1.1 / v1.2) video generation.

ComfyUI imports this package from ``custom_nodes/``. Our ``nodes`` package is
imported relatively, because ComfyUI owns the top-level module name ``nodes``;
the nodes reach ``opensora_core`` relatively as well (``<pack>.opensora_core``), so
nothing has to be pip-installed beyond ``requirements.txt``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
