"""ComfyUI node pack for Open-Sora (v1.0 / v1.1 / v1.2) video generation.

ComfyUI imports this package from ``custom_nodes/`` and calls ``comfy_entrypoint()`` (the V3 node schema's
extension entry point; the pack defines no ``NODE_CLASS_MAPPINGS``, which ComfyUI would read instead).
The nodes are imported when ComfyUI calls it, so importing the package itself needs nothing of ComfyUI
(pytest imports it as the checkout's root package). Our ``nodes`` package is imported relatively, because
ComfyUI owns the top-level module name ``nodes``; the nodes reach ``opensora_core`` relatively as well
(``<pack>.opensora_core``), so nothing has to be pip-installed beyond ``requirements.txt``.
"""

import logging

WEB_DIRECTORY = None

if __package__:  # the pack, imported as a package (ComfyUI: custom_nodes/<folder>, named after the folder)

    def comfy_entrypoint():
        """The pack's V3 extension (``nodes.OpenSoraExtension``). ComfyUI logs only the message of an error
        raised here, so the traceback is logged first."""
        try:
            from .nodes import comfy_entrypoint as entrypoint
        except Exception:
            logging.getLogger("opensora").exception("the Open-Sora nodes could not be imported")
            raise
        return entrypoint()

# else: this file alone, as module "__init__": pytest does that in a checkout whose folder name is not an
# identifier (ComfyUI-OpenSora); it defines no entry point then, and the tests load the pack themselves
