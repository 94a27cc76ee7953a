"""Atomic file writes: write to a hidden temporary file beside the target, then rename it into place.

A crash or an error never leaves a half-written checkpoint, video or CSV under the final
name. The temporary file keeps the target's suffix (PyAV picks the container from it) and
is created with the process's normal permissions (not ``mkstemp``'s private 0600).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
