"""``opensora-train prepare``: a folder of clips with captions, or a ``path,text`` CSV -> metadata CSV.

The output is the official dataset CSV (tools/datasets/README.md):
``path,text,num_frames,height,width,aspect_ratio,fps`` with aspect_ratio = height / width. Every
file is probed with PyAV (:func:`opensora_core.media.probe`). Files that cannot be used are reported
by name and skipped, never aborting the run:

* ``unreadable``  - PyAV cannot open or decode it (corrupt, not a video/image);
* ``no caption``  - no same-name ``.txt`` beside it (folder input) or an empty ``text`` (CSV input);
* ``too short``   - an empty file, a video without frames, or fewer frames than ``min_frames``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from opensora_core import media
from opensora_core.atomic import atomic_path

log = logging.getLogger("opensora")

METADATA_COLUMNS = ("path", "text", "num_frames", "height", "width", "aspect_ratio", "fps")
MEDIA_SUFFIXES = media.VIDEO_SUFFIXES + media.IMAGE_SUFFIXES
SKIP_KINDS = ("unreadable", "no caption", "too short")


@dataclass(frozen=True)
class MetadataRow:
    path: str
    text: str
    num_frames: int
    height: int
    width: int
    fps: float

    @property
    def aspect_ratio(self) -> float:
        return self.height / self.width

    def as_csv(self) -> dict:
        return {"path": self.path, "text": self.text, "num_frames": self.num_frames, "height": self.height,
                "width": self.width, "aspect_ratio": f"{self.aspect_ratio:.6f}", "fps": f"{self.fps:g}"}


@dataclass(frozen=True)
class Skipped:
    path: str
    kind: str  # one of SKIP_KINDS
    reason: str


@dataclass
class PrepareReport:
    rows: list[MetadataRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    output: Path | None = None

    def summary(self) -> str:
        """A table of kept / skipped files per reason, then every skipped file by name."""
        total = len(self.rows) + len(self.skipped)
        counts = Counter(s.kind for s in self.skipped)
        lines = [f"{'files':<12} {total:>6}", f"{'kept':<12} {len(self.rows):>6}"]
        lines += [f"{kind:<12} {counts.get(kind, 0):>6}" for kind in SKIP_KINDS]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {s.kind:<11} {s.path}: {s.reason}" for s in self.skipped]
        if self.output is not None:
            lines.append(f"wrote {self.output} ({len(self.rows)} rows)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def find_media(folder: Path) -> list[Path]:
    """Video and image files under ``folder`` (recursive, sorted)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


def folder_items(folder: Path) -> list[tuple[Path, str | None]]:
    """(file, caption or None) for every media file; the caption is the same-name ``.txt``."""
    return [(path, _read_caption(path.with_suffix(".txt"))) for path in find_media(folder)]


def _read_caption(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None if path.is_file() else None
    except OSError as err:
        log.warning("cannot read caption %s: %s", path, err)
        return None


def csv_items(source: Path) -> list[tuple[Path, str | None]]:
    """(file, caption) from a CSV with ``path`` and ``text`` columns; relative paths are relative to the CSV."""
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{source}: the CSV needs columns path and text (missing: {', '.join(sorted(missing))})")
        rows = list(reader)
    return [(resolve_path(row["path"], source.parent), (row["text"] or "").strip() or None) for row in rows]


def resolve_path(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------


def probe_item(path: Path, text: str | None, min_frames: int) -> MetadataRow | Skipped:
    """Probe one file; any failure becomes a :class:`Skipped` entry naming the file."""
    name = str(path)
    if text is None:
        return Skipped(name, "no caption", f"no caption (expected {path.with_suffix('.txt').name} or a text value)")
    try:
        if not path.is_file():
            return Skipped(name, "unreadable", "file not found")
        if path.stat().st_size == 0:
            return Skipped(name, "too short", "empty file (0 bytes)")
        info = media.probe(path)
    except media.MediaError as err:
        if "no decodable frames" in str(err):
            return Skipped(name, "too short", "zero-length: no decodable frames")
        return Skipped(name, "unreadable", str(err).removeprefix(f"{path}: "))
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
        return Skipped(name, "unreadable", f"{type(err).__name__}: {err}")
    if not media.is_image_path(path) and info.num_frames < min_frames:
        return Skipped(name, "too short", f"{info.num_frames} frame(s), fewer than the minimum {min_frames}")
    return MetadataRow(name, text, info.num_frames, info.height, info.width, info.fps)


def probe_items(items: Iterable[tuple[Path, str | None]], min_frames: int, workers: int) -> list[MetadataRow | Skipped]:
    items = list(items)
    if workers <= 1:
        return [probe_item(p, t, min_frames) for p, t in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PyAV decodes outside the GIL
        return list(pool.map(lambda item: probe_item(item[0], item[1], min_frames), items))


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def write_metadata(rows: Iterable[MetadataRow], output: Path, *, relative_to: Path | None = None) -> Path:
    """Write the metadata CSV atomically; paths relative to ``relative_to`` when given."""
    with atomic_path(output) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
            writer.writeheader()
            for row in rows:
                values = row.as_csv()
                if relative_to is not None:
                    values["path"] = os.path.relpath(Path(row.path).resolve(), relative_to.resolve())
                writer.writerow(values)
    return output


def prepare_dataset(source: str | os.PathLike, output: str | os.PathLike, *, min_frames: int = 1, workers: int = 4,
                    relative: bool = False) -> PrepareReport:
    """Build the metadata CSV from a folder (same-name .txt captions) or a ``path,text`` CSV."""
    source, output = Path(source), Path(output)
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    if source.is_dir():
        items = folder_items(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = csv_items(source)
    else:
        raise ValueError(f"{source}: expected a folder of videos/images with .txt captions or a CSV with path,text")
    items = [(path.resolve(), text) for path, text in items]  # the CSV holds absolute (or CSV-relative) paths
    report = PrepareReport()
    for result in probe_items(items, min_frames, workers):
        (report.rows if isinstance(result, MetadataRow) else report.skipped).append(result)
    for skipped in report.skipped:
        log.warning("skipping %s (%s): %s", skipped.path, skipped.kind, skipped.reason)
    if not report.rows:
        raise ValueError(f"{source}: no usable file (of {len(items)}); nothing written\n{report.summary()}")
    report.output = write_metadata(report.rows, output, relative_to=output.parent if relative else None)
    return report


__all__ = ["METADATA_COLUMNS", "MetadataRow", "PrepareReport", "Skipped", "csv_items", "folder_items",
           "prepare_dataset", "probe_item", "resolve_path", "write_metadata"]
