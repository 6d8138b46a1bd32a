"""Label Studio's full JSON export -> tasks of time-stamped regions (what is said, and when).

Only the full "JSON" export keeps a region's label and its per-region transcription paired by region id;
the other formats (JSON_MIN, CSV/TSV, ASR_MANIFEST) are recognised and refused. Problems with one task or
one region are counted skips with a reason, never a crash and never a silent loss.

The controls (the TextArea, the Labels and the data key of the audio) are found by themselves: from the
labelling configuration when it is known, else from the export (`resolve_controls`). A transcription with
no start and end (the built-in "Automatic Speech Recognition" template) is the whole file's.
"""

from __future__ import annotations

import json
import math
import unicodedata
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote, urlparse

from whisper_pipeline.errors import AnnotationError
from whisper_pipeline.prepare.http import redact

EXPORT_AGAIN = 'export the project from Label Studio as "JSON" (the full export) instead'


class RegionKind(StrEnum):
    """What a region contributes to a training window."""

    SPEECH = "speech"  # transcribed speech: audio and text
    EXCLUDED = "excluded"  # a label in --exclude-labels (noise): audio kept inside a window, no text
    UNTRANSCRIBED = "untranscribed"  # speech without text: never inside a window


@dataclass(frozen=True)
class AnnotationSettings:
    """How the labelling configuration names its controls (Label Studio `from_name`s and data key).

    `label_from_name` None: the project has no Labels control, every transcribed region is speech."""

    text_from_name: str = "transcription"
    label_from_name: str | None = "label"
    exclude_labels: tuple[str, ...] = ("noise",)
    audio_key: str = "audio"


@dataclass(frozen=True)
class Region:
    """One annotated stretch of a recording: its label result and text result share `region_id`.

    A whole-file transcription (no start or end in the export) has start 0 and end infinity: its length
    is known once the audio is decoded."""

    region_id: str
    start: float
    end: float
    text: str
    labels: tuple[str, ...]
    kind: RegionKind

    @property
    def whole_file(self) -> bool:
        return math.isinf(self.end)


@dataclass(frozen=True)
class Task:
    """One recording's chosen annotation: regions in time order. `audio_uri` names the recording in
    messages, reports and the cache (an http(s) URL without its signature or token: see http.redact);
    `location` is the URI as the export writes it, where the audio is read from."""

    task_id: str
    audio_uri: str
    regions: tuple[Region, ...]
    location: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.location:
            object.__setattr__(self, "location", self.audio_uri)


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
    location = audio_uri.strip()
    audio_uri = redact(location) if location.lower().startswith(("http://", "https://")) else location
    annotations = [entry for entry in item.get("annotations") or [] if isinstance(entry, dict)]
    if not annotations:
        reason = "only_predictions" if item.get("predictions") else "no_annotation"
        return None, [Skip(reason, task_id, audio_uri)]
    chosen = choose_annotation(annotations)
    if chosen is None:
        return None, [Skip("only_cancelled_annotations", task_id, audio_uri)]
    regions, skips = _pair_regions(chosen.get("result") or [], settings, task_id, audio_uri)
    return Task(task_id, audio_uri, regions, location), skips


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
    controls = {settings.text_from_name, *([settings.label_from_name] if settings.label_from_name else [])}
    for position, result in enumerate(results):
        if not isinstance(result, dict) or result.get("from_name") not in controls:
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
        if entry["start"] is None and entry["end"] is None and "labels" not in entry:
            start, end = 0.0, math.inf  # a transcription of the whole file
        else:
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


# --- which controls hold the transcript, the labels and the audio -----------------------------------

AUDIO_TAGS = ("audio", "audioplus")  # Label Studio's audio object tags (lower case)
AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".mp3",
    ".ogg",
    ".opus",
    ".m4a",
    ".aac",
    ".webm",
    ".wma",
    ".aiff",
    ".mp4",
)
AUDIO_LOCATION_PREFIXES = ("s3://", "gs://", "azure-blob://", "http://", "https://", "file://", "/data/")
CONTROL_FLAGS = {"text_from_name": "--text-from-name", "label_from_name": "--label-from-name"}


@dataclass(frozen=True)
class LabelConfig:
    """The controls of a labelling configuration that matter here: the TextArea and Labels controls whose
    toName is an audio object, and the data keys ($key) of those objects."""

    textareas: tuple[str, ...]
    labels: tuple[str, ...]
    audio_keys: tuple[str, ...]


