"""Stage 1: Label Studio export + audio -> the feature cache (see cache.py for the layout).

Data flows one way: parse -> resolve and stat audio (a bucket listing) -> fingerprint (a current cache
stops here, before the tokenizer loads) -> plan windows and splits -> fetch and featurize (pool.py) ->
per-recording shards -> the new cache's splits, appended in order as recordings finish -> the swap.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from whisper_pipeline.atomic import atomic_write_bytes
from whisper_pipeline.cache import (
    FORMAT_VERSION,
    TRAIN,
    VALIDATION,
    CacheBuilder,
    CacheLayout,
    PreviousRecording,
    RowSource,
    ShardStore,
    exclusive_lock,
    previous_recordings,
    processor_fingerprint,
    read_report,
    stable_hash,
)
from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import CHUNK_SECONDS
from whisper_pipeline.errors import CacheError, ConfigError, ModelError, PipelineError, exit_on_user_error
from whisper_pipeline.prepare.annotations import (
    ControlNames,
    LabelConfig,
    ParsedExport,
    RegionKind,
    ResolvedControls,
    Skip,
    Task,
    load_export,
    parse_export,
    parse_label_config,
    resolve_controls,
)
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.features import FEATURE_EXTRACTOR_FILES, LabelEncoder, LogMelFeaturizer
from whisper_pipeline.prepare.fork_server import start_worker_server
from whisper_pipeline.prepare.label_studio import LabelStudioClient, LabelStudioSettings, server_http
from whisper_pipeline.prepare.pool import feature_workers, fetch_and_process, worker_count
from whisper_pipeline.prepare.report import build_report, format_summary, recording_meta
from whisper_pipeline.prepare.sources import (
    AudioAccess,
    AudioRef,
    AudioSourceError,
    Listing,
    S3Access,
    S3Settings,
    Scan,
    UnresolvableAudioError,
    load_env_file,
    preflight,
    read_bytes,
    resolve_audio_uri,
    scan,
    stat_all,
)
from whisper_pipeline.prepare.windows import Utterance, Window, assign_splits, pack_windows
from whisper_pipeline.prepare.worker import RecordingOutcome, RecordingWork, WorkerSetup
from whisper_pipeline.writable import check_writable

EXIT_TOO_MANY_FAILURES = 1
SERVER_EXPORT_NAME = "label_studio_export.json"  # the export read from the server, in the output folder
# Errors of a full, read-only or forbidden output folder: the user's to fix, said in one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


@dataclass
class AnnotationSource:
    """Where a Label Studio project's annotations and audio are, and how its results are read: shared by
    prepare_data.py and `evaluate --annotations/--project`."""

    text_from_name: str | None = field(
        default=None,
        metadata={"help": "TextArea of the transcription (default: the label config's or the export's)."},
    )
    label_from_name: str | None = field(
        default=None,
        metadata={"help": "Labels control of the regions (default: the one the label config or export has)."},
    )
    exclude_labels: list[str] = field(
        default_factory=lambda: ["noise"],
        metadata={"help": "Regions with one of these labels add no text (case-insensitive)."},
    )
    audio_key: str | None = field(
        default=None,
        metadata={"help": "Task data key of the audio (default: the label config's $key, or the export's)."},
    )
    label_config: str | None = field(
        default=None,
        metadata={"help": "The project's labelling config (XML file): names the controls (else the export)."},
    )
    local_files_root: str | None = field(
        default=None,
        metadata={"help": "Root of /data/local-files/?d=... URIs (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)."},
    )
    upload_root: str | None = field(
        default=None,
        metadata={"help": "Root of /data/upload/... URIs (Label Studio's <data-dir>/media/upload)."},
    )
    allowed_buckets: list[str] = field(
        default_factory=list, metadata={"help": "If set, audio on any other bucket is refused."}
    )
    allowed_hosts: list[str] = field(
        default_factory=list, metadata={"help": "If set, http(s) audio on any other host is refused."}
    )
    label_studio_url: str | None = field(
        default=None,
        metadata={
            "help": "Label Studio server (or LABEL_STUDIO_URL; key: LABEL_STUDIO_API_KEY): with --project, "
            "the export and config come from it; /data/... audio without a root comes through it."
        },
    )
    project: int | None = field(
        default=None,
        metadata={"help": "Label Studio project id: read straight from the server (not --annotations)."},
    )

    @property
    def control_names(self) -> ControlNames:
        return ControlNames(self.text_from_name, self.label_from_name, self.audio_key)

    def connect(self, environ: Mapping[str, str]) -> tuple[LabelStudioSettings | None, AudioAccess]:
        """The server (if one is named) and the way to the audio, from these flags and the environment:
        the one place they are read, so that every command reaches a recording alike."""
        s3 = S3Access(S3Settings.from_env(environ))
        server = LabelStudioSettings.from_env(self.label_studio_url, environ)
        if self.project is not None and server is None:
            raise ConfigError("--project needs --label-studio-url (or LABEL_STUDIO_URL)")
        access = AudioAccess(
            s3,
            server_http(server, s3.settings, self.allowed_hosts),
            local_files_root=Path(self.local_files_root) if self.local_files_root else None,
            upload_root=Path(self.upload_root) if self.upload_root else None,
            allowed_buckets=tuple(self.allowed_buckets),
            label_studio_url=server.url if server else None,
        )
        return server, access


# --help: AnnotationSource's fields by what they name, grouped alike in every command that reads a project.
SERVER_FIELDS = ("label_studio_url", "project")
LABELLING_FIELDS = ("label_config", "text_from_name", "label_from_name", "audio_key", "exclude_labels")
AUDIO_SOURCE_FIELDS = ("local_files_root", "upload_root", "allowed_buckets", "allowed_hosts")


DEFAULT_ANNOTATIONS = "annotations.json"


@dataclass
class PrepareArguments(AnnotationSource):
    """Settings of prepare_data.py (flags, or keys of a YAML/JSON config file)."""

    annotations: str = field(
        default=DEFAULT_ANNOTATIONS,
        metadata={"help": "Label Studio full JSON export: a local path or s3://bucket/key.json"},
    )
    output_dir: str = field(default="processed_data", metadata={"help": "Where the feature cache goes."})
    model: str = field(
        default="./model", metadata={"help": "Whisper directory (tokenizer, feature extractor)."}
    )
    language: str = field(default="vi", metadata={"help": "Language token of the labels."})
    task: str = field(default="transcribe", metadata={"help": "transcribe or translate."})
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of recordings held out for validation (1: all, an evaluation-only cache)."},
    )
    seed: int = field(default=42, metadata={"help": "Seeds the split and the augmentation."})
    augment_copies: int = field(default=1, metadata={"help": "Augmented variants per training window."})
    num_workers: int = field(default=0, metadata={"help": "Feature worker processes (0 = CPU cores)."})
    download_concurrency: int = field(default=16, metadata={"help": "Concurrent audio downloads."})
    max_window_seconds: float = field(default=CHUNK_SECONDS, metadata={"help": "Longest window (<= 30 s)."})
    max_window_regions: int | None = field(
        default=None,
        metadata={
            "help": "Most speech regions packed into one window (default: as many as fit; 1: each region "
            "alone, how evaluate scores held-out utterances)."
        },
    )
    noise_examples: bool = field(
        default=True,
        metadata={
            "help": "Excluded (noise) regions that overlap no speech become examples whose target is "
            "Whisper's no-speech token, so that the model learns not to transcribe them."
        },
    )
    max_skip_fraction: float = field(
        default=0.2, metadata={"help": "Fail when more than this share of recordings cannot be used."}
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even when the cache is current."})

    def validate(self) -> None:
        if self.project is not None and self.annotations != DEFAULT_ANNOTATIONS:
            raise ConfigError(f"--project and --annotations {self.annotations} name two exports: give one")
        if not 0 <= self.val_fraction <= 1:
            raise ConfigError(f"--val-fraction must be in [0, 1], got {self.val_fraction}")
        if self.augment_copies < 0:
            raise ConfigError(f"--augment-copies must be >= 0, got {self.augment_copies}")
        if self.max_window_regions is not None and self.max_window_regions < 1:
            raise ConfigError(f"--max-window-regions must be >= 1, got {self.max_window_regions}")
        if not 0 < self.max_window_seconds <= CHUNK_SECONDS:
            raise ConfigError(
                f"--max-window-seconds must be in (0, {CHUNK_SECONDS}], got {self.max_window_seconds}"
            )
        if self.task not in ("transcribe", "translate"):
            raise ConfigError(f"--task must be transcribe or translate, got {self.task!r}")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"--max-skip-fraction must be in [0, 1], got {self.max_skip_fraction}")


HELP_GROUPS = {
    "annotations": ("annotations", *SERVER_FIELDS, *LABELLING_FIELDS),
    "audio": AUDIO_SOURCE_FIELDS,
    "segmentation and split": (
        "max_window_seconds",
        "max_window_regions",
        "noise_examples",
        "val_fraction",
        "seed",
    ),
    "augmentation": ("augment_copies", *(f.name for f in fields(AugmentationSettings))),
    "features and cache": ("model", "language", "task", "output_dir", "force", "max_skip_fraction"),
    "workers": ("num_workers", "download_concurrency"),
}


class TooManyFailures(PipelineError):
    """More recordings failed than --max-skip-fraction allows: likely a misconfiguration."""

    exit_code = EXIT_TOO_MANY_FAILURES


@dataclass(frozen=True)
class RecordingResult:
    """One recording's part of the build, whichever way it was obtained."""

    meta: Mapping[str, Any]  # split, rows, skips, audio_seconds, failed (stored in recordings.json)
    origin: str  # "computed", "resumed" (staged shard of an interrupted run) or "reused" (previous cache)
    source: RowSource | None  # None when the download failed transiently: retried by the next run


