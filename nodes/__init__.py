"""ComfyUI nodes: thin adapters over ``opensora_core``.

Only ever imported relatively from the pack (``from .nodes import ...``).
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
