"""Filters: thresholds on any score or metadata column, applied in order, with the count each removes.

A filter is ``COLUMN OP VALUE`` with OP one of ``>= <= > < == !=``, e.g. ``flow>=0.5``, ``text_area<=0.02``,
``aes>=5``, ``cmotion!=static``, ``num_frames>=51``. Readable names stand for the score columns
(:data:`ALIASES`: ``motion`` = ``flow``, ``aesthetic`` = ``aes``, ``camera`` = ``cmotion``, ``text`` =
``text_area``). A clip is removed by the first filter it fails and counted there (as the official
``tools/datasets/datautil.py`` applies ``--aesmin``, ``--flowmin``, ``--matchmin`` one after another); a clip
without the value (e.g. no caption for ``match``) fails.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

ALIASES = {"motion": "flow", "aesthetic": "aes", "camera": "cmotion", "camera_motion": "cmotion",
           "text": "text_area"}
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
             "!=": operator.ne}
TEXT_COLUMNS = ("cmotion",)  # compared as words; every other column as numbers
_PATTERN = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: float | str
    text: str  # as written

    def passes(self, value: Any) -> bool:
        if value is None or value == "":
            return False
        if self.column not in TEXT_COLUMNS:
            value = float(value)
        return OPERATORS[self.op](value, self.value)

    def reason(self, value: Any) -> str:
        shown = "no value" if value is None or value == "" else (value if isinstance(value, str) else f"{value:g}")
        return f"{self.column} = {shown}, fails {self.text}"


def parse_filter(text: str, columns: set[str]) -> Filter:
    """A filter from ``COLUMN OP VALUE``; ``columns``: the columns this run will have."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"--filter {text!r}: expected COLUMN OP VALUE with OP one of {' '.join(OPERATORS)}, "
                         "e.g. flow>=0.5")
    name, op, raw = match.groups()
    column = ALIASES.get(name, name)
    if column not in columns:
        raise ValueError(f"--filter {text!r}: no column {column!r} in this run (columns: {', '.join(sorted(columns))});"
                         " a score column needs its stage in --scores")
    if column in TEXT_COLUMNS:
        if op not in ("==", "!="):
            raise ValueError(f"--filter {text!r}: {column} holds words; use == or !=")
        return Filter(column, op, raw.strip("'\""), text)
    try:
        return Filter(column, op, float(raw), text)
    except ValueError:
        raise ValueError(f"--filter {text!r}: {raw!r} is not a number") from None


def apply_filters(rows: list[dict[str, Any]], filters: list[Filter]) -> tuple[list[int], dict[str, int],
                                                                               dict[int, str]]:
    """(indices kept, removed count per filter text, removal reason per removed index)."""
    kept, removed, reasons = [], {f.text: 0 for f in filters}, {}
    for i, row in enumerate(rows):
        failed = next((f for f in filters if not f.passes(row.get(f.column))), None)
        if failed is None:
            kept.append(i)
        else:
            removed[failed.text] += 1
            reasons[i] = failed.reason(row.get(failed.column))
    return kept, removed, reasons


__all__ = ["ALIASES", "Filter", "apply_filters", "parse_filter"]
