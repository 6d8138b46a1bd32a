"""Pre-annotate: the fine-tuned model's transcripts posted into Label Studio as predictions, so annotators
correct a first pass instead of typing every word.

    python -m whisper_pipeline.inference.preannotate --label-studio-url URL --project ID \\
        --model outputs/ct2|outputs/merged|./model [--adapter outputs/adapter] [--replace] \\
        [--dry-run --output FILE]
    python -m whisper_pipeline.inference.preannotate --annotations export.json --output predictions.json \\
        --model ... [--label-config config.xml]

Every task without an annotation is transcribed (its audio fetched as prepare_data.py fetches it: S3,
local files or uploads through the server, http(s)) with Whisper's long-form decoding (transcribe.py), and
gets a prediction in the shape of the project's labelling config: for a segments project (a Labels control
on the audio), one region per timestamped segment, with the speech label and, in the per-region TextArea,
the segment's text; for a whole-file project, one TextArea result with the transcript.

A prediction's `model_version` names the model (see ModelIdentity: the base, the weights' hash, the date
they were written); its `score` is the geometric mean of the transcript's token probabilities (exp of the
mean token log-probability: Label Studio takes scores between 0 and 1), so sorting the task list by it puts
the least certain first. A task that holds a prediction of this model is never predicted again (a rerun,
or one after an interruption, posts only what is missing); a task with another model's prediction is left
alone unless --replace, which swaps that prediction for this model's. Predictions are posted a batch at a
time. --dry-run writes what it would post (Label Studio's prediction import body) to --output instead.

With --annotations, the tasks of an export file get their predictions in --output, in Label Studio's task
import format (tasks with `predictions`); a rerun keeps the tasks --output holds already.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
from tqdm.auto import tqdm

from whisper_pipeline.atomic import atomic_write_bytes
from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import ADAPTER_SAFETENSORS, PRECISIONS
from whisper_pipeline.errors import (
    AnnotationError,
    ConfigError,
    ModelError,
    PipelineError,
    exit_on_user_error,
)
from whisper_pipeline.inference.longform import LongRecording, Span, score_long_form
from whisper_pipeline.inference.transcribe import (
    Segment,
    TranscribeArguments,
    Transcript,
    ctranslate2_transcriber,
    exported_language,
    is_ctranslate2,
    transformers_transcriber,
)
from whisper_pipeline.prepare.annotations import (
    AUDIO_TAGS,
    AnnotationSettings,
    ControlNames,
    RegionKind,
    load_export,
    parse_export,
    parse_label_config,
    resolve_controls,
)
from whisper_pipeline.prepare.audio import AudioDecodeError, decode_audio
from whisper_pipeline.prepare.label_studio import LabelStudioClient
from whisper_pipeline.prepare.run import (
    AUDIO_SOURCE_FIELDS,
    LABELLING_FIELDS,
    SERVER_FIELDS,
    AnnotationSource,
    read_annotations,
    read_label_config_xml,
)
from whisper_pipeline.prepare.sources import AudioAccess, AudioSourceError, load_env_file
from whisper_pipeline.prepare.windows import Utterance
from whisper_pipeline.train.metrics import normalize_for_scoring, score
from whisper_pipeline.writable import check_writable

WEIGHT_FILES = ("model.bin", "model.safetensors", ADAPTER_SAFETENSORS)  # what identifies a model's weights
HASH_CHUNK = 1 << 24
# outcomes of a task that gets no prediction from this run, besides the audio's own skip reasons
ANNOTATED, ALREADY_PREDICTED, OTHER_PREDICTION, NO_AUDIO = (
    "annotated",
    "already_predicted",
    "predicted_by_another_model",
    "no_audio",
)
BEYOND_LIMIT = "beyond_limit"
PREDICTED, REPLACED = "predicted", "replaced"
# what the summary suggests for a count of tasks left without this model's prediction
HINTS = {
    ANNOTATED: "annotated tasks are left alone (--annotated predicts them too, to score the model)",
    OTHER_PREDICTION: "tasks predicted by another model keep theirs (--replace gives them this model's)",
    BEYOND_LIMIT: "tasks past --limit wait for the next run (a rerun goes on where this one stopped)",
}


@dataclass
class PreannotateArguments(AnnotationSource):
    """Settings of `python -m whisper_pipeline.inference.preannotate` (flags, or keys of a YAML/JSON file);
    those of AnnotationSource say where the project and its audio are, as for prepare_data.py."""

    model: str = field(
        default="outputs/merged",
        metadata={"help": "A CTranslate2 export, a merged model, or the base model of --adapter."},
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter on a Hugging Face --model."})
    annotations: str | None = field(
        default=None,
        metadata={"help": "An export file (local or s3://) instead of --project; predictions: --output."},
    )
    output: str | None = field(
        default=None,
        metadata={"help": "With --annotations: the tasks with predictions (import format); with --dry-run: "
                  "the predictions a run would post."},
    )  # fmt: skip
    dry_run: bool = field(default=False, metadata={"help": "Post nothing: write predictions to --output."})
    replace: bool = field(
        default=False,
        metadata={"help": "Tasks predicted by another model get this one's prediction (theirs deleted)."},
    )
    annotated: bool = field(
        default=False,
        metadata={"help": "Predict annotated tasks too (to score the model against the annotations)."},
    )
    tasks: list[int] = field(default_factory=list, metadata={"help": "Only these task ids."})
    limit: int | None = field(default=None, metadata={"help": "Predict at most this many tasks."})
    batch_size: int = field(default=8, metadata={"help": "Tasks transcribed (and posted) at once."})
    speech_label: str | None = field(
        default=None,
        metadata={"help": "The label of predicted regions (default: the config's 'speech', any case)."},
    )
    language: str | None = field(
        default=None, metadata={"help": "Language code (default: the model's training's, else detected)."}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest text of one 30 s window in tokens (default: Whisper's)."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "Hugging Face models: auto, bf16, fp16 or fp32.", "choices": PRECISIONS},
    )

    def validate(self) -> None:
        if (self.project is None) == (self.annotations is None):
            raise ConfigError("give --project (with --label-studio-url) or --annotations EXPORT, one of them")
        if (self.annotations or self.dry_run) and not self.output:
            flag = "--annotations" if self.annotations else "--dry-run"
            raise ConfigError(f"{flag} writes its predictions to --output FILE: give one")
        if self.annotations and (self.replace or self.dry_run):
            raise ConfigError("--replace and --dry-run are for a server's --project")
        if self.project is not None and self.output and not self.dry_run:
            raise ConfigError("--output is where --dry-run writes: with --project, predictions are posted")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 0):
            raise ConfigError("--batch-size must be positive and --limit not negative")


HELP_GROUPS = {
    "tasks": (*SERVER_FIELDS, "annotations", "tasks", "limit", "annotated", "replace"),
    "labelling config": (*LABELLING_FIELDS, "speech_label"),
    "audio": AUDIO_SOURCE_FIELDS,
    "model": ("model", "adapter", "precision", "language", "max_new_tokens", "batch_size"),
    "outputs": ("output", "dry_run"),
}


# --- which model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What `model_version` says: the base model's name, with an adapter its weights' hash, and the date
    the weights were written (the training's, for an adapter). The hash alone decides whether a prediction
    is this model's: a copy of the same weights made later is the same model."""

    base: str
    digest: str
    trained: str
    adapter: bool

    @property
    def version(self) -> str:
        kind, made = ("adapter", "trained") if self.adapter else ("weights", "written")
        return f"{self.base} {kind} {self.digest} {made} {self.trained}"

    def made(self, model_version: Any) -> bool:
        return isinstance(model_version, str) and f" {self.digest} " in model_version


