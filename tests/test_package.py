"""Packaging and import hygiene of the pack."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO

COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "nodes", "server", "execution", "latent_preview"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_never_imports_comfyui():
    offenders = {
        str(p.relative_to(REPO)): sorted(_imported_roots(p) & COMFY_MODULES)
        for p in (REPO / "opensora_core").rglob("*.py")
        if _imported_roots(p) & COMFY_MODULES
    }
    assert offenders == {}


def test_importing_core_has_no_side_effects():
    """Importing every core module opens no file, touches no CUDA and sets no torch flag."""
    code = r"""
import builtins, io, os, pkgutil, importlib, sys
import torch
opened = []
real_open, real_io_open = builtins.open, io.open
def spy(file, *a, **k):
    opened.append(str(file)); return real_open(file, *a, **k)
flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_default_dtype(),
         torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
torch.cuda.is_available = lambda: (_ for _ in ()).throw(AssertionError("CUDA probed at import"))
torch.cuda.init = torch.cuda.is_available
import opensora_core
builtins.open = io.open = spy
for m in pkgutil.walk_packages(opensora_core.__path__, "opensora_core."):
    if m.name.endswith("__main__"):
        continue
    importlib.import_module(m.name)
builtins.open, io.open = real_open, real_io_open
after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_default_dtype(),
         torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
ours = [f for f in opened if "opensora_core" in f]
assert not ours, ours
assert flags == after, (flags, after)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_every_core_package_is_distributed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "opensora_core").rglob("__init__.py")
    } | {"opensora_core.data"}
    on_disk |= {"opensora_train" + "".join("." + part for part in p.parent.relative_to(REPO / "train").parts)
                for p in (REPO / "train").rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert config["package-dir"]["opensora_train"] == "train"
    assert "nodes" not in listed  # ComfyUI owns the top-level name `nodes`


def test_pack_exports_node_mappings():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "opensora_pack_under_test", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) <= set(module.NODE_CLASS_MAPPINGS)


# stdlib modules newer than Python 3.10 -> the first version that has them
NEW_STDLIB = {"tomllib": (3, 11)}


def test_requires_python_admits_only_versions_the_code_runs_on():
    """Every stdlib module the shipped code imports exists in the lowest Python that pyproject admits."""
    floor_text = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(part) for part in floor_text.removeprefix(">=").split("."))
    shipped = [p for folder in ("opensora_core", "train", "nodes") for p in (REPO / folder).rglob("*.py")]
    needed = {name: version for p in shipped for name, version in NEW_STDLIB.items() if name in _imported_roots(p)}
    assert all(floor >= version for version in needed.values()), (floor_text, needed)


def test_pack_root_imports_as_a_lone_module():
    """pytest imports the root __init__.py as a module named "__init__" when the checkout folder is not an
    identifier (a clone named ComfyUI-OpenSora); that must not fail, or no test runs in such a clone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("__init__", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {}
