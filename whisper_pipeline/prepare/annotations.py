"""Label Studio's full JSON export -> tasks of time-stamped regions (what is said, and when).

Only the full "JSON" export keeps a region's label and its per-region transcription paired by region id;
the other formats (JSON_MIN, CSV/TSV, ASR_MANIFEST) are recognised and refused. Problems with one task or
one region are counted skips with a reason, never a crash and never a silent loss.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from whisper_pipeline.errors import AnnotationError

EXPORT_AGAIN = 'export the project from Label Studio as "JSON" (the full export) instead'


class RegionKind(StrEnum):
    """What a region contributes to a training window."""

    SPEECH = "speech"  # transcribed speech: audio and text
    EXCLUDED = "excluded"  # a label in --exclude-labels (noise): audio kept inside a window, no text
    UNTRANSCRIBED = "untranscribed"  # speech without text: never inside a window


@dataclass(frozen=True)
class AnnotationSettings:
    """How the labelling configuration names its controls (Label Studio `from_name`s and data key)."""

    text_from_name: str = "transcription"
    label_from_name: str = "label"
    exclude_labels: tuple[str, ...] = ("noise",)
    audio_key: str = "audio"


@dataclass(frozen=True)
class Region:
    """One annotated stretch of a recording: its label result and text result share `region_id`."""

    region_id: str
    start: float
    end: float
    text: str
    labels: tuple[str, ...]
    kind: RegionKind


@dataclass(frozen=True)
class Task:
    """One recording's chosen annotation: regions in time order."""

    task_id: str
    audio_uri: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Skip:
    """An item left out, and why: reported, counted, never silent."""

    reason: str
    task_id: str = ""
    audio_uri: str = ""
    detail: str = ""


@dataclass(frozen=True)
class ParsedExport:
    tasks: tuple[Task, ...]
    skips: tuple[Skip, ...]
    tasks_read: int
    regions_by_kind: Mapping[str, int] = field(default_factory=dict)


def normalize_text(lines: Any) -> str:
    """Join a textarea's lines with spaces, collapse whitespace, compose Unicode (NFC): NFD Vietnamese
    diacritics would otherwise tokenize differently from the same text typed composed."""
    if isinstance(lines, str):
        lines = [lines]
    if not isinstance(lines, list):
        return ""
    joined = " ".join(str(line) for line in lines if line is not None)
    return " ".join(unicodedata.normalize("NFC", joined).split())


def load_export(raw: bytes, *, source: str = "the export") -> list[dict[str, Any]]:
    """Decode the export's bytes into its task list, refusing the formats that lose region pairing."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{source} is not UTF-8 text (byte {error.start}); {EXPORT_AGAIN}") from None
    if not text.strip():
        raise AnnotationError(f"{source} is empty; {EXPORT_AGAIN}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(_describe_non_json(text, source, error)) from None
    if isinstance(document, dict):
        if "audio_filepath" in document:
            raise AnnotationError(_refusal(source, "ASR_MANIFEST"))
        raise AnnotationError(
            f"{source} is a JSON object, not the list of tasks of a full export; {EXPORT_AGAIN}"
        )
    if not isinstance(document, list):
        raise AnnotationError(f"{source} holds a JSON {type(document).__name__}, not a list of tasks")
    if not document:
        raise AnnotationError(f"{source} holds no tasks (an empty list)")
    dict_items = [item for item in document if isinstance(item, dict)]
    if dict_items and not any("data" in item or "annotations" in item for item in dict_items):
        raise AnnotationError(_refusal(source, "JSON_MIN"))
    return document


def _refusal(source: str, format_name: str) -> str:
    return (
        f"{source} looks like Label Studio's {format_name} export, which loses the pairing of region labels "
        f"and per-region text; {EXPORT_AGAIN}"
    )


def _describe_non_json(text: str, source: str, error: json.JSONDecodeError) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0]
    if len(lines) > 1 and first.lstrip().startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and ("audio_filepath" in record or "text" in record):
            return _refusal(source, "ASR_MANIFEST")
    if not first.lstrip().startswith(("[", "{")) and ("," in first or "\t" in first):
        return _refusal(source, "CSV/TSV")
    return (
        f"{source} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); {EXPORT_AGAIN}"
    )


def parse_export(document: list[Any], settings: AnnotationSettings) -> ParsedExport:
    """Choose each task's annotation and pair its results into regions."""
    tasks: list[Task] = []
    skips: list[Skip] = []
    regions_by_kind = dict.fromkeys(RegionKind, 0)
    for index, item in enumerate(document):
        task, task_skips = _parse_task(item, index, settings)
        skips.extend(task_skips)
        if task is None:
            continue
        for region in task.regions:
            regions_by_kind[region.kind] += 1
        if not any(region.kind in (RegionKind.SPEECH, RegionKind.EXCLUDED) for region in task.regions):
            skips.append(Skip("no_transcribed_speech", task.task_id, task.audio_uri))
            continue
        tasks.append(task)
    return ParsedExport(
        tasks=tuple(tasks),
        skips=tuple(skips),
        tasks_read=len(document),
        regions_by_kind={str(kind): count for kind, count in regions_by_kind.items()},
    )


