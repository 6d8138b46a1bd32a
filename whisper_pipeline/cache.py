"""The feature cache: the one module that knows its on-disk layout and format version.

    processed_data/
      train/, validation/      datasets.save_to_disk's folder layout (load with datasets.load_from_disk):
                               one Arrow file, one record batch per recording, state.json, dataset_info.json
      recordings.json          each recording's key and outcome (rows, skips, seconds): what a rebuild reuses
      prepare_report.json      written last, atomically: its presence and fingerprint mark a complete cache
      .staging/                per-recording shards of a build in progress (kept across kills, removed at
                               the end): a shard `<key>.arrow` plus `<key>.json`, the json written last
      .build/                  the next cache while it is written (its splits grow as recordings finish),
                               swapped in at the end; a rerun starts it afresh
      .lock                    one writer at a time

Features are stored unpadded (time-major float16 frames that hold audio) with the single value every
padding frame takes, so the padded 30 s input is reconstructed exactly (see features.py).

A shard holds the rows with plain Arrow types (`SHARD_SCHEMA`): the feature workers encode them
(`encode_shard`) without importing datasets, which costs each process a second, and the main process only
writes the bytes. datasets is imported where a split is written or read, not on import of this module: a
rerun that finds its cache current, and the workers, never load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from whisper_pipeline.atomic import atomic_write_bytes, fsync_directory
from whisper_pipeline.errors import CacheError

if TYPE_CHECKING:
    import datasets

FORMAT_VERSION = 3  # 2: timestamped labels, no-speech windows, previous_tokens; 3: whole recordings
TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
SOURCE_COLUMNS = ("segment_id", "audio_uri", "start", "end")  # where a row's audio comes from
# `augmentation` of a row: 0 the window's own audio, k > 0 its k-th augmented copy, or WHOLE_RECORDING: a
# validation recording whole (features of any length, no labels, its annotated utterances), what the end of
# training transcribes with Whisper's long-form algorithm, as users deploy the model
WHOLE_RECORDING = -1
REPORT_NAME = "prepare_report.json"
RECORDINGS_NAME = "recordings.json"  # per-recording outcome (rows, skips, seconds), for reuse
STAGING_NAME = ".staging"
SPLIT_DATA_FILE = "data-00000-of-00001.arrow"  # the name save_to_disk gives a one-file split
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",  # transformers 5's WhisperProcessor.save_pretrained nests the extractor here
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
)


# A shard's rows in plain Arrow types, which pyarrow alone builds: the feature workers encode with it, and
# the main process starts them, before datasets (slow to import) is loaded. The features' Array2D is stored
# as lists of lists (frames x mel bins); `cache_features` gives the cache's columns, these with that
# extension type, and `_as_cache_table` puts it back around a shard's column without a copy.
SHARD_SCHEMA = pa.schema(
    [
        ("input_features", pa.list_(pa.list_(pa.float16()))),
        ("pad_value", pa.float32()),
        ("labels", pa.list_(pa.int32())),
        ("previous_tokens", pa.list_(pa.int32())),
        ("text", pa.string()),
        ("audio_uri", pa.string()),
        ("task_id", pa.string()),
        ("segment_id", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("augmentation", pa.int8()),
        ("recording_key", pa.string()),
        (
            "utterances",
            pa.list_(pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])),
        ),
    ]
)


def cache_features(num_mel_bins: int) -> datasets.Features:
    """The row schema of both splits: the shard's columns, the features as an Array2D of `num_mel_bins`."""
    from datasets import Array2D, Features

    features = Features.from_arrow_schema(SHARD_SCHEMA)
    features["input_features"] = Array2D(shape=(None, num_mel_bins), dtype="float16")
    return features


def encode_shard(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """One recording's rows (at least one) as an Arrow IPC stream of one record batch. A 2-D array (the
    features: frames x mel bins) becomes lists of lists over one contiguous buffer; other values convert
    as they are."""
    columns = [
        _nested_lists([row[column.name] for row in rows], column.type)
        if pa.types.is_list(column.type) and pa.types.is_list(column.type.value_type)
        else pa.array([row[column.name] for row in rows], type=column.type)
        for column in SHARD_SCHEMA
    ]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SHARD_SCHEMA) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=SHARD_SCHEMA))
    return sink.getvalue().to_pybytes()


