"""Synthetic speech and real-shaped Label Studio exports for the embedded demo, the benchmarks and the tests.

Speech comes from espeak-ng (a real, deterministic synthesiser: no recordings to ship or download); the
exports follow Label Studio's own shapes field for field, so the parser is exercised on what users upload,
including the lossy formats it must refuse. The same inputs always give the same samples and bytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import soundfile as sf
import soxr

from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.errors import PipelineError
from whisper_pipeline.prepare.audio import RESAMPLE_QUALITY

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")
SPEECH = "speech"
NOISE = "noise"
FADE_S = 0.01  # noise bursts fade in and out over 10 ms, so their edges do not click
PCM_16_SCALE = 32768  # 16-bit PCM: the sample x is stored as round(x * 32768) and read back divided by it

# libsndfile (bundled with soundfile >= 0.12) writes these reproducibly, and its MP3 carries LAME's
# gapless header, so MP3 decodes to the input's exact length. Its OGG writer draws a random stream serial
# number per file, so OGG goes through ffmpeg, whose bitexact mode fixes the serial and leaves out its
# version string.
_SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
_FFMPEG_CODECS = {"ogg": ("-c:a", "libvorbis", "-q:a", "4", "-f", "ogg")}

_EXPORT_EPOCH = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)  # the builder's clock starts here
_REGION_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class SynthesisError(PipelineError):
    """espeak-ng or ffmpeg is missing or refuses the request (an unknown voice): the user can fix that."""


# --- speech, noise and recordings -----------------------------------------------------------------


def synthesize(text: str, voice: str = "vi", *, speed: int = 150, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech for `text` as float32 mono at 16 kHz.

    The text goes through stdin as UTF-8 (`-b 1`), so a text starting with "-" is never read as an option
    and the locale does not matter. `speed` is words per minute (80 to 450), `pitch` 0 to 99. espeak-ng
    ends each clip with about 0.3 s of silence.
    """
    if not text.strip():
        raise ValueError("synthesize needs some text; espeak-ng says nothing for blank text")
    if not 80 <= speed <= 450 or not 0 <= pitch <= 99:
        raise ValueError(f"espeak-ng needs speed in [80, 450] and pitch in [0, 99], got {speed} and {pitch}")
    espeak = _tool("espeak-ng")
    command = [espeak, "--stdout", "-b", "1", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdin"]
    process = subprocess.run(command, input=text.encode(), capture_output=True, check=False)
    if process.returncode != 0 or not process.stdout:
        detail = process.stderr.decode("utf-8", "replace").strip() or f"exit code {process.returncode}"
        raise SynthesisError(f"espeak-ng cannot speak with voice {voice!r}: {detail}")
    samples, rate = sf.read(io.BytesIO(process.stdout), dtype="float32")
    resampled = soxr.resample(samples, rate, SAMPLE_RATE, RESAMPLE_QUALITY)
    # espeak-ng speaks at full scale and resampling overshoots its peaks slightly: clip, so that a
    # 16-bit file holds exactly these samples
    return np.clip(resampled, -1.0, 1.0).astype(np.float32, copy=False)


def noise(duration_s: float, seed: int, level: float = 0.05, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A burst of pink noise (power falling as 1/f, like room and street noise): RMS `level`, 10 ms fades.

    The same (duration, seed, level, rate) give the same samples; peaks are clipped to full scale.
    """
    length = round(duration_s * sample_rate)
    if length <= 0:
        raise ValueError(f"noise needs a positive duration, got {duration_s} s")
    white = np.random.default_rng(seed).standard_normal(length)
    spectrum = np.fft.rfft(white)
    frequencies = np.fft.rfftfreq(length, d=1 / sample_rate)
    spectrum[1:] /= np.sqrt(frequencies[1:])
    spectrum[0] = 0.0  # no DC offset
    pink = np.fft.irfft(spectrum, n=length)
    pink *= level / max(float(np.sqrt(np.mean(pink**2))), 1e-12)
    fade = min(round(FADE_S * sample_rate), length // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        pink[:fade] *= ramp
        pink[length - fade :] *= ramp[::-1]
    return np.clip(pink, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Utterance:
    """One region of a recording, in seconds, as an annotator would draw it.

    `label` None draws no label result (a transcription without a label); an empty `text` draws no
    textarea result (a region never transcribed, or noise). Lines of `text` separated by "\\n" become the
    separate strings of the textarea's `value.text`, as Label Studio stores lines typed.
    """

    text: str
    start: float
    end: float
    label: str | None = SPEECH


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class Part:
    """One piece of a composed recording: its samples and what a region over it says."""

    samples: np.ndarray
    text: str = ""
    label: str | None = SPEECH


def compose(
    parts: Sequence[Part], *, gap_s: float = 0.4, edge_s: float = 0.25, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, list[Utterance]]:
    """One recording holding `parts` in order, separated by `gap_s` of digital silence, with `edge_s` of
    silence before the first and after the last: a long recording that the pipeline must cut by region.

    Each Utterance spans exactly its part's samples (start = first sample / rate, end = one past the last).
    """
    if not parts:
        raise ValueError("compose needs at least one part")
    gap, edge = round(gap_s * sample_rate), round(edge_s * sample_rate)
    total = 2 * edge + gap * (len(parts) - 1) + sum(len(part.samples) for part in parts)
    recording = np.zeros(total, dtype=np.float32)
    utterances: list[Utterance] = []
    offset = edge
    for part in parts:
        stop = offset + len(part.samples)
        recording[offset:stop] = part.samples
        utterances.append(Utterance(part.text, offset / sample_rate, stop / sample_rate, part.label))
        offset = stop + gap
    return recording, utterances


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Samples (mono, or [frames, channels]) -> the bytes of a "wav"/"flac" (16-bit PCM), "mp3" or "ogg"
    (Vorbis) file; the same input gives the same bytes.

    Samples are clipped to full scale first. WAV and FLAC are quantised here rather than by libsndfile,
    whose WAV and FLAC writers round differently: both then hold the same integers, and decode to exactly
    `quantize_pcm16(samples)`.
    """
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if fmt in _SOUNDFILE_FORMATS:
        file_format, subtype = _SOUNDFILE_FORMATS[fmt]
        data = _pcm16(clipped) if subtype == "PCM_16" else clipped
        buffer = io.BytesIO()
        sf.write(buffer, data, sample_rate, format=file_format, subtype=subtype)
        return buffer.getvalue()
    if fmt in _FFMPEG_CODECS:
        return _ffmpeg_encode(clipped, sample_rate, _FFMPEG_CODECS[fmt])
    raise ValueError(f"unknown audio format {fmt!r}; known: {', '.join(AUDIO_FORMATS)}")


def quantize_pcm16(samples: np.ndarray) -> np.ndarray:
    """What a 16-bit WAV or FLAC from `encode_audio` decodes to: the samples rounded to 1/32768 steps."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (_pcm16(clipped) / np.float32(PCM_16_SCALE)).astype(np.float32)


def _pcm16(clipped: np.ndarray) -> np.ndarray:
    return np.clip(np.round(clipped * PCM_16_SCALE), -PCM_16_SCALE, PCM_16_SCALE - 1).astype(np.int16)


def _ffmpeg_encode(samples: np.ndarray, sample_rate: int, codec: tuple[str, ...]) -> bytes:
    """Pipe float WAV into ffmpeg and its encoded output back, in bitexact mode (reproducible bytes)."""
    ffmpeg = _tool("ffmpeg")
    source = io.BytesIO()
    sf.write(source, samples, sample_rate, format="WAV", subtype="FLOAT")
    command = [
        ffmpeg, "-nostdin", "-v", "error", "-f", "wav", "-i", "pipe:0", "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:a", "+bitexact", *codec, "pipe:1",
    ]  # fmt: skip
    process = subprocess.run(command, input=source.getvalue(), capture_output=True, check=False)
    if process.returncode != 0:
        detail = process.stderr.decode("utf-8", "replace").strip() or f"exit code {process.returncode}"
        raise SynthesisError(f"ffmpeg cannot encode {' '.join(codec)}: {detail}")
    return process.stdout


def _tool(command: str) -> str:
    """The tool's path; the Debian package has the same name."""
    found = shutil.which(command)
    if found is None:
        raise SynthesisError(
            f"{command} is not installed; install it (apt-get install {command}) or run scripts/setup_env.sh"
        )
    return found


# --- Label Studio exports ---------------------------------------------------------------------------


@dataclass
class LabelStudioExport:
    """Builds a project export the way Label Studio writes it: the full JSON export (`to_json`), and the
    lossy JSON_MIN, CSV/TSV and ASR_MANIFEST exports users pick by mistake.

    Region ids, unique ids, lead times and the clock's steps come from a generator seeded with `seed`, so
    the same calls give the same bytes. Each added task or annotation moves the clock forward: an
    annotation added later is newer. Methods return the dicts they add, for tests to alter further.
    """

    seed: int = 0
    project: int = 3
    label_from_name: str = "label"
    text_from_name: str = "transcription"
    to_name: str = "audio"
    audio_key: str = "audio"
    annotator: int = 1
    tasks: list[dict[str, Any]] = field(default_factory=list, init=False)
    _rng: random.Random = field(init=False, repr=False)
    _clock: datetime = field(default=_EXPORT_EPOCH, init=False, repr=False)
    _last_ids: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _durations: dict[int, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add_task(
        self,
        audio_uri: str,
        regions: Sequence[Utterance] | None,
        *,
        task_id: int | None = None,
        duration: float | None = None,
    ) -> dict[str, Any]:
        """A task for one recording, with one submitted annotation holding `regions`; None leaves it
        unannotated (imported only, or pre-annotated: see add_prediction). `duration` (seconds) fills the
        results' `original_length` and the ASR manifest's duration, as Label Studio measures them."""
        task_id = self._new_id("task") if task_id is None else task_id
        created = self._tick()
        task: dict[str, Any] = {
            "id": task_id,
            "annotations": [],
            "file_upload": _uploaded_file_name(audio_uri),
            "drafts": [],
            "predictions": [],
            "data": {self.audio_key: audio_uri},
            "meta": {},
            "created_at": _iso(created),
            "updated_at": _iso(created),
            "inner_id": len(self.tasks) + 1,
            "total_annotations": 0,
            "cancelled_annotations": 0,
            "total_predictions": 0,
            "comment_count": 0,
            "unresolved_comment_count": 0,
            "last_comment_updated_at": None,
            "project": self.project,
            "updated_by": None,
            "comment_authors": [],
        }
        if duration is not None:
            self._durations[task_id] = duration
        self.tasks.append(task)
        if regions is not None:
            self.add_annotation(task, regions)
        return task

    def add_annotation(
        self,
        task: dict[str, Any],
        regions: Sequence[Utterance],
        *,
        cancelled: bool = False,
        ground_truth: bool = False,
        older: bool = False,
    ) -> dict[str, Any]:
        """Another annotation of `task`: by default newer than all before it; `older` dates it an hour
        before the task's oldest; `cancelled` is a skipped task (its regions, if any, must be ignored);
        `ground_truth` is the reviewer's pick, chosen whatever its date."""
        lead_time = round(self._rng.uniform(5.0, 120.0), 3)
        if older and task["annotations"]:
            oldest = min(_parse_iso(entry["created_at"]) for entry in task["annotations"])
            created = oldest - timedelta(hours=1)
        else:
            created = self._tick()
        updated = created + timedelta(seconds=lead_time)
        results = self._results(regions, self._durations.get(task["id"]), origin="manual")
        annotation: dict[str, Any] = {
            "id": self._new_id("annotation"),
            "completed_by": self.annotator,
            "result": results,
            "was_cancelled": cancelled,
            "ground_truth": ground_truth,
            "created_at": _iso(created),
            "updated_at": _iso(updated),
            "draft_created_at": None,
            "lead_time": lead_time,
            "prediction": {},
            "result_count": len(results),
            "unique_id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            "import_id": None,
            "last_action": None,
            "bulk_created": False,
            "task": task["id"],
            "project": self.project,
            "updated_by": self.annotator,
            "parent_prediction": None,
            "parent_annotation": None,
            "last_created_by": None,
        }
        task["annotations"].append(annotation)
        task["total_annotations"] = sum(not entry["was_cancelled"] for entry in task["annotations"])
        task["cancelled_annotations"] = sum(bool(entry["was_cancelled"]) for entry in task["annotations"])
        task["updated_at"] = max(task["updated_at"], _iso(updated))
        return annotation

    def add_prediction(
        self,
        task: dict[str, Any],
        regions: Sequence[Utterance],
        *,
        model_version: str = "whisper-base",
        score: float = 0.5,
    ) -> dict[str, Any]:
        """A model's pre-annotation of `task`, in the same result shape as an annotation: never a label."""
        when = self._tick()
        prediction = {
            "id": self._new_id("prediction"),
            "result": self._results(regions, self._durations.get(task["id"]), origin="prediction"),
            "model_version": model_version,
            "created_ago": "0 minutes",
            "score": score,
            "cluster": None,
            "neighbors": None,
            "mislabeling": 0.0,
            "created_at": _iso(when),
            "updated_at": _iso(when),
            "model": None,
            "model_run": None,
            "task": task["id"],
            "project": self.project,
        }
        task["predictions"].append(prediction)
        task["total_predictions"] = len(task["predictions"])
        return prediction

    # --- output --------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The full JSON export: the only one that keeps each region's label paired with its text."""
        return json.dumps(self.tasks, indent=2, ensure_ascii=False)

    def write(self, path: str | Path) -> Path:
        """Write the full JSON export as UTF-8 and return its path."""
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def to_json_min(self) -> str:
        """JSON_MIN: one flat object per annotation, each control's values listed under its name."""
        return json.dumps(list(self._min_records(for_csv=False)), indent=2, ensure_ascii=False)

    def to_csv(self, *, sep: str = ",") -> str:
        """CSV (TSV with sep="\\t"): JSON_MIN's records as rows, list values as JSON text in a cell."""
        records = list(self._min_records(for_csv=True))
        columns = list(dict.fromkeys(key for record in records for key in record))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, delimiter=sep, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()

    def to_asr_manifest(self) -> str:
        """ASR_MANIFEST (NVIDIA NeMo's): one JSON line per annotation with the audio file, its duration and
        a single text, that of the first transcription only (Label Studio keeps `text[0]` of the first)."""
        lines = []
        for task, annotation in self._exported_annotations():
            texts = [
                result["value"]["text"] for result in annotation["result"] if result["type"] == "textarea"
            ]
            record = {
                "audio_filepath": f"audio/{_file_name(task['data'][self.audio_key])}",
                "duration": self._durations.get(task["id"], _last_end(annotation)),
                "text": texts[0][0] if texts and texts[0] else "",
            }
            lines.append(json.dumps(record) + "\n")
        return "".join(lines)

    # --- internals ------------------------------------------------------------------------------------

    def _results(
        self, regions: Sequence[Utterance], duration: float | None, *, origin: str
    ) -> list[dict[str, Any]]:
        """A labels result and a textarea result per region, sharing the region's id."""
        results: list[dict[str, Any]] = []
        for region in regions:
            region_id = "".join(self._rng.choices(_REGION_ID_ALPHABET, k=10))
            span = {"start": region.start, "end": region.end, "channel": 0}
            controls = []
            if region.label is not None:
                controls.append((self.label_from_name, "labels", {**span, "labels": [region.label]}))
            if region.text:
                controls.append((self.text_from_name, "textarea", {**span, "text": region.text.split("\n")}))
            for from_name, result_type, value in controls:
                result: dict[str, Any] = {"value": value}
                if duration is not None:
                    result["original_length"] = duration
                result |= {
                    "id": region_id,
                    "from_name": from_name,
                    "to_name": self.to_name,
                    "type": result_type,
                    "origin": origin,
                }
                results.append(result)
        return results

    def _exported_annotations(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """What Label Studio's converter exports from each task: every annotation not cancelled, newest
        created first; tasks without one are left out."""
        for task in self.tasks:
            kept = [entry for entry in task["annotations"] if not entry["was_cancelled"]]
            for annotation in sorted(kept, key=lambda entry: entry["created_at"], reverse=True):
                yield task, annotation

    def _min_records(self, *, for_csv: bool) -> Iterator[dict[str, Any]]:
        """Label Studio's converter records: the task's data, then each control's values under its name,
        then who annotated and when; a CSV cell holds a value that is not a string as JSON text."""
        for task, annotation in self._exported_annotations():
            record: dict[str, Any] = {**deepcopy(task["data"]), "id": task["id"]}
            outputs: dict[str, list[dict[str, Any]]] = {}
            for result in annotation["result"]:
                outputs.setdefault(result["from_name"], []).append(
                    {**deepcopy(result["value"]), "type": result["type"]}
                )
            for name, values in outputs.items():
                value = _prettify(values)
                record[name] = (
                    json.dumps(value, ensure_ascii=False) if for_csv and not isinstance(value, str) else value
                )
            record["annotator"] = str(self.annotator) if for_csv else self.annotator
            record["annotation_id"] = annotation["id"]
            for key in ("created_at", "updated_at", "lead_time"):
                record[key] = annotation[key]
            yield record

    def _tick(self) -> datetime:
        self._clock += timedelta(
            seconds=self._rng.randint(60, 1800), microseconds=self._rng.randint(0, 999_999)
        )
        return self._clock

    def _new_id(self, kind: str) -> int:
        self._last_ids[kind] = self._last_ids.get(kind, 0) + 1
        return self._last_ids[kind]


def _prettify(values: list[dict[str, Any]]) -> Any:
    """Label Studio's JSON_MIN value of one control: a textarea value of one line becomes that string, and
    a textarea's only value stands alone; labels stay a list of value dicts."""
    out: list[Any] = []
    for value in values:
        result_type = value.pop("type")
        out.append(value["text"][0] if result_type == "textarea" and len(value["text"]) == 1 else value)
    return out[0] if result_type == "textarea" and len(out) == 1 else out


def _last_end(annotation: dict[str, Any]) -> float:
    return max((result["value"]["end"] for result in annotation["result"]), default=0.0)


def _file_name(audio_uri: str) -> str:
    """The file's name in any audio reference: s3:// or http(s) URL, upload path, or local-files `?d=`."""
    parsed = urlparse(audio_uri)
    local = parse_qs(parsed.query).get("d")
    return PurePosixPath(local[0] if local else parsed.path).name


def _uploaded_file_name(audio_uri: str) -> str | None:
    """Label Studio names the uploaded file for tasks created by upload; storage tasks have none."""
    prefix = "/data/upload/"
    return audio_uri.removeprefix(prefix).split("/", 1)[-1] if audio_uri.startswith(prefix) else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
