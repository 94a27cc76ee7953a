"""ComfyUI node pack for Open-Sora (v1.0 / v1.1 / v1.2) video generation.

ComfyUI imports this package from ``custom_nodes/``. Our ``nodes`` package is
imported relatively, because ComfyUI owns the top-level module name ``nodes``;
the nodes reach ``opensora_core`` relatively as well (``<pack>.opensora_core``), so
nothing has to be pip-installed beyond ``requirements.txt``.
"""

if __package__:  # the pack, imported as a package (ComfyUI: custom_nodes/<folder>, named after the folder)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # this file alone, as module "__init__": pytest does that in a checkout whose folder name is not an
    # identifier (ComfyUI-OpenSora); the tests load the pack themselves (tests/comfy_stub)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
