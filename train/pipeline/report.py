"""The report a person looks at: one HTML page with a thumbnail strip per clip, its scores, and whether and
why it was kept.

Thumbnails are PNG strips of four frames spread over the clip (:class:`ThumbnailStage`, written with PyAV
beside the page); the page links them by relative paths, so the folder can be moved or opened from another
machine. Nothing but the page and its thumbnail folder is written.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opensora_core import media

from .clips import ClipSpec, evenly_spaced
from .frames import Frames

THUMB_FRAMES = 4
THUMB_HEIGHT = 72
GAP = 2  # dark pixels between the frames of a strip


class ThumbnailStage:
    name = "thumbnail"
    columns = ()

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def cache_id(self) -> str:
        return json.dumps({"stage": self.name, "folder": str(self.folder.resolve()), "frames": THUMB_FRAMES,
                           "height": THUMB_HEIGHT})

    def cache_key(self, clip: ClipSpec, values: dict[str, Any]) -> str:
        return clip.key()

    def frames(self, clip: ClipSpec) -> list[int]:
        return [0] if clip.is_image else evenly_spaced(THUMB_FRAMES, clip.num_frames)

    def run(self, clip: ClipSpec, frames: Frames, values: dict[str, Any]) -> dict[str, Any]:
        path = self.folder / f"{clip.name.replace('/', '__')}.png"
        media.write_video(torch.from_numpy(strip([frames[i] for i in sorted(frames)]))[None], path, fps=1)
        return {"thumbnail": str(path)}


def strip(frames: list[np.ndarray], height: int = THUMB_HEIGHT) -> np.ndarray:
    """Frames resized to ``height`` (keeping their shape) side by side, even-sized, as (H, W, 3) uint8."""
    h, w = frames[0].shape[:2]
    width = max(2, round(w * height / h) // 2 * 2)
    fitted = media.resize_cover_crop(torch.from_numpy(np.stack(frames)), height, width, mode="bilinear")  # 0..1
    tiles = media.to_uint8(fitted).numpy()
    gap = np.full((height, GAP, 3), 24, np.uint8)
    parts = [part for tile in tiles for part in (tile, gap)][:-1]
    return np.concatenate(parts, axis=1)


# ---------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { position: sticky; top: 0; background: #fff; }
tr.removed { background: #fff0f0; }
tr.removed img { opacity: 0.6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-kept { color: #176f2c; font-weight: 600; }
.status-removed { color: #a31515; font-weight: 600; }
.small { color: #666; font-size: 0.85em; }
"""


def write_report(path: Path, title: str, summary: str, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write the page; each row: name, source, frames, thumbnail, values (by column), caption, removed."""
    kept = sum(1 for r in rows if not r["removed"])
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{kept} of {len(rows)} clips kept. Removed clips are shaded, with the reason.</p>",
        f"<pre>{html.escape(summary)}</pre>",
        "<table><thead><tr><th>clip</th><th>status</th>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>caption</th></tr></thead><tbody>",
    ]
    body += [_row(r, columns, path.parent) for r in rows]
    body.append("</tbody></table>")
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _row(row: dict[str, Any], columns: list[str], base: Path) -> str:
    thumb = ""
    if row.get("thumbnail"):
        thumb = f'<img src="{html.escape(_relative(row["thumbnail"], base))}" alt="" height="{THUMB_HEIGHT}"><br>'
    link = html.escape(_relative(row["path"], base))
    clip = (f'{thumb}<a href="{link}">{html.escape(row["name"])}</a><br>'
            f'<span class="small">{html.escape(row["frames"])}</span>')
    status = (f'<span class="status-removed">removed</span><br><span class="small">{html.escape(row["removed"])}'
              "</span>" if row["removed"] else '<span class="status-kept">kept</span>')
    cells = "".join(f'<td class="num">{html.escape(_show(row["values"].get(c)))}</td>' for c in columns)
    css = "removed" if row["removed"] else "kept"
    return (f'<tr class="{css}"><td>{clip}</td><td>{status}</td>{cells}'
            f"<td>{html.escape(row['caption'] or '')}</td></tr>")


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _relative(path: str | Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


__all__ = ["ThumbnailStage", "strip", "write_report"]
