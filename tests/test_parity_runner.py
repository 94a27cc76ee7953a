"""The parity runner knows every handler module, and every reference case of the four families has a handler."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO, reference_cases

from opensora_core.parity.runner import HANDLER_MODULES, Case, find_handler

ALL_CASES = reference_cases("*")


def _defines_handlers(path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HANDLERS" for t in node.targets)
               for node in tree.body)


def test_every_handler_module_is_listed():
    modules = sorted(p.stem for p in (REPO / "opensora_core" / "parity").glob("*.py") if _defines_handlers(p))
    assert sorted(HANDLER_MODULES) == modules


def test_reference_cases_of_every_family_are_found(reference):
    families = {case.parent.parent.name for case in ALL_CASES}
    assert families == {"v1_1", "v1_2", "osp", "v2_0"}


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c.parent.parent.name}/{c.name}" for c in ALL_CASES])
def test_every_reference_case_has_a_handler(case):
    assert find_handler(Case(case)) is not None
