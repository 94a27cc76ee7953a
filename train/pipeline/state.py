"""Finished work kept between runs, so a large folder can be processed in several sittings.

One JSON object per line, ``{"kind": ..., "key": ..., "value": ...}``, appended (and flushed) as each
piece of work finishes; on start the file is read back. A line cut short by a crash is ignored (that
piece of work is simply done again). ``kind`` names the stage and its options, so changing an option
recomputes that stage only.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("opensora")


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], Any] = {}
        if path.is_file():
            self._load()

    def _load(self) -> None:
        broken = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                self._values[(record["kind"], record["key"])] = record["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                broken += 1
        if broken:
            log.warning("%s: %d unreadable line(s) ignored (an interrupted run); that work is redone", self.path, broken)

    def get(self, kind: str, key: str) -> Any | None:
        return self._values.get((kind, key))

    def has(self, kind: str, key: str) -> bool:
        return (kind, key) in self._values

    def put(self, kind: str, key: str, value: Any) -> None:
        line = json.dumps({"kind": kind, "key": key, "value": value}, allow_nan=True)
        with self._lock:
            self._values[(kind, key)] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")


__all__ = ["ResultStore"]
