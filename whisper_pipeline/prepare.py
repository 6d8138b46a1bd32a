"""Stage 1: Label Studio export + audio -> the feature cache (see cache.py for the layout).

Data flows one way: parse -> resolve and stat audio (a bucket listing) -> fingerprint (a current cache
stops here, before the tokenizer loads) -> plan windows and splits -> fetch (threads, one S3 client) ->
decode, cut, augment, featurize (worker processes, one BLAS thread each, see worker.py) -> per-recording
shards -> the new cache's splits, appended in order as recordings finish -> the swap. Memory stays flat:
at most a few recordings are in flight between the download threads and the workers.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import multiprocessing.context
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from whisper_pipeline import __version__
from whisper_pipeline.annotations import (
    AnnotationSettings,
    ParsedExport,
    RegionKind,
    Skip,
    load_export,
    parse_export,
)
from whisper_pipeline.audio import AugmentationSettings
from whisper_pipeline.audio_sources import (
    AudioRef,
    AudioSourceError,
    Listing,
    S3Settings,
    Scan,
    TransferStats,
    UnresolvableAudioError,
    listings,
    load_env_file,
    make_s3_client,
    preflight,
    read_bytes,
    resolve_audio_uri,
    scan,
    stat_all,
)
from whisper_pipeline.cache import (
    FORMAT_VERSION,
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
from whisper_pipeline.config import parse_config, to_plain_dict
from whisper_pipeline.constants import CHUNK_SECONDS
from whisper_pipeline.errors import CacheError, ConfigError, ModelError, PipelineError, exit_on_user_error
from whisper_pipeline.features import LabelEncoder, LogMelFeaturizer
from whisper_pipeline.segments import TRAIN, VALIDATION, Window, assign_splits, pack_windows
from whisper_pipeline.worker import (
    RecordingOutcome,
    RecordingWork,
    WorkerSetup,
    init_worker,
    process_recording,
)
from whisper_pipeline.worker_server import start_worker_server

EXIT_TOO_MANY_FAILURES = 1
IN_FLIGHT_BYTES = 256 * 2**20  # encoded audio downloaded and not yet featurized, at most (see _InFlight)
# Errors of a full, read-only or forbidden output folder: the user's to fix, said in one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


@dataclass
class PrepareArguments:
    """Settings of prepare_data.py (flags, or keys of a YAML/JSON config file)."""

    annotations: str = field(
        default="annotations.json",
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
    text_from_name: str = field(default="transcription", metadata={"help": "Per-region TextArea name."})
    label_from_name: str = field(default="label", metadata={"help": "Labels control name."})
    exclude_labels: list[str] = field(
        default_factory=lambda: ["noise"],
        metadata={"help": "Regions with one of these labels add no text (case-insensitive)."},
    )
    audio_key: str = field(default="audio", metadata={"help": "Task data key holding the audio URI."})
    local_files_root: str | None = field(
        default=None, metadata={"help": "Root for /data/local-files/?d=... and /data/upload/... URIs."}
    )
    allowed_buckets: list[str] = field(
        default_factory=list, metadata={"help": "If set, audio on any other bucket is refused."}
    )
    num_workers: int = field(default=0, metadata={"help": "Feature worker processes (0 = CPU cores)."})
    download_concurrency: int = field(default=16, metadata={"help": "Concurrent audio downloads."})
    max_window_seconds: float = field(default=CHUNK_SECONDS, metadata={"help": "Longest window (<= 30 s)."})
    max_skip_fraction: float = field(
        default=0.2, metadata={"help": "Fail when more than this share of recordings cannot be used."}
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even when the cache is current."})

    def validate(self) -> None:
        if not 0 <= self.val_fraction <= 1:
            raise ConfigError(f"--val-fraction must be in [0, 1], got {self.val_fraction}")
        if self.augment_copies < 0:
            raise ConfigError(f"--augment-copies must be >= 0, got {self.augment_copies}")
        if not 0 < self.max_window_seconds <= CHUNK_SECONDS:
            raise ConfigError(
                f"--max-window-seconds must be in (0, {CHUNK_SECONDS}], got {self.max_window_seconds}"
            )
        if self.task not in ("transcribe", "translate"):
            raise ConfigError(f"--task must be transcribe or translate, got {self.task!r}")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ConfigError(f"--max-skip-fraction must be in [0, 1], got {self.max_skip_fraction}")

    @property
    def annotation_settings(self) -> AnnotationSettings:
        return AnnotationSettings(
            text_from_name=self.text_from_name,
            label_from_name=self.label_from_name,
            exclude_labels=tuple(self.exclude_labels),
            audio_key=self.audio_key,
        )


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


# --- the stage --------------------------------------------------------------------------------------


def run_prepare(
    args: PrepareArguments, augmentation: AugmentationSettings, environ: Mapping[str, str] | None = None
) -> PrepareSummary:
    """Build (or confirm) the cache; raises PipelineError subclasses for what the user must fix."""
    args.validate()
    started = time.perf_counter()
    layout = CacheLayout(Path(args.output_dir))
    model_dir = Path(args.model)
    _check_model_dir(model_dir)
    s3 = _S3Access(S3Settings.from_env(os.environ if environ is None else environ))
    with ExitStack() as writing:
        with _collector_paused():  # a rerun that finds its cache current ends in here
            scanned = _scan_ahead(read_report(layout.root), s3, args.allowed_buckets)
            settings = {
                "format_version": FORMAT_VERSION,
                "language": args.language,
                "task": args.task,
                "seed": args.seed,
                "val_fraction": args.val_fraction,
                "augment_copies": args.augment_copies,
                "augmentation": asdict(augmentation),
                "annotation": asdict(args.annotation_settings),
                "max_window_seconds": args.max_window_seconds,
                "processor": processor_fingerprint(model_dir),
            }
            inputs = _gather_inputs(args, s3, scanned)
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
            previous_report = read_report(layout.root)
            if not args.force and previous_report and previous_report.get("fingerprint") == fingerprint:
                # shards a build left when it was stopped after its report (they are all in the cache)
                shutil.rmtree(layout.staging, ignore_errors=True)
                return PrepareSummary(previous_report, current=True)
        with _cache_write_errors(layout.root):
            report = _build(layout, inputs, settings, fingerprint, args, augmentation, model_dir, s3, started)
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
    (about 140,000 with datasets and transformers loaded: 0.1 to 0.15 s apiece, as much as the rest of a
    rerun that finds its cache current) to free next to nothing: reference counting frees what this
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
    parsed: ParsedExport
    refs: dict[str, AudioRef]  # audio URI -> where it is, for recordings with transcribed speech
    infos: dict[str, dict[str, Any]]  # audio URI -> size and ETag (or mtime)
    unresolved: list[Skip]  # URIs that name no place we may read from
    unavailable: list[Skip]  # recordings that cannot be read (missing, forbidden, failing)


def _gather_inputs(
    args: PrepareArguments, s3: _S3Access, scanned: Callable[[], dict[Listing, Scan]]
) -> _Inputs:
    raw = _read_annotations(args.annotations, s3)
    parsed = parse_export(load_export(raw, source=args.annotations), args.annotation_settings)
    return _identify(args, s3, raw, parsed, scanned)


def _scan_ahead(
    previous_report: Mapping | None, s3: _S3Access, allowed_buckets: Sequence[str]
) -> Callable[[], dict[Listing, Scan]]:
    """On a rerun, the bucket listings of the previous run (in buckets still allowed), scanned by a thread
    while this one hashes the model's processor files and parses the export: S3's answer to them is most
    of what a rerun that finds its cache current waits for. Returns how to wait for the scans; stat_all
    uses those that cover the listings the export needs.

    The client is made here, and this thread waits until the first listing request has left: Python runs
    one thread at a time, and a thread started beside the parsing would take turns with it, sending its
    request 0.15 s later. What should run alongside the parsing is S3 answering. The thread is a daemon:
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
    s3: _S3Access,
    raw: bytes,
    parsed: ParsedExport,
    scanned: Callable[[], dict[Listing, Scan]],
) -> _Inputs:
    """Where each recording with transcribed speech is, and its identity (size and ETag, or mtime)."""
    refs: dict[str, AudioRef] = {}
    task_of: dict[str, str] = {}
    unresolved: list[Skip] = []
    root = Path(args.local_files_root) if args.local_files_root else None
    for task in parsed.tasks:
        if task.audio_uri in refs or not any(region.kind is RegionKind.SPEECH for region in task.regions):
            continue
        try:
            refs[task.audio_uri] = resolve_audio_uri(
                task.audio_uri,
                default_bucket=s3.settings.bucket_name,
                local_files_root=root,
                allowed_buckets=args.allowed_buckets or None,
            )
            task_of[task.audio_uri] = task.task_id
        except UnresolvableAudioError as error:
            unresolved.append(Skip(error.reason, task.task_id, task.audio_uri, str(error)))
    buckets = sorted({ref.bucket for ref in refs.values() if ref.kind == "s3"})
    scans = scanned()
    listed = {plan.bucket for plan, done in scans.items() if done.complete}  # they have answered
    if unasked := [bucket for bucket in buckets if bucket not in listed]:
        preflight(s3.client(), unasked)
    client = s3.client() if buckets else None
    infos: dict[str, dict[str, Any]] = {}
    unavailable: list[Skip] = []
    stats = stat_all(list(refs.values()), client, args.download_concurrency, scans)
    for uri, info in sorted(stats.items()):
        if isinstance(info, AudioSourceError):
            unavailable.append(Skip(info.reason, task_of[uri], uri, str(info)))
        else:
            infos[uri] = asdict(info)
    return _Inputs(hashlib.sha256(raw).hexdigest(), parsed, refs, infos, unresolved, unavailable)