@dataclass
class PrepareSummary:
    report: dict[str, Any]
    current: bool  # True when the cache was already current and nothing was rebuilt


@dataclass(frozen=True)
class PrepareRun:
    """One run of the stage: its settings and everything the fingerprint covers, known before any audio
    is read."""

    args: PrepareArguments
    augmentation: AugmentationSettings
    layout: CacheLayout
    model_dir: Path
    access: AudioAccess
    settings: Mapping[str, Any]  # every setting that shapes the cache
    inputs: _Inputs
    fingerprint: str
    started: float  # time.perf_counter() at the start


@dataclass(frozen=True)
class WorkPlan:
    """What the build has to make: each recording's work, and what was left out before any audio."""

    works: dict[str, RecordingWork]  # audio URI -> its windows, split and key, in the build's order
    skips: list[Skip]  # regions and recordings left out while planning
    unavailable: int  # recordings with windows that cannot be read
    recordings_total: int  # recordings with at least one window

    def recordings(self, results: Mapping[str, RecordingResult]) -> dict[str, dict[str, Any]]:
        """recordings.json: each recording with rows in the new cache, by its key."""
        return {self.works[uri].key: dict(result.meta) for uri, result in results.items() if result.source}


@dataclass(frozen=True)
class Failures:
    """Everything left out, and how many recordings could not be used at all."""

    skips: list[Skip]
    by_reason: dict[str, int]
    failed: int