def _parse_task(item: Any, index: int, settings: AnnotationSettings) -> tuple[Task | None, list[Skip]]:
    if not isinstance(item, dict):
        return None, [Skip("not_a_task", f"#{index}", detail=f"item is a {type(item).__name__}")]
    task_id = str(item.get("id", f"#{index}"))
    data = item.get("data")
    audio_uri = data.get(settings.audio_key) if isinstance(data, dict) else None
    if not isinstance(audio_uri, str) or not audio_uri.strip():
        return None, [Skip("no_audio", task_id, detail=f"task has no data.{settings.audio_key}")]
    audio_uri = audio_uri.strip()
    annotations = [entry for entry in item.get("annotations") or [] if isinstance(entry, dict)]
    if not annotations:
        reason = "only_predictions" if item.get("predictions") else "no_annotation"
        return None, [Skip(reason, task_id, audio_uri)]
    chosen = choose_annotation(annotations)
    if chosen is None:
        return None, [Skip("only_cancelled_annotations", task_id, audio_uri)]
    regions, skips = _pair_regions(chosen.get("result") or [], settings, task_id, audio_uri)
    return Task(task_id, audio_uri, regions), skips


def choose_annotation(annotations: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Ground truth if present, else the newest annotation that was not cancelled (by updated/created)."""
    candidates = [entry for entry in annotations if not entry.get("was_cancelled")]
    if not candidates:
        return None
    ground_truth = [entry for entry in candidates if entry.get("ground_truth")]
    return max(ground_truth or candidates, key=_annotation_recency)


def _annotation_recency(annotation: dict[str, Any]) -> tuple[datetime, datetime, str]:
    id_value = annotation.get("id")
    return (
        _timestamp(annotation.get("updated_at")),
        _timestamp(annotation.get("created_at")),
        f"{id_value:>20}" if id_value is not None else "",
    )


def _timestamp(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return datetime.min
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return datetime.min


def _pair_regions(
    results: list[Any], settings: AnnotationSettings, task_id: str, audio_uri: str
) -> tuple[tuple[Region, ...], list[Skip]]:
    """Group the results of one annotation by region id: a textarea result and a labels result."""
    grouped: dict[str, dict[str, Any]] = {}
    for position, result in enumerate(results):
        if not isinstance(result, dict) or result.get("from_name") not in (
            settings.text_from_name,
            settings.label_from_name,
        ):
            continue
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        region_id = str(result.get("id") or f"result-{position}")
        entry = grouped.setdefault(region_id, {"start": value.get("start"), "end": value.get("end")})
        for bound in ("start", "end"):
            if entry[bound] is None:
                entry[bound] = value.get(bound)
        if result["from_name"] == settings.text_from_name:
            entry["text"] = normalize_text(value.get("text"))
        else:
            labels = value.get("labels")
            entry["labels"] = tuple(str(label) for label in labels) if isinstance(labels, list) else ()

    excluded = {label.casefold() for label in settings.exclude_labels}
    regions: list[Region] = []
    skips: list[Skip] = []
    for region_id, entry in grouped.items():
        start, end = _seconds(entry["start"]), _seconds(entry["end"])
        if start is None or end is None or start < 0 or end <= start:
            detail = f"region {region_id}: start={entry['start']!r} end={entry['end']!r}"
            skips.append(Skip("invalid_region_times", task_id, audio_uri, detail))
            continue
        text, labels = entry.get("text", ""), entry.get("labels", ())
        if any(label.casefold() in excluded for label in labels):
            kind = RegionKind.EXCLUDED
            skips.append(
                Skip("excluded_label", task_id, audio_uri, f"region {region_id}: {', '.join(labels)}")
            )
        elif not text:
            kind = RegionKind.UNTRANSCRIBED
            skips.append(Skip("empty_text", task_id, audio_uri, f"region {region_id}"))
        else:
            kind = RegionKind.SPEECH
        regions.append(Region(region_id, start, end, text if kind is RegionKind.SPEECH else "", labels, kind))
    regions.sort(key=lambda region: (region.start, region.end, region.region_id))
    return tuple(regions), skips


def _seconds(value: Any) -> float | None:
    """A finite number of seconds, or None (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
