"""Several datasets in one run, with repeats and caption options: ``[[data.datasets]]``.

Each entry names a metadata CSV and how its clips are trained::

    [[data.datasets]]
    csv = "data/my_dog.csv"
    repeats = 4                 # each clip 4 times per epoch (each copy draws its own bucket and window)
    trigger = "sks dog"         # put before every caption: "sks dog, <caption>"
    caption_dropout = 0.1       # share of clips trained on the empty caption
    shuffle_captions = true     # shuffle the comma-separated parts of the caption ...
    keep_tokens = 1             # ... after the first one
    score_dropout = 0.2         # drop each score phrase ("aesthetic score: 6.5.") with this probability

``data.csv`` is one more dataset without options. Caption variants are drawn per clip and epoch variant
(``data.epoch_variants`` decides how many are cached) from the run seed. ``caption_dropout`` trains on the
empty caption as encoded by T5; the model's own caption dropout to its learned null caption (what
classifier-free guidance uses) is ``model.config.class_dropout_prob`` (official 0.1).
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass

from opensora_core.text.prompts import SCORE_PHRASES

from .config import ConfigError, DataConfig
from .data import MetadataEntry, read_metadata
from .rng import mix_seed

_PHRASES = "|".join(re.escape(phrase) for phrase in SCORE_PHRASES)  # "aesthetic score:", ...
_SCORES = re.compile(rf"( (?:{_PHRASES}) [^.]*(?:\.\d+)?\.)+$")  # the score phrases ending a caption


@dataclass(frozen=True)
class CaptionOptions:
    trigger: str = ""
    caption_dropout: float = 0.0
    shuffle_captions: bool = False
    keep_tokens: int = 1
    score_dropout: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.trigger or self.caption_dropout or self.shuffle_captions or self.score_dropout)

    def variant(self, text: str, row: int, seed: int, epoch: int) -> str:
        """The caption of row ``row`` in ``epoch`` (variant), drawn from the run seed (``train.data`` calls
        this on ``MetadataEntry.captions`` without importing this module)."""
        rng = random.Random(mix_seed(seed, "caption", epoch, row))
        if self.caption_dropout and rng.random() < self.caption_dropout:
            return ""
        found = _SCORES.search(text)
        text, scores = (text[: found.start()], found.group(0)) if found else (text, "")
        phrases = re.findall(r" [^.:]+: [^.]*(?:\.\d+)?\.", scores)
        if self.score_dropout:
            phrases = [p for p in phrases if rng.random() >= self.score_dropout]
        if self.shuffle_captions:
            parts = [p.strip() for p in text.split(",")]
            head, tail = parts[: self.keep_tokens], parts[self.keep_tokens:]
            rng.shuffle(tail)
            text = ", ".join(p for p in head + tail if p)
        if self.trigger:
            text = f"{self.trigger}, {text}" if text else self.trigger
        return text + "".join(phrases)


@dataclass(frozen=True)
class DatasetSpec:
    csv: str
    repeats: int = 1
    captions: CaptionOptions = CaptionOptions()


def dataset_specs(data: DataConfig) -> list[DatasetSpec]:
    """``data.csv`` (if set) and every ``[[data.datasets]]`` entry, checked; errors name the key."""
    specs = [DatasetSpec(data.csv)] if data.csv else []
    for i, raw in enumerate(data.datasets):
        specs.append(_spec(raw, f"data.datasets[{i}]"))
    if not specs:
        raise ConfigError("data.csv", "not set; run `opensora-train prepare <folder> --output meta.csv` first, or "
                                      "list [[data.datasets]]")
    return specs


def _spec(raw, key: str) -> DatasetSpec:
    if not isinstance(raw, dict):
        raise ConfigError(key, "expected a table {csv = ..., repeats = ..., ...}")
    names = {f.name for f in dataclasses.fields(CaptionOptions)} | {"csv", "repeats"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key; known: {', '.join(sorted(names))}")
    if not isinstance(raw.get("csv"), str) or not raw["csv"]:
        raise ConfigError(f"{key}.csv", "the metadata CSV of this dataset (from `opensora-train prepare`)")
    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"{key}.repeats", f"must be an integer >= 1, got {repeats!r}")
    options = {k: v for k, v in raw.items() if k not in ("csv", "repeats")}
    for name in ("caption_dropout", "score_dropout"):
        value = options.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"{key}.{name}", f"must be a probability in [0, 1], got {value!r}")
    if not isinstance(options.get("trigger", ""), str) or not isinstance(options.get("shuffle_captions", False), bool):
        raise ConfigError(key, "trigger is a string and shuffle_captions true/false")
    keep = options.get("keep_tokens", 1)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ConfigError(f"{key}.keep_tokens", f"must be an integer >= 0, got {keep!r}")
    return DatasetSpec(raw["csv"], repeats, CaptionOptions(**options))


def read_datasets(data: DataConfig) -> list[MetadataEntry]:
    """Every dataset's rows (repeated ``repeats`` times), numbered in one sequence, with their caption options."""
    entries: list[MetadataEntry] = []
    for spec in dataset_specs(data):
        rows = read_metadata(spec.csv)
        for _ in range(spec.repeats):
            for row in rows:
                captions = spec.captions if spec.captions.active else None
                entries.append(dataclasses.replace(row, row=len(entries), captions=captions))
    return entries


def caption_variant(entry: MetadataEntry, seed: int, epoch: int) -> str:
    """The caption a clip is trained with in ``epoch`` (variant), from its dataset's caption options."""
    return entry.text if entry.captions is None else entry.captions.variant(entry.text, entry.row, seed, epoch)


__all__ = ["CaptionOptions", "DatasetSpec", "caption_variant", "dataset_specs", "read_datasets"]