def _build(
    layout: CacheLayout,
    inputs: _Inputs,
    settings: Mapping[str, Any],
    fingerprint: str,
    args: PrepareArguments,
    augmentation: AugmentationSettings,
    model_dir: Path,
    s3: _S3Access,
    started: float,
) -> Mapping[str, Any]:
    """Plan windows and splits, compute what neither staged shards nor the previous cache hold, write the
    new cache as recordings finish, swap it in."""
    worker_context = start_worker_server()  # started by prepare_data.py already, unless called as a library
    featurizer = LogMelFeaturizer.from_pretrained(model_dir)  # another log-mel is refused before any work
    store = ShardStore(layout.staging)
    setup = WorkerSetup(featurizer, augmentation, args.seed, store.directory)
    with CacheBuilder(layout, featurizer.n_mels) as cache:
        with _feature_workers(args, setup, worker_context) as workers:
            encoder = LabelEncoder.from_pretrained(model_dir, args.language, args.task)
            windows_by_uri, window_skips = _plan_windows(inputs, encoder, args.max_window_seconds)
            unavailable = [skip for skip in inputs.unavailable if skip.audio_uri in windows_by_uri]
            skips = [*inputs.parsed.skips, *inputs.unresolved, *window_skips, *unavailable]
            infos = {uri: info for uri, info in inputs.infos.items() if uri in windows_by_uri}
            splits = assign_splits(infos, seed=args.seed, val_fraction=args.val_fraction)
            works = {
                uri: _recording_work(uri, splits[uri], windows_by_uri[uri], infos[uri], settings, args)
                for uri in sorted(infos)
            }
            previous = {} if args.force else previous_recordings(layout.root)
            sizes = {uri: int(info["size"]) for uri, info in infos.items()}
            results = _build_recordings(works, inputs.refs, sizes, store, previous, args, workers, s3, cache)
        for result in results.values():
            skips.extend(Skip(**skip) for skip in result.meta["skips"])
        recordings_total = len(windows_by_uri)
        failed = len(unavailable) + sum(1 for result in results.values() if result.meta["failed"])
        by_reason = dict(sorted(Counter(skip.reason for skip in skips).items()))
        if recordings_total and failed / recordings_total > args.max_skip_fraction:
            raise TooManyFailures(
                f"{failed} of {recordings_total} recordings could not be used, more than "
                f"--max-skip-fraction {args.max_skip_fraction} (skips by reason: {by_reason}); "
                "the previous cache is untouched"
            )
        if not any(result.meta["rows"] for result in results.values()):
            raise TooManyFailures(
                f"no usable windows, the cache would be empty (skips by reason: {by_reason})"
            )

        def make_report(cache_bytes: int) -> dict[str, Any]:
            return _report(
                fingerprint, inputs, works, results, skips, by_reason, settings, args, augmentation,
                model_dir, s3,
                recordings_total=recordings_total,
                failed=failed,
                elapsed=time.perf_counter() - started,
                cache_bytes=cache_bytes,
            )  # fmt: skip

        recordings = {works[uri].key: dict(result.meta) for uri, result in results.items() if result.source}
        report = cache.commit(recordings, make_report)
    store.clear()
    return report


