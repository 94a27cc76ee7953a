"""The import graph of the core and the trainer reads top-down: no cycle, no arrow up the layers.

Every ``import`` counts, at module level or inside a function: a function-level import only delays a
dependency, it does not remove it. The official-class tables (``_CLASSES`` of ``models`` and ``vae``, whose
modules are imported on first use) count as imports too. A package ``__init__`` importing its own
submodules is not an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = {"opensora_core": REPO / "opensora_core", "opensora_train": REPO / "train"}

# Layers of the core, bottom first: a module may import its own layer and the layers below.
LAYERS = [
    {"atomic", "dtypes", "official_config", "geometry", "model_args", "media", "checkpoints"},
    {"text", "sampling", "conditioning", "models", "vae", "lora"},
    {"families"},
    {"loading"},
    {"pipeline"},
    {"demo", "cli", "parity"},
]


def _module_name(package: str, path: Path) -> str:
    parts = [package, *path.relative_to(PACKAGES[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(pkg, p): p for pkg, root in PACKAGES.items() for p in root.rglob("*.py")}


def _targets(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``module`` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif _is_class_table(node):
            names = [_absolute(package, value.elts[0].value) for value in node.value.values]  # (".stdit3", "STDiT3")
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, "." * node.level + (node.module or "")) if node.level else node.module
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not name.startswith(module + "."):
                found.add(name)
    return found


def _absolute(package: str, name: str) -> str:
    """``..vae.pipeline`` seen from ``opensora_core.models`` -> ``opensora_core.vae.pipeline``."""
    level = len(name) - len(name.lstrip("."))
    anchor = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join(anchor + ([name.lstrip(".")] if name.lstrip(".") else []))


def _is_class_table(node: ast.AST) -> bool:
    if not isinstance(node, ast.AnnAssign | ast.Assign) or not isinstance(node.value, ast.Dict):
        return False
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return any(isinstance(t, ast.Name) and t.id == "_CLASSES" for t in targets)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _targets(m, p, set(modules)) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "opensora_core" or len(parts) < 2:
        return None
    return next((i for i, layer in enumerate(LAYERS) if parts[1] in layer), None)


def test_no_module_imports_itself_back():
    assert _cycle(_graph()) is None


def test_core_packages_form_no_cycle():
    """Between the core's packages (``opensora_core.models`` -> ``opensora_core.vae`` etc.) too."""
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        top = ".".join(module.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(t.split(".")[:2]) for t in targets)
    assert _cycle({k: v - {k} for k, v in packages.items()}) is None


def test_every_core_module_has_a_layer():
    unplaced = sorted(m for m in _modules() if m.startswith("opensora_core.") and _layer(m) is None)
    assert unplaced == []


def test_no_arrow_points_up_the_layers():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module)
    )
    assert upward == []