def _nested_lists(matrices: Sequence[np.ndarray], arrow_type: pa.DataType) -> pa.Array:
    lengths = np.array([len(matrix) for matrix in matrices], dtype=np.int64)
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(int(lengths.sum()) + 1, dtype=np.int32) * matrices[0].shape[1]),
        pa.array(
            np.concatenate([matrix.reshape(-1) for matrix in matrices]), type=arrow_type.value_type.value_type
        ),
    )
    outer = np.zeros(len(matrices) + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer[1:])
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def stable_hash(value: Any) -> str:
    """sha256 of a JSON-serialisable value, key order independent: the basis of every fingerprint."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def processor_fingerprint(model_dir: Path) -> str:
    """Identity of the tokenizer and feature extractor files: the weights do not shape the cache."""
    digest = hashlib.sha256()
    for name in PROCESSOR_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    @property
    def report_path(self) -> Path:
        return self.root / REPORT_NAME

    @property
    def staging(self) -> Path:
        return self.root / STAGING_NAME

    def split_dir(self, split: str) -> Path:
        return self.root / split


@contextmanager
def exclusive_lock(root: Path) -> Iterator[None]:
    """One writer per cache folder; a second run refuses at once with a clear message."""
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheError(
            f"another prepare_data.py run is writing {root} (lock {root / '.lock'}); wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


def read_report(root: Path) -> dict[str, Any] | None:
    """The report of a complete cache, or None when there is none (or it is unreadable)."""
    try:
        report = json.loads((root / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


@dataclass(frozen=True)
class ShardResult:
    """What processing one recording produced: rows in `<key>.arrow` (if any), the rest in json."""

    key: str
    rows: int
    meta: Mapping[str, Any]


class ShardStore:
    """Per-recording results of the build in progress; survive kill -9, so a rerun resumes.

    A feature worker writes a recording's rows (`write_rows`), then the main process its meta (`commit`):
    the rows do not travel back through a pipe, and the meta, written last, marks the shard complete."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def arrow_path(self, key: str) -> Path:
        return self.directory / f"{key}.arrow"

    def load(self, key: str) -> ShardResult | None:
        """A finished shard, or None: the json is written last, so its presence means complete."""
        try:
            meta = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta["rows"] and not self.arrow_path(key).is_file():
            return None
        return ShardResult(key, meta["rows"], meta)

    def write_rows(self, key: str, shard: bytes) -> None:
        """A recording's rows, `encode_shard`'s bytes (whole or not at all)."""
        temporary = self.directory / f".{key}.arrow.tmp"
        temporary.write_bytes(shard)
        os.replace(temporary, self.arrow_path(key))

    def commit(self, key: str, meta: Mapping[str, Any]) -> ShardResult:
        """A recording's meta (its number of rows included), once its rows, if any, are written."""
        atomic_write_bytes(self.directory / f"{key}.json", json.dumps(dict(meta), sort_keys=True).encode())
        return ShardResult(key, meta["rows"], meta)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def load_split(root: Path, split: str) -> datasets.Dataset:
    import datasets

    return datasets.load_from_disk(str(root / split))


@dataclass(frozen=True)
class PreviousRecording:
    """A recording in the current complete cache: reused as is when its key is unchanged."""

    meta: Mapping[str, Any]
    split: str
    indices: tuple[int, ...]


def previous_recordings(root: Path) -> dict[str, PreviousRecording]:
    """recording_key -> its rows and meta in the current complete cache, for incremental rebuilds."""
    report = read_report(root)
    if report is None or report.get("format_version") != FORMAT_VERSION:
        return {}
    try:
        metas = json.loads((root / RECORDINGS_NAME).read_text(encoding="utf-8"))
        indices: dict[str, list[int]] = {}
        for split in SPLITS:
            for index, key in enumerate(load_split(root, split)["recording_key"]):
                indices.setdefault(key, []).append(index)
    except (OSError, ValueError, KeyError):
        return {}
    return {
        key: PreviousRecording(meta, meta["split"], tuple(indices.get(key, ())))
        for key, meta in metas.items()
        if len(indices.get(key, ())) == meta["rows"]
    }