def _plan_windows(
    inputs: _Inputs, encoder: LabelEncoder, max_seconds: float
) -> tuple[dict[str, list[Window]], list[Skip]]:
    """Each readable recording's windows (its tasks' regions packed into <= max_seconds and 448 tokens),
    and the regions that fit no window."""
    windows_by_uri: dict[str, list[Window]] = {}
    skips: list[Skip] = []
    for task in inputs.parsed.tasks:
        if task.audio_uri in inputs.refs:
            windows, window_skips = pack_windows(task, encoder.encode, max_seconds=max_seconds)
            skips.extend(window_skips)
            if windows:
                windows_by_uri.setdefault(task.audio_uri, []).extend(windows)
    return windows_by_uri, skips


def _report(
    fingerprint: str,
    inputs: _Inputs,
    works: Mapping[str, RecordingWork],
    results: Mapping[str, RecordingResult],
    skips: Sequence[Skip],
    by_reason: Mapping[str, int],
    settings: Mapping[str, Any],
    args: PrepareArguments,
    augmentation: AugmentationSettings,
    model_dir: Path,
    s3: _S3Access,
    *,
    recordings_total: int,
    failed: int,
    elapsed: float,
    cache_bytes: int,
) -> dict[str, Any]:
    """prepare_report.json: what was built from what, what was left out and why, and how fast."""

    def per_split(field_name: str) -> dict[str, Any]:
        return {
            split: sum(r.meta[field_name] for r in results.values() if r.meta["split"] == split)
            for split in (TRAIN, VALIDATION)
        }

    audio_seconds = {split: round(seconds, 3) for split, seconds in per_split("audio_seconds").items()}
    origins = Counter(result.origin for result in results.values())
    to_retry = sum(1 for result in results.values() if result.source is None)
    return {
        "format_version": FORMAT_VERSION,
        # A build with downloads to retry is complete but not current: the next run retries them.
        "fingerprint": fingerprint if not to_retry else f"retry-needed:{fingerprint}",
        "processor_fingerprint": settings["processor"],
        "package_version": __version__,
        "model": str(model_dir),
        "annotations": args.annotations,
        "settings": {**to_plain_dict(args), "augmentation": asdict(augmentation)},
        "tasks": {
            "read": inputs.parsed.tasks_read,
            "used": len({w.task_id for work in works.values() for w in work.windows}),
        },
        "regions": dict(inputs.parsed.regions_by_kind),
        "recordings": {
            "total": recordings_total,
            "computed": origins["computed"],
            "resumed": origins["resumed"],
            "reused": origins["reused"],
            "failed": failed,
            "to_retry": to_retry,
        },
        "windows": per_split("windows"),
        "examples": per_split("rows"),
        "augmented_examples": sum(r.meta["augmented_rows"] for r in results.values()),
        "transfers": {"objects": s3.stats.objects, "bytes": s3.stats.bytes, "retries": s3.stats.retries},
        "listings": [asdict(listing) for listing in listings(list(inputs.refs.values()))],
        "audio_seconds": audio_seconds,
        "skips": {
            "by_reason": dict(by_reason),
            "items": [asdict(skip) for skip in skips],
        },
        "elapsed_seconds": round(elapsed, 3),
        "audio_seconds_per_second": round(sum(audio_seconds.values()) / elapsed, 2),
        "cache_bytes": cache_bytes,
    }


