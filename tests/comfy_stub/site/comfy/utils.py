"""Test stand-in for ``comfy.utils``: a ProgressBar that records its updates."""

from __future__ import annotations

UPDATES: list[tuple[int, int, object]] = []  # (value, total, preview) of every update_absolute call


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append((self.current, self.total, preview))

    def update(self, value):
        self.update_absolute(self.current + value)