def model_identity(model_dir: Path, adapter_dir: Path | None) -> ModelIdentity:
    weights_dir = adapter_dir or model_dir
    weights = [weights_dir / name for name in WEIGHT_FILES if (weights_dir / name).is_file()]
    if not weights:
        raise ModelError(f"{weights_dir} holds none of {', '.join(WEIGHT_FILES)}")
    digest = hashlib.sha256()
    for path in weights:
        with path.open("rb") as stream:
            while chunk := stream.read(HASH_CHUNK):
                digest.update(chunk)
    written = max(path.stat().st_mtime for path in weights)
    base = model_dir.resolve().name
    if adapter_dir is not None:
        try:
            named = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
            base = Path(named.get("base_model_name_or_path") or base).name or base
        except (OSError, ValueError, AttributeError):
            pass
    return ModelIdentity(
        base=base,
        digest=digest.hexdigest()[:12],
        trained=datetime.fromtimestamp(written, UTC).strftime("%Y-%m-%d"),
        adapter=adapter_dir is not None,
    )


# --- the shape of a prediction -------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionShape:
    """The controls a prediction's results name, read from the labelling config (or a file's export)."""

    text_from_name: str
    to_name: str
    audio_key: str
    label_from_name: str | None = None  # a segments project: regions with `speech_label`
    speech_label: str | None = None
    text_per_region: bool = True

    def results(self, transcript: Transcript) -> list[dict[str, Any]]:
        """Regions (a labels and a per-region textarea result sharing an id) or one whole-file textarea."""
        controls = {"to_name": self.to_name}
        if self.label_from_name is None:
            if not transcript.text:
                return []
            return [
                {"id": "transcript", "from_name": self.text_from_name, **controls, "type": "textarea",
                 "value": {"text": [transcript.text]}, **_score_field(_mean_logprob([transcript]))},
            ]  # fmt: skip
        results = []
        for index, segment in enumerate(region_segments(transcript.segments)):
            span = {"start": segment.start, "end": segment.end, "channel": 0}
            confidence = _score_field(segment.avg_logprob)
            region = f"seg{index:04d}"
            results.append(
                {"id": region, "from_name": self.label_from_name, **controls, "type": "labels",
                 "value": {**span, "labels": [self.speech_label]}, **confidence}
            )  # fmt: skip
            if self.text_per_region:
                results.append(
                    {"id": region, "from_name": self.text_from_name, **controls, "type": "textarea",
                     "value": {**span, "text": [segment.text]}, **confidence}
                )  # fmt: skip
        if not self.text_per_region and transcript.text:
            results.append(
                {"id": "transcript", "from_name": self.text_from_name, **controls, "type": "textarea",
                 "value": {"text": [transcript.text]}}
            )  # fmt: skip
        return results