def _recording_work(
    uri: str,
    split: str,
    windows: Sequence[Window],
    info: Mapping[str, Any],
    settings: Mapping[str, Any],
    args: PrepareArguments,
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
            "windows": [vars(window) for window in windows],  # as asdict gives them, 30 times faster
            "copies": copies,
            "augmentation": {"settings": settings["augmentation"], "seed": args.seed} if copies else None,
        }
    )
    return RecordingWork(key=key, audio_uri=uri, split=split, windows=tuple(windows), copies=copies)


def _check_model_dir(model_dir: Path) -> None:
    missing = [
        name
        for name in ("preprocessor_config.json", "tokenizer_config.json")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise ModelError(
            f"--model {model_dir} is not a Whisper model directory (missing {', '.join(missing)}); build the "
            "demo's with `python -m whisper_pipeline.pretrained --output model` or point --model at yours"
        )


class _S3Access:
    """The S3 settings and, created on first use, this process's one client (thread-safe)."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.stats = TransferStats()
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(self.settings)
            return self._client


def _read_annotations(location: str, s3: _S3Access) -> bytes:
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


def _meta_of(work: RecordingWork, outcome: RecordingOutcome) -> dict[str, Any]:
    return {
        "split": work.split,
        "rows": outcome.rows,
        "windows": outcome.windows,
        "augmented_rows": outcome.augmented_rows,
        "audio_seconds": round(outcome.audio_seconds, 3),
        "failed": outcome.failed,
        "skips": [asdict(skip) for skip in outcome.skips],
    }


def _build_recordings(
    works: Mapping[str, RecordingWork],
    refs: Mapping[str, AudioRef],
    sizes: Mapping[str, int],
    store: ShardStore,
    previous: Mapping[str, PreviousRecording],
    args: PrepareArguments,
    workers: ProcessPoolExecutor,
    s3: _S3Access,
    cache: CacheBuilder,
) -> dict[str, RecordingResult]:
    """Each recording from a staged shard, the previous cache, or computed now (in that order). Its rows
    go into the cache in the order of `works` as soon as it and every recording before it are done."""
    results: dict[str, RecordingResult] = {}
    order = iter(works)
    upcoming = next(order, None)

    def done(uri: str, result: RecordingResult) -> None:
        nonlocal upcoming
        results[uri] = result
        while upcoming in results:
            if results[upcoming].source is not None:
                cache.append(results[upcoming].source)
            upcoming = next(order, None)

    pending: list[RecordingWork] = []
    for uri, work in works.items():
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
        _compute(pending, refs, sizes, store, args, workers, s3, done)
    return {uri: results[uri] for uri in works}


class _InFlight:
    """Recordings between the start of their download and their result: at most `count` of them and
    `budget` bytes of encoded audio (a larger recording goes alone). Small files keep every download
    thread busy behind a slow bucket; large ones cannot pile up in memory."""

    def __init__(self, count: int, budget: int) -> None:
        self._count, self._budget = count, budget
        self._items = self._bytes = 0
        self._changed = threading.Condition()

    def acquire(self, size: int, stop: threading.Event) -> bool:
        """Wait for room; False once `stop` is set."""
        with self._changed:
            while not self._fits(size):
                if stop.is_set():
                    return False
                self._changed.wait(0.2)
            self._items, self._bytes = self._items + 1, self._bytes + size
            return True

    def _fits(self, size: int) -> bool:
        return self._items < self._count and (self._items == 0 or self._bytes + size <= self._budget)

    def release(self, size: int) -> None:
        with self._changed:
            self._items, self._bytes = self._items - 1, self._bytes - size
            self._changed.notify_all()


def _compute(
    pending: Sequence[RecordingWork],
    refs: Mapping[str, AudioRef],
    sizes: Mapping[str, int],
    store: ShardStore,
    args: PrepareArguments,
    workers: ProcessPoolExecutor,
    s3: _S3Access,
    done: Callable[[str, RecordingResult], None],
) -> None:
    """Download threads feed the worker processes through a bounded number of in-flight recordings; each
    recording's result goes to `done` (in this thread) as it comes."""
    in_flight = _InFlight(max(1, args.download_concurrency) + 2 * _worker_count(args), IN_FLIGHT_BYTES)
    stop = threading.Event()
    finished: queue.Queue[tuple[RecordingWork, Future | None, AudioSourceError | BaseException | None]] = (
        queue.Queue()
    )
    needs_client = any(refs[work.audio_uri].kind == "s3" for work in pending)
    client = s3.client() if needs_client else None
    total_seconds = sum(window.duration for work in pending for window in work.windows)
    progress = tqdm(total=total_seconds, unit="audio-s", unit_scale=True, desc=f"recordings 0/{len(pending)}")

    with ThreadPoolExecutor(max(1, args.download_concurrency)) as downloads:

        def fetch_and_submit(work: RecordingWork) -> None:
            size = sizes[work.audio_uri]
            if not in_flight.acquire(size, stop):
                return
            try:
                data = read_bytes(refs[work.audio_uri], client, s3.stats)
                future = workers.submit(process_recording, work, data)
            except BaseException as error:  # handed to the main thread, which decides
                in_flight.release(size)
                finished.put((work, None, error))
                return

            def finish(completed: Future) -> None:
                in_flight.release(size)
                finished.put((work, completed, None))

            future.add_done_callback(finish)

        try:
            for work in pending:
                downloads.submit(fetch_and_submit, work)
            for count in range(1, len(pending) + 1):
                work, future, error = finished.get()
                seconds = sum(window.duration for window in work.windows)
                if error is not None:
                    if not isinstance(error, AudioSourceError):
                        raise error
                    skip = Skip(error.reason, work.windows[0].task_id, work.audio_uri, str(error))
                    meta = _meta_of(work, RecordingOutcome(0, 0, 0, [skip], 0.0, failed=True))
                    done(work.audio_uri, RecordingResult(meta, "computed", None))
                else:
                    outcome = future.result()
                    shard = store.commit(work.key, _meta_of(work, outcome))
                    path = store.arrow_path(work.key) if shard.rows else None
                    done(work.audio_uri, RecordingResult(shard.meta, "computed", RowSource(work.split, path)))
                # drawn by update, at most every 0.1 s (each setter would redraw the bar at once)
                progress.set_description(f"recordings {count}/{len(pending)}", refresh=False)
                hours = f"{progress.n / 3600:.2f} of {total_seconds / 3600:.2f} audio-h"
                progress.set_postfix_str(hours, refresh=False)
                progress.update(min(seconds, progress.total - progress.n))  # float sums may overshoot
        finally:
            stop.set()
            progress.close()


def _worker_count(args: PrepareArguments) -> int:
    return args.num_workers or os.cpu_count() or 1


@contextmanager
def _feature_workers(
    args: PrepareArguments, setup: WorkerSetup, context: multiprocessing.context.ForkServerContext
) -> Iterator[ProcessPoolExecutor]:
    """The feature worker processes, started at once so that they are ready when the main process has
    loaded the tokenizer and planned. The executor starts a process for each task submitted while none is
    idle: one trivial task per worker starts them all; a thread does that, since each start waits for the
    fork server's imports. Leaving cancels what has not started."""
    count = _worker_count(args)
    workers = ProcessPoolExecutor(
        count,
        mp_context=context,
        initializer=init_worker,
        initargs=(setup,),
    )

    def start_all() -> None:
        for _ in range(count):
            workers.submit(os.getpid)

    starting = threading.Thread(target=start_all, name="start-workers", daemon=True)
    starting.start()
    try:
        yield workers
    finally:
        starting.join()
        workers.shutdown(wait=True, cancel_futures=True)


def format_summary(summary: PrepareSummary) -> str:
    """The one-screen summary printed at the end of the stage."""
    report = summary.report
    if summary.current:
        return (
            f"cache is current: {report['examples']['train']} train + {report['examples']['validation']} "
            f"validation examples in {report.get('settings', {}).get('output_dir', '')} "
            f"(fingerprint {report['fingerprint'][:12]}); nothing to do (--force rebuilds)"
        )
    recordings, skips = report["recordings"], report["skips"]["by_reason"]
    lines = [
        "prepare_data.py summary",
        f"  tasks        {report['tasks']['used']} used of {report['tasks']['read']} read",
        f"  recordings   {recordings['total']}: {recordings['computed']} computed, "
        f"{recordings['resumed']} resumed, {recordings['reused']} reused, {recordings['failed']} failed, "
        f"{recordings['to_retry']} to retry",
    ]
    for split in (TRAIN, VALIDATION):
        lines.append(
            f"  {split:<12} {report['windows'][split]} windows, {report['examples'][split]} examples, "
            f"{report['audio_seconds'][split] / 60:.1f} audio-min"
        )
    lines += [
        f"  augmented    {report['augmented_examples']} examples",
        f"  skips        {sum(skips.values())}"
        + (": " + ", ".join(f"{reason} {count}" for reason, count in skips.items()) if skips else ""),
        f"  speed        {report['elapsed_seconds']:.1f} s, "
        f"{report['audio_seconds_per_second']:.0f} audio-seconds per second",
        f"  cache        {report['cache_bytes'] / 2**20:.1f} MiB in {report['settings']['output_dir']}"
        f" (report: {Path(report['settings']['output_dir']) / 'prepare_report.json'})",
    ]
    if recordings["to_retry"]:
        lines.append(
            f"  note         {recordings['to_retry']} downloads failed transiently: rerun to retry them"
        )
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    import sys

    load_env_file()
    args, augmentation = parse_config(
        (PrepareArguments, AugmentationSettings), sys.argv[1:] if argv is None else argv
    )
    summary = run_prepare(args, augmentation)
    print(format_summary(summary))
    return 0