@dataclass(frozen=True)
class RowSource:
    """Where one recording's rows come from: a new shard or the previous cache."""

    split: str
    shard: Path | None = None
    previous_indices: tuple[int, ...] = ()


class CacheBuilder:
    """The next cache, written while it is computed: `append` adds each recording's rows to its split
    (the caller keeps the build's order), so that when the last recording is done only the splits' closing
    (`close_splits`) and the swap (`swap_in`) are left. The writing then overlaps the feature workers instead
    of leaving all cores but one idle after the last recording.

    The splits grow in .build/, which a kill leaves behind and the next build starts afresh (the rows stay
    in the staged shards). Leaving the `with` block without a swap removes it.

    Each shard is read into memory, written and let go: save_to_disk over the concatenated shards would
    memory-map every shard at once and touch all of them, and the process's resident memory would grow
    with the cache.
    """

    def __init__(self, layout: CacheLayout, num_mel_bins: int) -> None:
        self._layout = layout
        self._build = layout.root / ".build"
        self._num_mel_bins = num_mel_bins
        self._writers: dict[str, Any] = {}
        self._previous: dict[str, datasets.Dataset] = {}

    def __enter__(self) -> CacheBuilder:
        shutil.rmtree(self._build, ignore_errors=True)
        for split in SPLITS:
            (self._build / split).mkdir(parents=True)
        return self

    def __exit__(self, *exception) -> None:
        self._close()
        shutil.rmtree(self._build, ignore_errors=True)  # after a swap, already gone

    @cached_property
    def features(self) -> datasets.Features:
        return cache_features(self._num_mel_bins)

    @cached_property
    def _schema(self) -> pa.Schema:
        return self.features.arrow_schema  # a property that builds the schema anew on each call

    def _writer(self, split: str) -> Any:
        """The split's writer, opened on first use: datasets (slow to import) loads while the workers
        compute the first recordings, not before they can start."""
        if split not in self._writers:
            from datasets.arrow_writer import ArrowWriter

            path = self._build / split / SPLIT_DATA_FILE
            self._writers[split] = ArrowWriter(features=self.features, path=str(path))
        return self._writers[split]

    def append(self, source: RowSource) -> None:
        """A recording's rows, as one record batch, after those appended before."""
        if source.shard is not None:
            with pa.OSFile(str(source.shard)) as shard:  # read, not mapped: see the class docstring
                self._writer(source.split).write_table(
                    _as_cache_table(pa.ipc.open_stream(shard).read_all(), self._schema)
                )
        elif source.previous_indices:
            if source.split not in self._previous:
                self._previous[source.split] = load_split(self._layout.root, source.split)
            rows = self._previous[source.split].select(source.previous_indices).with_format("arrow")
            self._writer(source.split).write_table(rows[: len(rows)].combine_chunks())

    def close_splits(self, recordings: Mapping[str, Mapping[str, Any]]) -> int:
        """Close both splits and write their metadata and recordings.json beside them, in .build/; returns
        the new cache's size in bytes (for its report)."""
        import datasets

        (self._build / RECORDINGS_NAME).write_text(json.dumps(recordings, sort_keys=True), encoding="utf-8")
        for split in SPLITS:
            self._writer(split).finalize()  # an empty split gets its empty file: load_from_disk needs one
            keys = sorted(key for key, meta in recordings.items() if meta["split"] == split)
            state = {
                "_data_files": [{"filename": SPLIT_DATA_FILE}],
                # as save_to_disk writes the dataset's: load_from_disk derives the loaded dataset's from it
                "_fingerprint": stable_hash({"split": split, "recordings": keys})[:16],
                "_format_columns": None,
                "_format_kwargs": {},
                "_format_type": None,
                "_output_all_columns": False,
                "_split": None,
            }
            (self._build / split / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(
                json.dumps(state, indent=2, sort_keys=True), encoding="utf-8"
            )
            datasets.DatasetInfo(features=self.features).write_to_directory(str(self._build / split))
        self._close()
        return sum(path.stat().st_size for path in self._build.rglob("*") if path.is_file())

    def swap_in(self, report: Mapping[str, Any]) -> None:
        """Swap the closed splits in for the old ones, then write the report last.

        From the moment the old report is removed until the new one is written the folder holds no report,
        so an interrupted swap is never taken for a complete cache; the rerun rebuilds from the staged
        shards."""
        root = self._layout.root
        self._layout.report_path.unlink(missing_ok=True)
        fsync_directory(root)
        retired = root / ".retired"
        shutil.rmtree(retired, ignore_errors=True)
        retired.mkdir()
        for name in (*SPLITS, RECORDINGS_NAME):
            if (root / name).exists():
                os.replace(root / name, retired / name)
            os.replace(self._build / name, root / name)
        fsync_directory(root)
        atomic_write_bytes(
            self._layout.report_path, json.dumps(dict(report), indent=2, ensure_ascii=False).encode()
        )
        shutil.rmtree(retired, ignore_errors=True)
        shutil.rmtree(self._build, ignore_errors=True)

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._previous.clear()  # the previous cache's files, memory-mapped: let go before the swap


def _as_cache_table(shard: pa.Table, schema: pa.Schema) -> pa.Table:
    """A shard's rows with the cache's column types: each storage column wrapped in its extension type
    (a shard staged by an earlier version of this code holds the extension types already)."""
    columns = [column.combine_chunks() for column in shard.columns]
    return pa.Table.from_arrays(
        [
            pa.ExtensionArray.from_storage(field.type, column) if column.type != field.type else column
            for column, field in zip(columns, schema, strict=True)
        ],
        schema=schema,
    )


@dataclass(frozen=True)
class PreparedCache:
    """A complete cache as the trainer sees it."""

    root: Path
    train: datasets.Dataset
    validation: datasets.Dataset
    report: Mapping[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.report["fingerprint"]


def clean_rows(rows: datasets.Dataset, limit: int | None = None) -> datasets.Dataset:
    """The rows of the recorded audio itself (no augmented copy) that hold speech: what WER scores.
    Selected in memory, so that the cache folder is never written to (and DDP processes never race on it)."""
    has_text = np.array([bool(text) for text in rows["text"]], dtype=bool)
    chosen = np.flatnonzero((np.asarray(rows["augmentation"]) == 0) & has_text)[:limit]
    return rows.select(chosen, keep_in_memory=True)


def whole_recordings(rows: datasets.Dataset) -> datasets.Dataset:
    """The WHOLE_RECORDING rows (selected in memory, as `clean_rows`)."""
    chosen = np.flatnonzero(np.asarray(rows["augmentation"]) == WHOLE_RECORDING)
    return rows.select(chosen, keep_in_memory=True)


def open_cache(root: Path, *, model_dir: Path | None = None) -> PreparedCache:
    """Open a complete cache, refusing a missing or partial one and one made with another processor."""
    root = Path(root)
    report = read_report(root)
    if report is None:
        raise CacheError(f"no complete feature cache in {root}: run prepare_data.py first")
    if report.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"the cache in {root} has format version {report.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: rerun prepare_data.py"
        )
    try:
        splits = {split: load_split(root, split) for split in SPLITS}
    except (FileNotFoundError, ValueError) as error:
        raise CacheError(f"the cache in {root} is incomplete ({error}): rerun prepare_data.py") from None
    for split, dataset in splits.items():
        expected = report["examples"][split]
        if len(dataset) != expected:
            raise CacheError(
                f"the cache in {root} is inconsistent: {split} has {len(dataset)} rows, its report says "
                f"{expected}: rerun prepare_data.py --force"
            )
    if model_dir is not None and processor_fingerprint(Path(model_dir)) != report["processor_fingerprint"]:
        raise CacheError(
            f"the cache in {root} was made with another tokenizer/feature extractor than {model_dir} "
            f"(made with {report.get('model', '?')}): rerun prepare_data.py --model {model_dir}"
        )
    return PreparedCache(root, splits["train"], splits["validation"], report)