def region_segments(segments: Sequence[Segment]) -> list[Segment]:
    """The segments as regions an annotator can see: one without length (a timestamp clamped to the end
    of the file, or a segment Whisper closed where it began) joins the region before it (the first, the
    one after it)."""
    regions: list[Segment] = []
    pending: list[Segment] = []  # empty ones before the first region with a length
    for segment in segments:
        if segment.end > segment.start:
            regions.append(_joined([*pending, segment]) if pending else segment)
            pending = []
        elif regions:
            regions[-1] = _joined([regions[-1], segment])
        else:
            pending.append(segment)
    return regions or ([_joined(pending)] if pending else [])


def _joined(parts: Sequence[Segment]) -> Segment:
    counted = [(s.avg_logprob, s.tokens or 1) for s in parts if s.avg_logprob is not None]
    total = sum(count for _, count in counted)
    return Segment(
        min(s.start for s in parts),
        max(s.end for s in parts),
        " ".join(s.text for s in parts),
        avg_logprob=sum(value * count for value, count in counted) / total if total else None,
        tokens=sum(s.tokens or 0 for s in parts) or None,
    )


def _mean_logprob(transcripts: Sequence[Transcript]) -> float | None:
    """The mean log-probability of every token, each segment weighted by its tokens."""
    weighted = [
        (s.avg_logprob, s.tokens or 1) for t in transcripts for s in t.segments if s.avg_logprob is not None
    ]
    total = sum(count for _, count in weighted)
    return sum(value * count for value, count in weighted) / total if total else None


def _score_field(logprob: float | None) -> dict[str, float]:
    """Label Studio's score (0 to 1): the geometric mean of the token probabilities."""
    return {} if logprob is None else {"score": round(math.exp(min(logprob, 0.0)), 4)}


