"""Test-only stand-in for the ComfyUI modules the pack uses, and a loader that imports the pack
the way ComfyUI does (a package loaded from the repository root, not pip-installed).

``with comfy_stub.installed(tmp) as env:`` puts ``site/`` (fake ``folder_paths``,
``latent_preview`` and ``comfy.utils`` / ``model_management`` / ``model_patcher`` /
``cli_args`` / ``latent_formats``) in front of
``sys.path``, points the model/output/input folders at ``tmp``, loads the pack and yields
an :class:`Env`; everything is removed again afterwards. Never shipped in ``nodes/``.
"""

from __future__ import annotations

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
STUB_MODULES = ("folder_paths", "comfy", "latent_preview")


@dataclass
class Env:
    pack: ModuleType
    models: Path
    output: Path
    input: Path

    @property
    def nodes(self) -> dict[str, type]:
        return self.pack.NODE_CLASS_MAPPINGS

    def node(self, name: str):
        return self.nodes[name]()

    @property
    def model_management(self) -> ModuleType:
        return sys.modules["comfy.model_management"]

    @property
    def progress(self) -> list:
        return sys.modules["comfy.utils"].UPDATES

    @property
    def previews(self) -> list:
        return sys.modules["latent_preview"].SHOWN


def load_pack(name: str = PACK_NAME) -> ModuleType:
    """Import the repository root as a package (ComfyUI: spec_from_file_location on custom_nodes/<dir>)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
        for name in ("comfy.utils", "comfy.model_management", "comfy.model_patcher", "latent_preview"):
            importlib.import_module(name)
        yield Env(load_pack(), models, output, inputs)
    finally:
        sys.path.remove(str(SITE))
        _forget(STUB_MODULES + (PACK_NAME,))
