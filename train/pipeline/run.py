"""The pipeline run: sources -> scene cut -> scores -> filters -> captions -> match -> CSV + report.

:class:`PipelineOptions` says which stages run (all optional); :func:`run_pipeline` runs them and returns a
:class:`PipelineReport` whose :meth:`~PipelineReport.summary` is printed at the end. Files are processed in
parallel (``workers`` threads: decoding, OpenCV and ONNX work outside the GIL) with a progress bar per stage;
finished work (scene lists, clip files, scores, captions, thumbnails) is kept under ``work_dir`` and reused,
so an interrupted run over a large folder continues where it stopped.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opensora_core import media
from opensora_core.atomic import atomic_path

from ..prepare import METADATA_COLUMNS, MetadataRow, Skipped, csv_items, folder_items, probe_item
from .captions import CAPTION_PROMPT, PHRASE_COLUMNS, CaptionStage, captioned
from .clips import ClipSpec, fingerprint
from .filters import Filter, apply_filters, parse_filter
from .frames import Stage, read_clip_frames
from .report import ThumbnailStage, write_report
from .scenes import SceneOptions, clip_ranges, cut_clips, detect_scenes
from .state import ResultStore

log = logging.getLogger("opensora")

SCORE_STAGES = ("motion", "text", "quality", "aesthetic", "match")
SCORE_COLUMNS = ("aes", "flow", "cmotion", "ocr", "text_area", "sharpness", "brightness", "clipped", "match")
STAGE_COLUMNS = {"motion": ("flow", "cmotion"), "text": ("ocr", "text_area"),
                 "quality": ("sharpness", "brightness", "clipped"), "aesthetic": ("aes",), "match": ("match",)}
ROW_COLUMNS = ("num_frames", "height", "width", "fps", "aspect_ratio")  # metadata columns filters may use
LATE_COLUMNS = ("match",)  # known only after the captions: their filters run after the caption stage


@dataclass
class PipelineOptions:
    source: Path
    output: Path
    min_frames: int = 1
    workers: int = 4
    relative: bool = False
    work_dir: Path | None = None  # default: <output stem>_work beside the CSV
    progress: bool = True
    # scene cut
    scene_cut: bool = False
    scenes: SceneOptions = field(default_factory=SceneOptions)
    clips_dir: Path | None = None  # clip files (default <output stem>_clips); unused with scene_rows
    scene_rows: bool = False  # (start, end) rows of the long videos instead of clip files
    # scores
    scores: tuple[str, ...] = ()  # names from SCORE_STAGES, or ("all",)
    clip_model: Path | None = None  # a local CLIP folder (aesthetic, match)
    aesthetic_model: Path | None = None  # the LAION aesthetic head file
    device: str = ""  # CLIP / captioner device; "" = cuda if available, else cpu
    # filters and captions
    filters: tuple[str, ...] = ()
    captioner: str = ""  # a VLM folder or module:function
    recaption: bool = False  # caption every clip, not only those without a caption
    caption_prompt: str = CAPTION_PROMPT
    caption_scores: tuple[str, ...] = ()  # from PHRASE_COLUMNS: aesthetic, motion, camera
    # report
    report: Path | None = None  # default <output stem>_report.html; see no_report
    no_report: bool = False

    def __post_init__(self) -> None:
        self.source, self.output = Path(self.source).absolute(), Path(self.output).absolute()
        stem = self.output.parent / self.output.stem
        self.work_dir = Path(self.work_dir).absolute() if self.work_dir else Path(f"{stem}_work")
        self.clips_dir = Path(self.clips_dir).absolute() if self.clips_dir else Path(f"{stem}_clips")
        self.report = None if self.no_report else Path(self.report).absolute() if self.report else \
            Path(f"{stem}_report.html")
        if self.min_frames < 1:
            raise ValueError(f"--min-frames must be >= 1, got {self.min_frames}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        unknown = [s for s in self.scores if s not in (*SCORE_STAGES, "all")]
        if unknown:
            raise ValueError(f"--scores: unknown {', '.join(unknown)}; choose from {', '.join(SCORE_STAGES)} or all")
        unknown = [p for p in self.caption_scores if p not in PHRASE_COLUMNS]
        if unknown:
            raise ValueError(f"--caption-scores: unknown {', '.join(unknown)}; choose from {', '.join(PHRASE_COLUMNS)}")

    @property
    def thumbs_dir(self) -> Path:
        return self.report.parent / f"{self.report.stem}_thumbs"


@dataclass
class ClipRecord:
    """One clip through the pipeline: its stage values, and why it was removed ("" = kept)."""

    clip: ClipSpec
    values: dict[str, Any] = field(default_factory=dict)
    removed: str = ""
    caption: str = ""  # the final caption (score phrases included) of a kept clip

    @property
    def text(self) -> str:
        return self.values.get("text") or self.clip.caption


@dataclass
class PipelineReport:
    sources: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    scene_lines: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    stages_skipped: dict[str, str] = field(default_factory=dict)  # stage -> why
    passes: dict[str, list[str]] = field(default_factory=dict)  # decode pass ("scores", ...) -> its stages
    clips_done: Counter = field(default_factory=Counter)  # pass -> clips it ran on
    reused: Counter = field(default_factory=Counter)  # pass -> clips whose results came from the work folder
    removed: dict[str, int] = field(default_factory=dict)  # filter / step -> clips removed
    records: list[ClipRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    output: Path | None = None
    report: Path | None = None

    @property
    def kept(self) -> list[ClipRecord]:
        return [r for r in self.records if not r.removed]

    def summary(self) -> str:
        lines = [f"{'sources':<12} {self.sources} file(s); {len(self.skipped)} skipped"
                 + (f" ({', '.join(f'{k} {n}' for k, n in Counter(s.kind for s in self.skipped).items())})"
                    if self.skipped else "")]
        lines += [f"  skipped    {s.path}: {s.kind}: {s.reason}" for s in self.skipped]
        lines += self.scene_lines
        for name, stages in self.passes.items():
            reused = f", {self.reused[name]} from the work folder" if self.reused[name] else ""
            lines.append(f"{name:<12} {', '.join(stages)}: {self.clips_done[name]} clip(s) in "
                         f"{self.seconds.get(name, 0.0):.1f} s{reused}")
        lines += [f"{'skipped':<12} {stage}: {why}" for stage, why in self.stages_skipped.items()]
        lines += [f"{'removed':<12} {count:>5}  {name}" for name, count in self.removed.items()]
        lines.append(f"{'kept':<12} {len(self.kept)} of {len(self.records)} clips")
        if self.output is not None:
            lines.append(f"wrote {self.output} ({len(self.kept)} rows)")
        if self.report is not None:
            lines.append(f"report {self.report}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def run_pipeline(options: PipelineOptions) -> PipelineReport:
    report = PipelineReport()
    store = ResultStore(options.work_dir / "results.jsonl")
    early, late = build_stages(options, report)
    filters = build_filters(options, report)
    rows = timed(report, "probe", lambda: probe_sources(options, report))
    clips = timed(report, "scene cut", lambda: make_clips(rows, options, store, report)) if options.scene_cut \
        else [whole_clip(row) for row in rows]
    report.records = [ClipRecord(clip) for clip in clips]
    drop_short(report, options.min_frames)
    thumbnails = [ThumbnailStage(options.thumbs_dir)] if options.report else []
    run_stages(report, report.kept, early + thumbnails, store, options, "scores")
    remove(report, [f for f in filters if f.column not in LATE_COLUMNS])
    caption_stage(report, options, store)
    if late:
        run_stages(report, report.kept, late, store, options, "match")
        remove(report, [f for f in filters if f.column in LATE_COLUMNS])
    for record in report.kept:
        record.caption = captioned(record.text, record.values, options.caption_scores)
    columns = [c for c in SCORE_COLUMNS if any(c in STAGE_COLUMNS[s] for s in report.stages if s in STAGE_COLUMNS)]
    if options.report:  # first: when every clip was filtered out, the page shows why
        report.report = write_report(options.report, f"Open-Sora data: {options.output.name}", report.summary(),
                                     report_rows(report), columns)
    report.output = write_metadata(report, options, columns)
    return report


def timed(report: PipelineReport, name: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return action()
    finally:
        report.seconds[name] = report.seconds.get(name, 0.0) + time.perf_counter() - started


def build_stages(options: PipelineOptions, report: PipelineReport) -> tuple[list[Stage], list[Stage]]:
    """The score stages before the captions and after them (match); checks their libraries and files now."""
    wanted = SCORE_STAGES if "all" in options.scores else options.scores
    explicit = "all" not in options.scores
    if options.scene_cut:
        from .deps import require

        require("scenedetect", "scene cut")  # now, not after probing a large folder
    early: list[Stage] = []
    if "motion" in wanted:
        from .motion import MotionStage

        early.append(MotionStage())
    if "text" in wanted:
        from .text import TextStage

        early.append(TextStage())
    if "quality" in wanted:
        from .quality import QualityStage

        early.append(QualityStage())
    late: list[Stage] = []
    clip_stages = [s for s in ("aesthetic", "match") if s in wanted]
    if clip_stages:
        clip = clip_model(options, clip_stages, explicit, report)
        if clip is not None and "aesthetic" in clip_stages:
            from .clip_models import AestheticStage

            if options.aesthetic_model is None:
                missing(report, "aesthetic", explicit, "needs --aesthetic-model (the LAION aesthetic head file)")
            else:
                early.append(AestheticStage(clip, options.aesthetic_model))
        if clip is not None and "match" in clip_stages:
            from .clip_models import MatchStage

            late.append(MatchStage(clip))
    report.stages = [s.name for s in early + late]
    return early, late


def clip_model(options: PipelineOptions, stages: list[str], explicit: bool, report: PipelineReport):
    if options.clip_model is None:
        for stage in stages:
            extra = " and --aesthetic-model (the LAION head file)" if stage == "aesthetic" else ""
            missing(report, stage, explicit, f"needs --clip-model (a local CLIP folder){extra}")
        return None
    from .clip_models import ClipModel

    return ClipModel(options.clip_model, device_of(options))


def missing(report: PipelineReport, stage: str, explicit: bool, why: str) -> None:
    """A model-file stage without its files: an error when asked for by name, else reported as skipped."""
    if explicit:
        raise ValueError(f"--scores {stage}: {why}; model files are never downloaded")
    report.stages_skipped[stage] = f"{why}; model files are never downloaded"


def device_of(options: PipelineOptions) -> str:
    if options.device:
        return options.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_filters(options: PipelineOptions, report: PipelineReport) -> list[Filter]:
    columns = set(ROW_COLUMNS) | {c for s in report.stages for c in STAGE_COLUMNS.get(s, ())}
    filters = [parse_filter(text, columns) for text in options.filters]
    for phrase in options.caption_scores:
        if PHRASE_COLUMNS[phrase] not in columns:
            stage = next(s for s, cols in STAGE_COLUMNS.items() if PHRASE_COLUMNS[phrase] in cols)
            raise ValueError(f"--caption-scores {phrase}: needs the {stage} stage in --scores")
    return filters


# ---------------------------------------------------------------------------
# Sources and scene cut
# ---------------------------------------------------------------------------


def probe_sources(options: PipelineOptions, report: PipelineReport) -> list[MetadataRow]:
    """Every usable source file (PyAV probe); a missing caption is allowed here (captions come later)."""
    source = options.source
    if source.is_dir():
        items = folder_items(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        items = csv_items(source)
    else:
        raise ValueError(f"{source}: expected a folder of videos/images or a CSV with path,text")
    report.sources = len(items)
    min_frames = 1 if options.scene_cut else options.min_frames  # with scene cuts, the clips are measured
    results = parallel(options, "probing", [(p.resolve(), t or "") for p, t in items],
                       lambda item: probe_item(item[0], item[1], min_frames))
    rows = [r for r in results if isinstance(r, MetadataRow)]
    report.skipped = [r for r in results if isinstance(r, Skipped)]
    for skipped in report.skipped:
        log.warning("skipping %s (%s): %s", skipped.path, skipped.kind, skipped.reason)
    if not rows:
        raise ValueError(f"{source}: no usable file (of {len(items)}); nothing written")
    return rows


def whole_clip(row: MetadataRow) -> ClipSpec:
    path = Path(row.path)
    frames = 1 if media.is_image_path(path) else row.num_frames
    return ClipSpec(path.stem, path, 0, frames, row.fps, row.height, row.width, row.text, path)


def make_clips(rows: list[MetadataRow], options: PipelineOptions, store: ResultStore,
               report: PipelineReport) -> list[ClipSpec]:
    """Scene-cut every video (images pass through); clip files or (start, end) ranges of the videos."""
    results = parallel(options, "scene cut", rows, lambda row: cut_or_skip(row, options, store, report))
    videos = [cut for cut in results if cut.scenes is not None]
    where = "as rows of the videos" if options.scene_rows else f"written to {options.clips_dir}"
    report.scene_lines.append(
        f"{'scene cut':<12} {len(videos)} video(s): {sum(c.scenes for c in videos)} scene(s), "
        f"{sum(c.too_short for c in videos)} shorter than {options.scenes.min_seconds:g} s dropped -> "
        f"{sum(len(c.clips) for c in videos)} clip(s) {where}")
    return [clip for cut in results for clip in cut.clips]


@dataclass
class SourceCut:
    clips: list[ClipSpec]
    scenes: int | None = None  # None: an image (not cut)
    too_short: int = 0


def cut_or_skip(row: MetadataRow, options: PipelineOptions, store: ResultStore, report: PipelineReport) -> SourceCut:
    """:func:`cut_source`, with a video that fails reported as skipped instead of stopping the run."""
    try:
        return cut_source(row, options, store)
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
        log.warning("skipping %s (scene cut failed): %s: %s", row.path, type(err).__name__, err)
        report.skipped.append(Skipped(row.path, "unreadable", f"scene cut failed: {type(err).__name__}: {err}"))
        return SourceCut([], scenes=None)


def cut_source(row: MetadataRow, options: PipelineOptions, store: ResultStore) -> SourceCut:
    """The clips of one source file (its scenes are reused from the work folder when known)."""
    path = Path(row.path)
    if media.is_image_path(path):
        return SourceCut([whole_clip(row)])
    kind = f"scenes {options.scenes.detection_id()}"
    scenes = store.get(kind, fingerprint(path))
    if scenes is None:
        scenes = detect_scenes(path, options.scenes)
        store.put(kind, fingerprint(path), scenes)
    ranges, too_short = clip_ranges([tuple(s) for s in scenes], row.fps, options.scenes)
    base = clip_base(path, options.source)
    if options.scene_rows:
        clips = [ClipSpec(f"{base}{r.suffix()}", path, r.start, min(r.stop, row.num_frames), row.fps, row.height,
                          row.width, row.text, path) for r in ranges]
        return SourceCut(clips, len(scenes), too_short)
    files = cut_clips(path, ranges, options.clips_dir / Path(base).parent, row.fps)
    clips = []
    for r in ranges:
        info = media.probe(files[r])
        clips.append(ClipSpec(f"{base}{r.suffix()}", files[r], 0, info.num_frames, info.fps or row.fps, info.height,
                              info.width, row.text, path))
    return SourceCut(clips, len(scenes), too_short)


def clip_base(path: Path, source: Path) -> str:
    """The clip name stem: the path under the source folder without suffix (``trip/day1``), else the stem."""
    root = source if source.is_dir() else source.parent
    try:
        return path.resolve().relative_to(root.resolve()).with_suffix("").as_posix()
    except ValueError:
        return path.stem


def drop_short(report: PipelineReport, min_frames: int) -> None:
    count = 0
    for record in report.kept:
        if not record.clip.is_image and record.clip.num_frames < min_frames:
            record.removed = f"too short: {record.clip.num_frames} frame(s), fewer than --min-frames {min_frames}"
            count += 1
    if count:
        report.removed[f"too short (< {min_frames} frames)"] = count


# ---------------------------------------------------------------------------
# Per-clip stages
# ---------------------------------------------------------------------------


def run_stages(report: PipelineReport, records: list[ClipRecord], stages: list[Stage], store: ResultStore,
               options: PipelineOptions, label: str) -> None:
    """Run ``stages`` on ``records``: results from the work folder where present, else one decode per file."""
    if not stages:
        return
    report.passes[label] = [s.name for s in stages if s.name != "thumbnail"] or [s.name for s in stages]
    pending: dict[str, list[Stage]] = {}
    for record in records:
        todo = [s for s in stages if not reuse(record, s, store)]
        if todo:
            pending[record.clip.name] = todo
        else:
            report.reused[label] += 1
    report.clips_done[label] += len(records)
    by_file: dict[Path, list[ClipRecord]] = {}
    for record in records:
        if record.clip.name in pending:
            by_file.setdefault(record.clip.path, []).append(record)

    def one_file(item: tuple[Path, list[ClipRecord]]) -> None:
        path, found = item
        by_name = {r.clip.name: r for r in found}
        wanted = lambda clip: sorted({i for s in pending[clip.name] for i in s.frames(clip)})  # noqa: E731
        on_clip = lambda clip, frames: apply_stages(by_name[clip.name], pending[clip.name], frames, store)  # noqa: E731
        try:
            failed = read_clip_frames(path, [r.clip for r in found], wanted, on_clip)
        except media.MediaError as err:
            failed = [(r.clip, str(err)) for r in found]
        for clip, why in failed:
            by_name[clip.name].removed = f"unreadable: {why}"

    timed(report, label, lambda: parallel(options, label, list(by_file.items()), one_file))
    unreadable = sum(1 for r in records if r.removed.startswith("unreadable"))
    if unreadable:
        report.removed[f"unreadable ({label})"] = report.removed.get(f"unreadable ({label})", 0) + unreadable


def reuse(record: ClipRecord, stage: Stage, store: ResultStore) -> bool:
    found = store.get(stage.cache_id(), stage.cache_key(record.clip, record.values))
    if found is None:
        return False
    record.values.update(found)
    return True


def apply_stages(record: ClipRecord, stages: list[Stage], frames: dict, store: ResultStore) -> None:
    for stage in stages:
        key = stage.cache_key(record.clip, record.values)
        try:
            values = stage.run(record.clip, {i: frames[i] for i in stage.frames(record.clip)}, record.values)
        except Exception as err:  # noqa: BLE001 - one bad clip must never stop the run
            log.warning("%s: the %s stage failed: %s: %s", record.clip.name, stage.name, type(err).__name__, err)
            record.removed = f"unreadable: the {stage.name} stage failed ({type(err).__name__}: {err})"
            return
        record.values.update(values)
        store.put(stage.cache_id(), key, values)


def caption_stage(report: PipelineReport, options: PipelineOptions, store: ResultStore) -> None:
    """Caption the kept clips that need it (all with ``recaption``); then clips without a caption are removed."""
    if options.captioner:
        stage = CaptionStage(options.captioner, prompt=options.caption_prompt, device=device_of(options))
        todo = [r for r in report.kept if options.recaption or not r.clip.caption]
        run_stages(report, todo, [stage], store, options, "captions")
    count = 0
    for record in report.kept:
        if not record.text:
            record.removed = "no caption (no .txt / CSV text" + (", the captioner gave none)" if options.captioner
                                                                 else "; use --captioner)")
            count += 1
    if count:
        report.removed["no caption"] = count


def remove(report: PipelineReport, filters: list[Filter]) -> None:
    if not filters:
        return
    records = report.kept
    rows = [{**row_values(r.clip), **r.values} for r in records]
    _, removed, reasons = apply_filters(rows, filters)
    for i, why in reasons.items():
        records[i].removed = why
    report.removed.update(removed)


def row_values(clip: ClipSpec) -> dict[str, float]:
    return {"num_frames": clip.num_frames, "height": clip.height, "width": clip.width, "fps": clip.fps,
            "aspect_ratio": clip.height / clip.width}


def parallel(options: PipelineOptions, label: str, items: list, work: Callable[[Any], Any]) -> list:
    """``work`` on every item in ``options.workers`` threads, in order, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(items), desc=label, disable=not options.progress or not items, dynamic_ncols=True) as bar:
        def step(item):
            try:
                return work(item)
            finally:
                bar.update(1)

        if options.workers <= 1:
            return [step(item) for item in items]
        with ThreadPoolExecutor(max_workers=options.workers) as pool:
            return list(pool.map(step, items))


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def write_metadata(report: PipelineReport, options: PipelineOptions, columns: list[str]) -> Path:
    """The metadata CSV: official columns, then (start_frame, end_frame) and source for cut clips, then scores."""
    kept = report.kept
    if not kept:
        shown = f"; see the report {report.report}" if report.report else ""
        raise ValueError(f"no clip is left after the filters (of {len(report.records)}); nothing written{shown}\n"
                         f"{report.summary()}")
    extra = (["start_frame", "end_frame"] if options.scene_rows else []) + (["source"] if options.scene_cut else [])
    fields = list(METADATA_COLUMNS) + extra + columns
    with atomic_path(options.output) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for record in kept:
                writer.writerow(metadata_row(record, options, columns))
    return options.output