def prediction_shape(
    document: list[Any], args: PreannotateArguments, label_config_xml: str | None
) -> PredictionShape:
    """The controls from the labelling config (the server's, or --label-config), else from the export's
    annotations: the TextArea, the Labels on the audio and its speech label, the audio's data key."""
    config = parse_label_config(label_config_xml) if label_config_xml else None
    controls = resolve_controls(document, args.control_names, args.exclude_labels, config).settings
    elements = _config_elements(label_config_xml) if label_config_xml else {}
    text = elements.get(controls.text_from_name)
    if text is not None:
        to_name = text.get("toName", "").split(",")[0]
        per_region = text.get("perRegion", "").lower() == "true"
        label_values = [
            child.get("value", "")
            for child in elements.get(controls.label_from_name, ElementTree.Element("x"))
            if child.tag.lower() == "label"
        ]
    else:  # an export file with neither --label-config nor a known config: what its annotations hold
        to_name, per_region, label_values = _shape_in_export(document, controls)
    if not controls.label_from_name:
        return PredictionShape(controls.text_from_name, to_name, controls.audio_key)
    return PredictionShape(
        controls.text_from_name,
        to_name,
        controls.audio_key,
        label_from_name=controls.label_from_name,
        speech_label=_speech_label(label_values, args),
        text_per_region=per_region,
    )


def _config_elements(xml: str) -> dict[str, ElementTree.Element]:
    root = ElementTree.fromstring(xml)  # parse_label_config has refused what does not parse
    return {
        element.get("name"): element
        for element in root.iter()
        if element.get("name") and element.tag.lower() not in AUDIO_TAGS
    }


def _shape_in_export(document: list[Any], controls: AnnotationSettings) -> tuple[str, bool, list[str]]:
    to_name, per_region, labels = None, False, []
    for task in document:
        for annotation in task.get("annotations") or [] if isinstance(task, dict) else []:
            for result in annotation.get("result") or [] if isinstance(annotation, dict) else []:
                if not isinstance(result, dict):
                    continue
                value = result.get("value") if isinstance(result.get("value"), dict) else {}
                if result.get("from_name") == controls.text_from_name:
                    to_name = to_name or result.get("to_name")
                    per_region = per_region or "start" in value
                elif result.get("from_name") == controls.label_from_name:
                    labels += [str(label) for label in value.get("labels") or [] if label not in labels]
    if to_name is None:
        raise AnnotationError(
            "the export has no transcription to learn the project's controls from: give --label-config "
            "(the project's labelling config, Settings > Labeling Interface > Code)"
        )
    return to_name, per_region, labels


def _speech_label(values: Sequence[str], args: PreannotateArguments) -> str:
    if args.speech_label:
        return args.speech_label
    excluded = {label.casefold() for label in args.exclude_labels}
    kept = [value for value in values if value.casefold() not in excluded]
    chosen = next((value for value in kept if value.casefold() == "speech"), kept[0] if kept else None)
    if chosen is None:
        listed = ", ".join(values) or "none"
        raise ConfigError(f"no speech label among the labels ({listed}): set --speech-label")
    return chosen


# --- which tasks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    task: dict[str, Any]
    replaces: tuple[int, ...] = ()  # other models' predictions (ids) that this one replaces

    @property
    def task_id(self) -> Any:
        return self.task.get("id")


def select_tasks(
    document: list[Any],
    args: PreannotateArguments,
    identity: ModelIdentity,
    existing: Mapping[Any, list[dict[str, Any]]],
    audio_key: str,
    outcomes: Counter[str],
) -> list[Work]:
    """The tasks to predict, in the export's order; the others counted by why not."""
    wanted = set(args.tasks)
    if missing := sorted(wanted - {task.get("id") for task in document if isinstance(task, dict)}):
        raise ConfigError(f"--tasks: no task {', '.join(map(str, missing))} in the project")
    work: list[Work] = []
    for task in document:
        if not isinstance(task, dict) or (wanted and task.get("id") not in wanted):
            continue
        predictions = existing.get(task.get("id"), [])
        audio = (task.get("data") or {}).get(audio_key) if isinstance(task.get("data"), dict) else None
        if task.get("annotations") and not args.annotated:
            outcomes[ANNOTATED] += 1
        elif any(identity.made(p.get("model_version")) for p in predictions):
            outcomes[ALREADY_PREDICTED] += 1
        elif predictions and not (args.replace or args.annotations):  # (a file run writes a new file)
            outcomes[OTHER_PREDICTION] += 1
        elif not isinstance(audio, str) or not audio.strip():
            outcomes[NO_AUDIO] += 1
        elif args.limit is not None and len(work) >= args.limit:
            outcomes[BEYOND_LIMIT] += 1
        else:
            work.append(Work(task, tuple(p["id"] for p in predictions if isinstance(p.get("id"), int))))
    return work