# --- the stage --------------------------------------------------------------------------------------


def run_prepare(
    args: PrepareArguments,
    augmentation: AugmentationSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> PrepareSummary:
    """Build (or confirm) the cache; raises PipelineError subclasses for what the user must fix."""
    args.validate()
    check_writable(args.output_dir, "--output-dir")
    augmentation = augmentation or AugmentationSettings()
    started = time.perf_counter()
    layout = CacheLayout(Path(args.output_dir))
    model_dir = Path(args.model)
    _check_model_dir(model_dir)
    server, access = args.connect(os.environ if environ is None else environ)
    with ExitStack() as writing:
        with _collector_paused():  # a rerun that finds its cache current ends in here
            scanned = _scan_ahead(read_report(layout.root), access.s3, args.allowed_buckets)
            processor = processor_fingerprint(model_dir)
            inputs = _gather_inputs(args, access, server, scanned)
            settings = {
                "format_version": FORMAT_VERSION,
                "language": args.language,
                "task": args.task,
                "seed": args.seed,
                "val_fraction": args.val_fraction,
                "augment_copies": args.augment_copies,
                "augmentation": asdict(augmentation),
                "annotation": asdict(inputs.controls.settings),
                "max_window_seconds": args.max_window_seconds,
                "max_window_regions": args.max_window_regions,
                "noise_examples": args.noise_examples,
                "processor": processor,
            }
            # Everything that shapes the cache, known before the tokenizer loads: a current cache stops here.
            fingerprint = stable_hash(
                {
                    "settings": settings,
                    "annotations": inputs.annotations_sha256,
                    "recordings": inputs.infos,
                    "unavailable": sorted((skip.reason, skip.audio_uri) for skip in inputs.unavailable),
                }
            )
            with _cache_write_errors(layout.root):
                writing.enter_context(exclusive_lock(layout.root))
                if args.project is not None:  # what was read, kept beside the cache it made
                    atomic_write_bytes(layout.root / SERVER_EXPORT_NAME, inputs.raw)
            previous_report = read_report(layout.root)
            if not args.force and previous_report and previous_report.get("fingerprint") == fingerprint:
                # shards a build left when it was stopped after its report (they are all in the cache)
                shutil.rmtree(layout.staging, ignore_errors=True)
                return PrepareSummary(previous_report, current=True)
        run = PrepareRun(
            args, augmentation, layout, model_dir, access, settings, inputs, fingerprint, started
        )
        with _cache_write_errors(layout.root):
            report = _build(run)
    return PrepareSummary(dict(report), current=False)


@contextmanager
def _cache_write_errors(root: Path) -> Iterator[None]:
    """A failure to write the cache (no space, no permission) as what the user must fix."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise CacheError(
            f"cannot write the cache in {root}: {error.strerror} ({error.filename or 'a cache file'})"
            "; the previous cache is untouched: free space or fix the folder's permissions, then rerun"
        ) from None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the inputs are identified. Making the S3 client and parsing the
    export make enough objects to start full collections, each walking every object the imports made
    (with datasets and transformers loaded, each costs about as much as the rest of a rerun that finds its
    cache current) to free next to nothing: reference counting frees what this
    phase drops, and the collector, back on, takes the few cycles it leaves."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


@dataclass(frozen=True)
class _Inputs:
    """The export and the identity of every recording it names: all the fingerprint needs."""

    annotations_sha256: str
    annotations: str  # where the export came from: its path, s3:// URI or Label Studio project
    raw: bytes = field(repr=False)  # the export's bytes
    controls: ResolvedControls  # the control names read, and where each was found
    parsed: ParsedExport
    refs: dict[str, AudioRef]  # audio URI -> where it is, for recordings with transcribed speech
    infos: dict[str, dict[str, Any]]  # audio URI -> size and ETag (or mtime)
    unresolved: list[Skip]  # URIs that name no place we may read from; noise alone, noise examples off
    unavailable: list[Skip]  # recordings that cannot be read (missing, forbidden, failing)


def _gather_inputs(
    args: PrepareArguments,
    access: AudioAccess,
    server: LabelStudioSettings | None,
    scanned: Callable[[], dict[Listing, Scan]],
) -> _Inputs:
    """The export (a file, an S3 object, or a server's project) parsed with the controls it names, then
    where each recording is and its identity."""
    label_config = read_label_config(args.label_config) if args.label_config else None
    if args.project is not None:
        client = LabelStudioClient(server, access.http)
        source = client.project_name(args.project)
        if label_config is None:
            label_config = parse_label_config(client.label_config(args.project), source=f"{source}'s config")
        raw = client.export(args.project)
    else:
        source, raw = args.annotations, read_annotations(args.annotations, access.s3)
    controls, parsed = parse_annotations(raw, args, label_config, source=source)
    return _identify(args, access, source, raw, controls, parsed, scanned)


def parse_annotations(
    raw: bytes, args: PrepareArguments, label_config: LabelConfig | None = None, *, source: str | None = None
) -> tuple[ResolvedControls, ParsedExport]:
    """The export's tasks, read with the controls the flags, the labelling config or the export name."""
    document = load_export(raw, source=source or args.annotations)
    controls = resolve_controls(document, args.control_names, args.exclude_labels, label_config)
    return controls, parse_export(document, controls.settings)


def read_label_config_xml(location: str) -> str:
    """The --label-config file's text, or one line saying why it cannot be read."""
    try:
        return Path(location).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read --label-config {location}: {error}") from None


def read_label_config(location: str) -> LabelConfig:
    return parse_label_config(read_label_config_xml(location), source=f"--label-config {location}")


def _scan_ahead(
    previous_report: Mapping | None, s3: S3Access, allowed_buckets: Sequence[str]
) -> Callable[[], dict[Listing, Scan]]:
    """On a rerun, the bucket listings of the previous run (in buckets still allowed), scanned by a thread
    while this one hashes the model's processor files and parses the export: S3's answer to them is most
    of what a rerun that finds its cache current waits for. Returns how to wait for the scans; stat_all
    uses those that cover the listings the export needs.

    The client is made here, and this thread waits until the first listing request has left: Python runs
    one thread at a time, and a thread started beside the parsing would take turns with it, sending its
    request later. What should run alongside the parsing is S3 answering. The thread is a daemon:
    an error in the export is reported without waiting for S3."""
    plans = [
        Listing(**plan)
        for plan in (previous_report or {}).get("listings", [])
        if not allowed_buckets or plan["bucket"] in allowed_buckets
    ]
    try:
        client = s3.client() if plans else None
    except PipelineError:  # said where the export needs S3, if it does
        client = None
    if client is None:
        return dict
    scans: Future[dict[Listing, Scan]] = Future()
    asked = threading.Event()

    def request_sent(**_) -> None:  # a botocore before-send handler: None lets the request go
        asked.set()

    def scan_all() -> None:
        try:
            scans.set_result({plan: scan(client, plan) for plan in plans})
        except BaseException as error:
            scans.set_exception(error)
        finally:
            asked.set()

    client.meta.events.register("before-send.s3.ListObjectsV2", request_sent, unique_id="scan-ahead")
    threading.Thread(target=scan_all, name="scan-ahead", daemon=True).start()
    asked.wait()
    return scans.result


def _identify(
    args: PrepareArguments,
    access: AudioAccess,
    source: str,
    raw: bytes,
    controls: ResolvedControls,
    parsed: ParsedExport,
    scanned: Callable[[], dict[Listing, Scan]],
) -> _Inputs:
    """Where each recording with transcribed speech is, and its identity (size and ETag, or mtime)."""
    wanted = {RegionKind.SPEECH, *([RegionKind.EXCLUDED] if args.noise_examples else [])}
    refs: dict[str, AudioRef] = {}
    task_of: dict[str, str] = {}
    unresolved: list[Skip] = []
    for task in parsed.tasks:
        if not any(region.kind in wanted for region in task.regions):  # noise alone, noise examples off
            unresolved.append(Skip("no_transcribed_speech", task.task_id, task.audio_uri))
            continue
        if task.audio_uri in refs:
            continue
        try:
            refs[task.audio_uri] = access.resolve(task.location)
            task_of[task.audio_uri] = task.task_id
        except UnresolvableAudioError as error:
            unresolved.append(Skip(error.reason, task.task_id, task.audio_uri, str(error)))
    buckets = sorted({ref.bucket for ref in refs.values() if ref.kind == "s3"})
    scans = scanned()
    listed = {plan.bucket for plan, done in scans.items() if done.complete}  # they have answered
    if unasked := [bucket for bucket in buckets if bucket not in listed]:
        preflight(access.s3.client(), unasked)
    client = access.s3.client() if buckets else None
    infos: dict[str, dict[str, Any]] = {}
    unavailable: list[Skip] = []
    stats = stat_all(list(refs.values()), client, args.download_concurrency, scans, access.http)
    for uri, info in sorted(stats.items()):
        if isinstance(info, AudioSourceError):
            unavailable.append(Skip(info.reason, task_of[uri], uri, str(info)))
        else:
            infos[uri] = asdict(info)
    return _Inputs(
        hashlib.sha256(raw).hexdigest(), source, raw, controls, parsed, refs, infos, unresolved, unavailable
    )


def _build(run: PrepareRun) -> Mapping[str, Any]:
    """Plan windows and splits, compute what neither staged shards nor the previous cache hold, write the
    new cache as recordings finish, swap it in."""
    worker_context = start_worker_server()  # started by prepare_data.py already, unless called as a library
    featurizer = LogMelFeaturizer.from_pretrained(run.model_dir)  # another log-mel is refused before any work
    store = ShardStore(run.layout.staging)
    setup = WorkerSetup(featurizer, run.augmentation, run.args.seed, store.directory)
    with CacheBuilder(run.layout, featurizer.n_mels) as cache:
        with feature_workers(worker_count(run.args.num_workers), setup, worker_context) as workers:
            plan = _plan(run)
            results = _build_recordings(run, plan, store, workers, cache)
        failures = _check_failures(run.args, plan, results)
        cache_bytes = cache.close_splits(plan.recordings(results))
        elapsed = time.perf_counter() - run.started
        report = build_report(run, plan, results, failures, elapsed=elapsed, cache_bytes=cache_bytes)
        cache.swap_in(report)
    store.clear()
    return report


def _plan(run: PrepareRun) -> WorkPlan:
    """Each readable recording's windows (the tokenizer loads here: labels bound a window), its split,
    and its work keyed by what shapes its rows."""
    encoder = LabelEncoder.from_pretrained(run.model_dir, run.args.language, run.args.task)
    windows_by_uri, window_skips = _plan_windows(run.inputs, encoder, run.args)
    utterances_by_uri = _utterances(run.inputs.parsed.tasks)
    unavailable = [skip for skip in run.inputs.unavailable if skip.audio_uri in windows_by_uri]
    infos = {uri: info for uri, info in run.inputs.infos.items() if uri in windows_by_uri}
    splits = assign_splits(infos, seed=run.args.seed, val_fraction=run.args.val_fraction)
    works = {
        uri: _recording_work(
            uri,
            splits[uri],
            windows_by_uri[uri],
            infos[uri],
            run.settings,
            run.args,
            encoder.timestamp_ids,
            utterances_by_uri[uri] if splits[uri] == VALIDATION else None,
        )
        for uri in sorted(infos)
    }
    skips = [*run.inputs.parsed.skips, *run.inputs.unresolved, *window_skips, *unavailable]
    return WorkPlan(works, skips, len(unavailable), len(windows_by_uri))


def _check_failures(
    args: PrepareArguments, plan: WorkPlan, results: Mapping[str, RecordingResult]
) -> Failures:
    """Every skip of the run; too many failed recordings, or no rows at all, stop it before the swap."""
    skips = list(plan.skips)
    for result in results.values():
        skips.extend(Skip(**skip) for skip in result.meta["skips"])
    failed = plan.unavailable + sum(1 for result in results.values() if result.meta["failed"])
    by_reason = dict(sorted(Counter(skip.reason for skip in skips).items()))
    if plan.recordings_total and failed / plan.recordings_total > args.max_skip_fraction:
        raise TooManyFailures(
            f"{failed} of {plan.recordings_total} recordings could not be used, more than "
            f"--max-skip-fraction {args.max_skip_fraction} (skips by reason: {by_reason}); "
            "the previous cache is untouched"
        )
    if not any(result.meta["rows"] for result in results.values()):
        raise TooManyFailures(f"no usable windows, the cache would be empty (skips by reason: {by_reason})")
    return Failures(skips, by_reason, failed)


def _plan_windows(
    inputs: _Inputs, encoder: LabelEncoder, args: PrepareArguments
) -> tuple[dict[str, list[Window]], list[Skip]]:
    """Each readable recording's windows (its tasks' regions packed into <= --max-window-seconds and 448
    tokens, and its no-speech windows), and the regions that fit no window."""
    windows_by_uri: dict[str, list[Window]] = {}
    skips: list[Skip] = []
    for task in inputs.parsed.tasks:
        if task.audio_uri in inputs.refs:
            windows, window_skips = pack_windows(
                task,
                encoder,
                max_seconds=args.max_window_seconds,
                max_regions=args.max_window_regions,
                no_speech=args.noise_examples,
            )
            skips.extend(window_skips)
            if windows:
                windows_by_uri.setdefault(task.audio_uri, []).extend(windows)
    return windows_by_uri, skips


def _utterances(tasks: Sequence[Task]) -> dict[str, tuple[Utterance, ...] | None]:
    """Each recording's transcribed speech in time order, or None where some of its speech has no text (a
    whole transcript could not be scored against it)."""
    utterances: dict[str, tuple[Utterance, ...] | None] = {}
    for task in tasks:
        kinds = {region.kind for region in task.regions}
        spoken = tuple(
            Utterance(region.start, region.end, region.text)
            for region in task.regions
            if region.kind is RegionKind.SPEECH
        )
        known = utterances.get(task.audio_uri, ())
        complete = RegionKind.UNTRANSCRIBED not in kinds and known is not None
        utterances[task.audio_uri] = tuple(sorted(known + spoken)) if complete else None
    return utterances


def _build_recordings(
    run: PrepareRun,
    plan: WorkPlan,
    store: ShardStore,
    workers: ProcessPoolExecutor,
    cache: CacheBuilder,
) -> dict[str, RecordingResult]:
    """Each recording from a staged shard, the previous cache, or computed now (in that order). Its rows
    go into the cache in the order of the plan as soon as it and every recording before it are done."""
    results: dict[str, RecordingResult] = {}
    order = iter(plan.works)
    upcoming = next(order, None)

    def done(uri: str, result: RecordingResult) -> None:
        nonlocal upcoming
        results[uri] = result
        while upcoming in results:
            if results[upcoming].source is not None:
                cache.append(results[upcoming].source)
            upcoming = next(order, None)

    previous: Mapping[str, PreviousRecording] = {} if run.args.force else previous_recordings(run.layout.root)
    pending: list[RecordingWork] = []
    for uri, work in plan.works.items():
        shard = store.load(work.key)
        if shard is not None:
            path = store.arrow_path(work.key) if shard.rows else None
            done(uri, RecordingResult(shard.meta, "resumed", RowSource(work.split, shard=path)))
        elif work.key in previous:
            old = previous[work.key]
            done(
                uri, RecordingResult(old.meta, "reused", RowSource(work.split, previous_indices=old.indices))
            )
        else:
            pending.append(work)
    if pending:
        _compute(run, pending, store, workers, done)
    return {uri: results[uri] for uri in plan.works}


def _compute(
    run: PrepareRun,
    pending: Sequence[RecordingWork],
    store: ShardStore,
    workers: ProcessPoolExecutor,
    done: Callable[[str, RecordingResult], None],
) -> None:
    """The pending recordings through the pool; each one's result is staged and handed to `done` as it
    comes, under a progress bar in audio-seconds."""
    refs = run.inputs.refs
    sizes = {work.audio_uri: int(run.inputs.infos[work.audio_uri]["size"]) for work in pending}
    concurrency = max(1, run.args.download_concurrency)
    outcomes = fetch_and_process(
        pending,
        refs,
        sizes,
        workers=workers,
        in_flight=concurrency + 2 * worker_count(run.args.num_workers),
        download_concurrency=concurrency,
        access=run.access,
    )
    with _RecordingProgress(pending) as progress:
        for work, outcome in outcomes:
            done(work.audio_uri, _staged_result(store, work, outcome))
            progress.advance(work)


def _staged_result(
    store: ShardStore, work: RecordingWork, outcome: RecordingOutcome | AudioSourceError
) -> RecordingResult:
    """A computed recording's meta committed beside its shard; a failed download is recorded as failed,
    with no rows to append (the next run retries it)."""
    if isinstance(outcome, AudioSourceError):
        skip = Skip(outcome.reason, work.windows[0].task_id, work.audio_uri, str(outcome))
        meta = recording_meta(work, RecordingOutcome(0, 0, 0, [skip], 0.0, failed=True))
        return RecordingResult(meta, "computed", None)
    shard = store.commit(work.key, recording_meta(work, outcome))
    path = store.arrow_path(work.key) if shard.rows else None
    return RecordingResult(shard.meta, "computed", RowSource(work.split, path))


class _RecordingProgress:
    """A progress bar in audio-seconds, labelled with the recordings done."""

    def __init__(self, pending: Sequence[RecordingWork]) -> None:
        self._total = len(pending)
        self._count = 0
        self._seconds = sum(window.duration for work in pending for window in work.windows)
        self._bar = tqdm(
            total=self._seconds, unit="audio-s", unit_scale=True, desc=f"recordings 0/{self._total}"
        )

    def __enter__(self) -> _RecordingProgress:
        return self

    def __exit__(self, *exception) -> None:
        self._bar.close()

    def advance(self, work: RecordingWork) -> None:
        self._count += 1
        # drawn by update, at most every 0.1 s (each setter would redraw the bar at once)
        self._bar.set_description(f"recordings {self._count}/{self._total}", refresh=False)
        hours = f"{self._bar.n / 3600:.2f} of {self._seconds / 3600:.2f} audio-h"
        self._bar.set_postfix_str(hours, refresh=False)
        seconds = sum(window.duration for window in work.windows)
        self._bar.update(min(seconds, self._bar.total - self._bar.n))  # float sums may overshoot


def _recording_work(
    uri: str,
    split: str,
    windows: Sequence[Window],
    info: Mapping[str, Any],
    settings: Mapping[str, Any],
    args: PrepareArguments,
    timestamp_ids: tuple[int, ...],
    utterances: tuple[Utterance, ...] | None,
) -> RecordingWork:
    """One recording's work, keyed by exactly what shapes its rows: a changed setting that does not touch
    it (augmentation for a validation recording, another recording's audio) leaves it reusable."""
    copies = args.augment_copies if split == TRAIN else 0
    key = stable_hash(
        {
            "format_version": settings["format_version"],
            "processor": settings["processor"],
            "object": info,
            "split": split,
            "windows": [vars(window) for window in windows],  # as asdict gives them, without its deep copies
            "copies": copies,
            "augmentation": {"settings": settings["augmentation"], "seed": args.seed} if copies else None,
            "utterances": utterances,
        }
    )
    return RecordingWork(key, uri, split, tuple(windows), copies, timestamp_ids, utterances)


def _check_model_dir(model_dir: Path) -> None:
    missing = [
        " or ".join(names)
        for names in (FEATURE_EXTRACTOR_FILES[::-1], ("tokenizer_config.json",))
        if not any((model_dir / name).is_file() for name in names)
    ]
    if missing:
        raise ModelError(
            f"--model {model_dir} is not a Whisper model directory (missing {', '.join(missing)}); build "
            "the demo's with `python -m whisper_pipeline.demo.pretrained --output model` or point --model at "
            "yours"
        )


def read_annotations(location: str, s3: S3Access) -> bytes:
    """The export's bytes from a local path or an s3:// URI."""
    if location.startswith("s3://"):
        ref = resolve_audio_uri(location, default_bucket=None, local_files_root=None)
        preflight(s3.client(), [ref.bucket])
        try:
            return read_bytes(ref, s3.client(), s3.stats)
        except AudioSourceError as error:
            raise ConfigError(f"cannot read --annotations {location}: {error}") from None
    path = Path(location)
    if not path.is_file():
        raise ConfigError(f"--annotations {location}: no such file")
    return path.read_bytes()


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    import sys

    load_env_file()
    types = (PrepareArguments, AugmentationSettings)
    parser = PipelineArgumentParser(
        types,
        prog=as_typed("whisper-prepare", "prepare_data.py"),
        description="Stage 1: a Label Studio export and its audio -> the feature cache train_model.py reads. "
        f"{CONFIG_NOTE} S3 access comes from the environment or .env (S3_*, AWS_*: see the README).",
        groups=HELP_GROUPS,
    )
    args, augmentation = parse_config(types, sys.argv[1:] if argv is None else argv, parser=parser)
    summary = run_prepare(args, augmentation)
    print(format_summary(summary))
    return 0
