"""Test-only stand-in for the ComfyUI modules the pack uses, and a loader that imports the pack
the way ComfyUI does (a package loaded from the repository root, not pip-installed).

``with comfy_stub.installed(tmp) as env:`` puts ``site/`` (fake ``folder_paths``,
``latent_preview``, ``comfy.utils`` / ``model_management`` / ``model_patcher`` /
``cli_args`` / ``latent_formats`` and the V3 schema ``comfy_api.v0_0_2``) in front of
``sys.path``, points the model/output/input folders at ``tmp``, loads the pack, registers its nodes
from ``comfy_entrypoint()`` as ComfyUI does and yields an :class:`Env`; everything is removed again
afterwards. Never shipped in ``nodes/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
PACK_NAME = "opensora_comfy_pack"  # ComfyUI uses the folder path as the module name; any name works
STUB_MODULES = ("folder_paths", "comfy", "comfy_api", "latent_preview", "server")


@dataclass
class Env:
    pack: ModuleType
    nodes: dict[str, type]  # node id -> class, as ComfyUI registered them
    models: Path
    output: Path
    input: Path

    def run(self, node_id: str, *args, hidden: dict | None = None, **kwargs) -> tuple:
        """Run a node's ``execute`` as ComfyUI does (on a class clone holding the hidden values): its outputs."""
        cls = self.nodes[node_id].PREPARE_CLASS_CLONE(hidden or {})
        return cls.EXECUTE_NORMALIZED(*args, **kwargs).args

    def ui(self, node_id: str, *args, hidden: dict | None = None, **kwargs) -> dict:
        """The UI part of an output node's result (what ComfyUI sends to the frontend)."""
        cls = self.nodes[node_id].PREPARE_CLASS_CLONE(hidden or {})
        return cls.EXECUTE_NORMALIZED(*args, **kwargs).ui

    @property
    def model_management(self) -> ModuleType:
        return sys.modules["comfy.model_management"]

    @property
    def progress(self) -> list:
        return sys.modules["comfy.utils"].UPDATES

    @property
    def previews(self) -> list:
        return sys.modules["latent_preview"].SHOWN

    @property
    def preview_factors(self) -> list:
        return sys.modules["latent_preview"].FACTORS


def load_pack(name: str = PACK_NAME) -> ModuleType:
    """Import the repository root as a package (ComfyUI: spec_from_file_location on custom_nodes/<dir>)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registered_nodes(pack: ModuleType) -> dict[str, type]:
    """node id -> class, as ComfyUI registers a V3 pack: ``comfy_entrypoint()``, then ``get_node_list()``."""
    extension = pack.comfy_entrypoint()
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


@contextlib.contextmanager
def installed(root: Path):
    """Stub ComfyUI modules + folders under ``root`` + the pack, for the duration of the block."""
    models, output, inputs = root / "models", root / "output", root / "input"
    for folder in (models, output, inputs):
        folder.mkdir(parents=True, exist_ok=True)
    _forget(STUB_MODULES + (PACK_NAME,))
    sys.path.insert(0, str(SITE))
    try:
        importlib.import_module("folder_paths").configure(str(models), str(output), str(inputs))
        for name in ("comfy.utils", "comfy.model_management", "comfy.model_patcher", "latent_preview", "comfy_api.v0_0_2"):
            importlib.import_module(name)
        pack = load_pack()
        yield Env(pack, registered_nodes(pack), models, output, inputs)
    finally:
        sys.path.remove(str(SITE))
        _forget(STUB_MODULES + (PACK_NAME,))