# --- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreannotateSummary:
    model_version: str
    destination: str
    outcomes: Mapping[str, int]

    def format(self) -> str:
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(self.outcomes.items()))
        counts = counts or "no tasks"
        hints = [f"\n  {reason}: {HINTS[reason]}" for reason in sorted(self.outcomes) if reason in HINTS]
        return f"pre-annotation by {self.model_version} -> {self.destination}: {counts}" + "".join(hints)


@dataclass
class _Session:
    """What a run talks to: the audio (as prepare_data.py reaches it), the server (if any), and where
    predictions go."""

    args: PreannotateArguments
    access: AudioAccess
    client: LabelStudioClient | None

    def fetch(self, task: dict[str, Any], audio_key: str) -> np.ndarray:
        ref = self.access.resolve(task["data"][audio_key])
        return decode_audio(self.access.read(ref), name=ref.uri)


def run_preannotate(
    args: PreannotateArguments, environ: Mapping[str, str] | None = None
) -> PreannotateSummary:
    """Select, transcribe and post (or write) predictions; raises PipelineError for what the user must fix."""
    args.validate()
    if args.output:
        check_writable(args.output, "--output", folder=False)
    environ = os.environ if environ is None else environ
    model_dir = Path(args.model)
    adapter_dir = Path(args.adapter) if args.adapter else None
    if not model_dir.is_dir():
        raise ModelError(f"--model {model_dir}: no such directory")
    if adapter_dir is not None and (is_ctranslate2(model_dir) or not adapter_dir.is_dir()):
        raise ConfigError(f"--adapter {adapter_dir} needs a Hugging Face --model and an adapter folder")
    identity = model_identity(model_dir, adapter_dir)
    session = _connect(args, environ)
    document, label_config_xml, existing, destination = _read_tasks(args, session)
    shape = prediction_shape(document, args, label_config_xml)
    outcomes: Counter[str] = Counter()
    previous = _previous_output(args, identity, shape.audio_key)
    if previous:  # a file run that was interrupted: its finished tasks stay
        for task in document:
            if isinstance(task, dict) and _audio_of(task, shape.audio_key) in previous:
                existing.setdefault(task.get("id"), []).append({"model_version": identity.version})
    work = select_tasks(document, args, identity, existing, shape.audio_key, outcomes)
    written: list[dict[str, Any]] = list(previous.values())
    writes = bool(args.annotations or args.dry_run)
    if work:
        transcribe = _transcriber(args, model_dir, adapter_dir)
        with tqdm(total=len(work), desc="pre-annotating", unit="task") as progress:
            for batch in _batches(work, args.batch_size):
                audio: list[tuple[Work, np.ndarray]] = []
                for item in batch:
                    try:
                        audio.append((item, session.fetch(item.task, shape.audio_key)))
                    except (AudioSourceError, AudioDecodeError) as error:
                        outcomes[error.reason] += 1
                        tqdm.write(f"skipped task {item.task_id}: {error}")
                transcripts = (
                    transcribe([(str(item.task_id), samples) for item, samples in audio]) if audio else []
                )
                done = [
                    (item, _prediction(shape, identity, transcript))
                    for (item, _), transcript in zip(audio, transcripts, strict=True)
                ]
                written += _deliver(args, session, done, outcomes)
                if writes:  # after each batch: an interrupted file run keeps what it did
                    _write_json(Path(args.output), written)
                progress.update(len(batch))
    if writes:
        _write_json(Path(args.output), written)
    return PreannotateSummary(identity.version, destination, dict(outcomes))


def _connect(args: PreannotateArguments, environ: Mapping[str, str]) -> _Session:
    server, access = args.connect(environ)
    client = LabelStudioClient(server, access.http) if server and args.project is not None else None
    return _Session(args, access, client)