def parse_label_config(xml: str, *, source: str = "the labelling config") -> LabelConfig:
    """The controls of a Label Studio labelling configuration (its XML)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise AnnotationError(f"{source} is not valid XML ({error})") from None
    audio = {
        element.get("name"): element.get("value", "")
        for element in root.iter()
        if element.tag.lower() in AUDIO_TAGS and element.get("name")
    }

    def controls(tag: str) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(
                element.get("name")
                for element in root.iter()
                if element.tag.lower() == tag
                and element.get("name")
                and any(target in audio for target in element.get("toName", "").split(","))
            )
        )

    keys = tuple(dict.fromkeys(value.lstrip("$") for value in audio.values() if value.startswith("$")))
    return LabelConfig(textareas=controls("textarea"), labels=controls("labels"), audio_keys=keys)


@dataclass(frozen=True)
class ControlNames:
    """The names given by flags: None = find it (in the labelling config, else in the export)."""

    text_from_name: str | None = None
    label_from_name: str | None = None
    audio_key: str | None = None


@dataclass(frozen=True)
class ResolvedControls:
    """The names used, and where each was found: "flag", "label config" or "export"."""

    settings: AnnotationSettings
    found_in: Mapping[str, str]


def resolve_controls(
    document: list[Any],
    names: ControlNames,
    exclude_labels: Iterable[str],
    label_config: LabelConfig | None = None,
) -> ResolvedControls:
    """The TextArea, Labels and data key to read: each flag given as is (refused when no result or task
    of the export uses it), else the one of the labelling config, else the one the export holds. More than
    one candidate is an AnnotationError naming them and the flag to set."""
    used = _names_in_export(document)
    found_in: dict[str, str] = {}
    chosen: dict[str, str | None] = {}
    for attribute, result_type in (("text_from_name", "textarea"), ("label_from_name", "labels")):
        flag = CONTROL_FLAGS[attribute]
        given = getattr(names, attribute)
        if given:
            if used.results and given not in used.results:
                raise AnnotationError(
                    f"{flag} {given}: no result of the export uses it; the export's controls: "
                    f"{_listed(used.results)}"
                )
            chosen[attribute], found_in[attribute] = given, "flag"
            continue
        if label_config is not None:
            candidates = label_config.textareas if result_type == "textarea" else label_config.labels
            where = "label config"
        else:
            candidates = tuple(name for name, kind in used.results.items() if kind == result_type)
            where = "export"
        if len(candidates) > 1:
            raise AnnotationError(
                f"the {where} has {len(candidates)} {result_type} controls ({', '.join(candidates)}): "
                f"choose one with {flag}"
            )
        chosen[attribute] = candidates[0] if candidates else None
        found_in[attribute] = where if candidates else "none found"
    if chosen["text_from_name"] is None:
        raise AnnotationError(
            f"no TextArea control (the transcription) in the {'label config' if label_config else 'export'}"
            f"{'' if label_config else ' (the export holds no transcription)'}; its controls: "
            f"{_listed(used.results) if used.results else 'none'}; set --text-from-name"
        )
    audio_key = _audio_key(names.audio_key, used, label_config, found_in)
    return ResolvedControls(
        AnnotationSettings(
            text_from_name=chosen["text_from_name"],
            label_from_name=chosen["label_from_name"],
            exclude_labels=tuple(exclude_labels),
            audio_key=audio_key,
        ),
        found_in,
    )


@dataclass(frozen=True)
class _ExportNames:
    results: Mapping[str, str]  # from_name -> result type, over every annotation's results
    data_keys: tuple[str, ...]  # every task's data keys
    audio_keys: tuple[str, ...]  # data keys whose values look like audio locations


def _names_in_export(document: list[Any]) -> _ExportNames:
    results: dict[str, str] = {}
    data_keys: dict[str, None] = {}
    values: Counter[str] = Counter()  # data key -> non-empty text values
    audio_like: Counter[str] = Counter()  # ... of them that look like audio locations
    with_extension: Counter[str] = Counter()  # ... of them that end in an audio file extension
    for item in document:
        if not isinstance(item, dict):
            continue
        data = item.get("data") if isinstance(item.get("data"), dict) else {}
        for key, value in data.items():
            data_keys[str(key)] = None
            if isinstance(value, str) and value.strip():
                values[str(key)] += 1
                audio_like[str(key)] += _looks_like_audio(value.strip())
                with_extension[str(key)] += _has_audio_extension(value.strip())
        for annotation in item.get("annotations") or []:
            for result in (annotation.get("result") or []) if isinstance(annotation, dict) else []:
                if isinstance(result, dict) and isinstance(result.get("from_name"), str):
                    results.setdefault(result["from_name"], str(result.get("type", "")))
    # most values look like audio (a few broken ones are the tasks' own no_audio skips)
    audio = [key for key in values if 2 * audio_like[key] > values[key]]
    if len(audio) > 1:  # e.g. an image URL beside the audio: the key whose files are audio
        audio = [key for key in audio if with_extension[key]] or audio
    return _ExportNames(results, tuple(data_keys), tuple(audio))


def _looks_like_audio(value: str) -> bool:
    return value.lower().startswith(AUDIO_LOCATION_PREFIXES) or _has_audio_extension(value)


def _has_audio_extension(value: str) -> bool:
    parsed = urlparse(value)
    path = unquote(parsed.path + ("/" + parsed.query if parsed.query else "")).lower()
    return path.endswith(AUDIO_EXTENSIONS)


def _listed(results: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({kind or 'no type'})" for name, kind in results.items())


def _audio_key(
    given: str | None, used: _ExportNames, label_config: LabelConfig | None, found_in: dict[str, str]
) -> str:
    if given:
        if used.data_keys and given not in used.data_keys:
            raise AnnotationError(
                f"--audio-key {given}: no task's data holds it; the export's data keys: "
                f"{', '.join(used.data_keys)}"
            )
        found_in["audio_key"] = "flag"
        return given
    if label_config is not None and label_config.audio_keys:
        candidates, where = label_config.audio_keys, "label config"
    else:
        candidates, where = used.audio_keys, "export"
    if len(candidates) > 1:
        raise AnnotationError(
            f"the {where} has {len(candidates)} audio data keys ({', '.join(candidates)}): choose one "
            "with --audio-key"
        )
    if not candidates:
        raise AnnotationError(
            "no task data key holds audio locations (s3://, http(s)://, /data/..., or an audio file "
            f"name); the export's data keys: {', '.join(used.data_keys) or 'none'}; set --audio-key"
        )
    found_in["audio_key"] = where
    return candidates[0]
