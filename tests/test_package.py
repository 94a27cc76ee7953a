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


def test_pack_exports_a_v3_entrypoint_and_no_v1_mappings(tmp_path):
    """ComfyUI reads NODE_CLASS_MAPPINGS first when a pack has it; ours registers through comfy_entrypoint only."""
    import comfy_stub

    with comfy_stub.installed(tmp_path) as env:
        assert not hasattr(env.pack, "NODE_CLASS_MAPPINGS")
        extension = env.pack.comfy_entrypoint()
        assert type(extension).__mro__[1].__name__ == "ComfyExtension" and env.nodes


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
    assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")


# What the Comfy Registry / ComfyUI's comfy_config (v0.3.64) accepts as OS and accelerator classifiers.
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}


def test_pyproject_is_complete_for_the_comfy_registry():
    """Repository URL, a publisher id, the minimum ComfyUI version, and OS/GPU classifiers the registry reads
    (it drops the whole list when one value is not its own)."""
    import re

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = config["project"], config["tool"]["comfy"]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]) and comfy["DisplayName"]
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    os_values = [c.removeprefix("Operating System :: ") for c in project["classifiers"] if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in project["classifiers"] if c.startswith("Environment ::")]
    assert os_values and all(v.startswith(REGISTRY_OS_PREFIXES) for v in os_values)
    assert accelerators and set(accelerators) <= REGISTRY_ACCELERATORS