def _read_tasks(
    args: PreannotateArguments, session: _Session
) -> tuple[list[Any], str | None, dict[Any, list[dict[str, Any]]], str]:
    """The tasks, the labelling config (if known), each task's predictions, and where predictions go."""
    xml = read_label_config_xml(args.label_config) if args.label_config else None
    existing: dict[Any, list[dict[str, Any]]] = {}
    if session.client is not None:
        client, project = session.client, args.project
        xml = xml or client.label_config(project)
        document = load_export(client.export(project), source=client.project_name(project))
        for prediction in client.predictions(project):
            existing.setdefault(prediction.get("task"), []).append(prediction)
        destination = f"{args.output} (dry run)" if args.dry_run else client.project_name(project)
        return document, xml, existing, destination
    document = load_export(read_annotations(args.annotations, session.access.s3), source=args.annotations)
    for task in document:
        for prediction in task.get("predictions") or [] if isinstance(task, dict) else []:
            if isinstance(prediction, dict):  # (older exports list only their ids)
                existing.setdefault(task.get("id"), []).append(prediction)
    return document, xml, existing, str(args.output)


def _audio_of(task: Mapping[str, Any], audio_key: str) -> Any:
    data = task.get("data")
    return data.get(audio_key) if isinstance(data, dict) else None