def metadata_row(record: ClipRecord, options: PipelineOptions, columns: Iterable[str]) -> dict[str, Any]:
    clip = record.clip
    row = MetadataRow(str(clip.path), record.caption, clip.num_frames, clip.height, clip.width, clip.fps).as_csv()
    if options.relative:
        row["path"] = os.path.relpath(clip.path.resolve(), options.output.parent.resolve())
    if options.scene_rows:
        row.update(start_frame=clip.start, end_frame=clip.stop)
    if options.scene_cut:
        row["source"] = str(clip.source)
    for column in columns:
        value = record.values.get(column)
        row[column] = "" if value is None else value
    return row


def report_rows(report: PipelineReport) -> list[dict[str, Any]]:
    rows = []
    for record in report.records:
        clip = record.clip
        span = "image" if clip.is_image else f"frames {clip.start}-{clip.stop - 1} of {clip.path.name}" \
            if clip.path == clip.source and clip.start else f"{clip.num_frames} frames"
        rows.append({"name": clip.name, "path": str(clip.path), "frames": f"{span}, {clip.width}x{clip.height}, "
                     f"{clip.fps:g} fps", "thumbnail": record.values.get("thumbnail"), "values": record.values,
                     "caption": record.caption or record.text, "removed": record.removed})
    return rows


__all__ = ["PipelineOptions", "PipelineReport", "SCORE_COLUMNS", "SCORE_STAGES", "run_pipeline"]