def _previous_output(args: PreannotateArguments, identity: ModelIdentity, audio_key: str) -> dict[str, Any]:
    """The tasks an interrupted file run wrote with this model, by audio location."""
    if not args.annotations or not Path(args.output).is_file():
        return {}
    try:
        tasks = json.loads(Path(args.output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(tasks, list):
        return {}
    return {
        _audio_of(task, audio_key): task
        for task in tasks
        if isinstance(task, dict)
        and any(identity.made(p.get("model_version")) for p in task.get("predictions") or [])
    }


def _transcriber(args: PreannotateArguments, model_dir: Path, adapter_dir: Path | None) -> Callable:
    settings = TranscribeArguments(
        model=str(model_dir),
        adapter=args.adapter,
        language=args.language,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    language = args.language or exported_language(model_dir, adapter_dir)
    if is_ctranslate2(model_dir):
        return ctranslate2_transcriber(model_dir, settings, language)
    return transformers_transcriber(model_dir, settings, language, scored=True)


def _batches(items: Sequence[Work], size: int) -> Iterator[list[Work]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _prediction(shape: PredictionShape, identity: ModelIdentity, transcript: Transcript) -> dict[str, Any]:
    return {
        "model_version": identity.version,
        **_score_field(_mean_logprob([transcript])),
        "result": shape.results(transcript),
    }


def _deliver(
    args: PreannotateArguments,
    session: _Session,
    done: list[tuple[Work, dict[str, Any]]],
    outcomes: Counter[str],
) -> list[dict[str, Any]]:
    """Post a batch's predictions (then delete those they replace), or return what the file gets."""
    if not done:  # (every task of the batch skipped)
        return []
    if args.annotations:
        outcomes[PREDICTED] += len(done)
        return [{"data": item.task["data"], "predictions": [prediction]} for item, prediction in done]
    bodies = [{"task": item.task_id, **prediction} for item, prediction in done]
    if args.dry_run:
        outcomes[PREDICTED] += len(bodies)
        return bodies
    client, project = session.client, args.project
    created = client.import_predictions(project, bodies)
    if created != len(bodies):
        raise PipelineError(
            f"{client.project_name(project)} accepted {created} of {len(bodies)} predictions: it checks each "
            "against the labelling config (its log says what did not fit); check --text-from-name, "
            "--label-from-name and --speech-label"
        )
    for item, _ in done:
        for prediction in item.replaces:
            client.delete_prediction(project, prediction)
        outcomes[REPLACED if item.replaces else PREDICTED] += 1
    return []


def _write_json(path: Path, items: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(items, ensure_ascii=False, indent=1) + "\n").encode())


# --- how much typing it saves ----------------------------------------------------------------------------


def score_predictions(
    export: list[Any],
    predictions: list[Any],
    settings: AnnotationSettings | None = None,
    *,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Predictions scored against the annotations of the same tasks (by task id, or by audio location for
    a file run's tasks): the WER of the predicted text, the mean boundary error (seconds) of the predicted
    regions against the annotated speech regions (each against the predicted region that overlaps it most;
    None for whole-file projects), and the words an annotator no longer types: over the tasks, the
    reference words minus the edit operations (substitutions, deletions, insertions) that turn the
    prediction into the annotation, never below 0 for a task (a useless prediction is deleted, not
    corrected). `predictions`: Label Studio prediction bodies ({task, result, model_version}) or tasks
    with predictions; `model_version`: only that model's; `settings`: the controls (default: the export's,
    found as prepare_data.py finds them)."""
    if settings is None:
        settings = resolve_controls(export, ControlNames(), ("noise",)).settings
    parsed = parse_export(export, settings)
    by_id = {task.task_id: task for task in parsed.tasks}
    by_audio = {task.location: task for task in parsed.tasks}
    predicted: dict[str, list[Span]] = {}
    for entry in predictions:
        for task_key, prediction in _prediction_entries(entry, settings.audio_key):
            if model_version is not None and prediction.get("model_version") != model_version:
                continue
            task = by_id.get(str(task_key)) or by_audio.get(task_key)
            if task is not None:
                predicted[task.task_id] = _predicted_spans(prediction.get("result") or [], settings)
    pairs = [(by_id[task_id], spans) for task_id, spans in predicted.items()]
    references = [" ".join(r.text for r in task.regions if r.kind is RegionKind.SPEECH) for task, _ in pairs]
    hypotheses = [" ".join(span.text for span in spans) for _, spans in pairs]
    scores: dict[str, Any] = {"tasks": len(pairs)}
    if not pairs:
        return {**scores, "wer": None, "boundary_error": None, "words_saved": 0, "reference_words": 0}
    scores["wer"] = score(references, hypotheses)["normalized_wer"]
    timed = [
        LongRecording(
            task.audio_uri,
            max(r.end for r in task.regions),
            tuple(Utterance(r.start, r.end, r.text) for r in task.regions if r.kind is RegionKind.SPEECH),
        )
        for task, _ in pairs
    ]
    segmented = [(r, spans) for r, (_, spans) in zip(timed, pairs, strict=True) if math.isfinite(r.duration)]
    scores["boundary_error"] = (
        score_long_form([r for r, _ in segmented], [s for _, s in segmented])["timestamp_error"]
        if any(not r.noise_only for r, _ in segmented)
        else None
    )
    saved = reference_words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        words = normalize_for_scoring(reference).split()
        reference_words += len(words)
        if not words:
            continue
        aligned = jiwer.process_words(" ".join(words), normalize_for_scoring(hypothesis) or "")
        edits = aligned.substitutions + aligned.deletions + aligned.insertions
        saved += max(len(words) - edits, 0)
    scores["words_saved"] = saved
    scores["reference_words"] = reference_words
    return scores


def _prediction_entries(entry: Any, audio_key: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(task id or audio location, prediction) of an import body or of a task with predictions."""
    if not isinstance(entry, dict):
        return
    if "result" in entry:
        yield entry.get("task"), entry
        return
    key = entry.get("id") if entry.get("id") is not None else _audio_of(entry, audio_key)
    for prediction in entry.get("predictions") or []:
        if isinstance(prediction, dict):
            yield key, prediction


def _predicted_spans(results: list[Any], settings: AnnotationSettings) -> list[Span]:
    """A prediction's text regions in time order; a whole-file text spans 0 to infinity."""
    spans = []
    for result in results:
        if isinstance(result, dict) and result.get("from_name") == settings.text_from_name:
            value = result.get("value") or {}
            text = " ".join(" ".join(str(line) for line in value.get("text") or []).split())
            spans.append(Span(float(value.get("start", 0.0)), float(value.get("end", math.inf)), text))
    return sorted(spans, key=lambda span: span.start)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    load_env_file()
    parser = PipelineArgumentParser(
        (PreannotateArguments,),
        prog=as_typed("whisper-preannotate", f"python -m {__spec__.name}"),
        description="The fine-tuned model's transcripts posted into Label Studio as predictions (or written "
        f"to --output). {CONFIG_NOTE} S3 access comes from the environment or .env.",
        groups=HELP_GROUPS,
    )
    (args,) = parse_config((PreannotateArguments,), sys.argv[1:] if argv is None else argv, parser=parser)
    summary = run_preannotate(args)
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
