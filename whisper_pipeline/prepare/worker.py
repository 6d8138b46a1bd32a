"""The feature workers of prepare_data.py: one recording's bytes -> its shard (its rows, in Arrow).

A module of its own so that a worker process imports only what it runs (decoding, augmentation, the
log-mel, pyarrow for the shard): no torch, transformers, datasets or S3 client. That keeps the workers'
start-up (their imports happen once, in the fork server of fork_server.py) and their memory small.
The main process reads the feature extractor's settings and hands them over; a worker writes each shard
itself and returns what the main process records.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_pipeline.cache import WHOLE_RECORDING, ShardStore, encode_shard
from whisper_pipeline.constants import CHUNK_SECONDS, SAMPLE_RATE
from whisper_pipeline.prepare.annotations import Skip
from whisper_pipeline.prepare.audio import AudioDecodeError, cut, decode_audio
from whisper_pipeline.prepare.augment import AugmentationSettings, augment, augmentation_seed
from whisper_pipeline.prepare.features import LogMelFeaturizer
from whisper_pipeline.prepare.windows import Utterance, Window, fitted_to, is_long_form

# a whole-file transcription of a recording longer than a window: its words cannot be placed in time
UNSEGMENTED_OVER_30S = "unsegmented_over_30s"


@dataclass(frozen=True)
class RecordingWork:
    """Everything a worker needs for one recording (picklable; no clients, no locks)."""

    key: str
    audio_uri: str
    split: str
    windows: tuple[Window, ...]
    copies: int
    timestamp_ids: tuple[int, ...]  # <|0.00|> ... <|30.00|>: time-stretched copies move their segments
    # a validation recording all of whose speech is transcribed: its utterances, for a WHOLE_RECORDING row
    # when it is long-form (see windows.is_long_form); None: no such row
    utterances: tuple[Utterance, ...] | None = None


@dataclass(frozen=True)
class RecordingOutcome:
    """What a worker made of one recording."""

    rows: int  # written to the shard store (none when 0)
    windows: int  # windows with at least one row
    augmented_rows: int
    skips: list[Skip]
    audio_seconds: float  # clean window seconds that made it into the cache
    failed: bool  # the recording as a whole could not be used
    no_speech_rows: int = 0  # rows whose target is the no-speech token
    whole_recordings: int = 0  # WHOLE_RECORDING rows (0 or 1)


_state: dict[str, Any] = {}


@dataclass(frozen=True)
class WorkerSetup:
    """What every recording's work shares (picklable: handed to each worker process once)."""

    featurizer: LogMelFeaturizer  # built by the main process from the model's settings
    augmentation: AugmentationSettings
    seed: int
    shards: Path  # the ShardStore directory


def init_worker(setup: WorkerSetup) -> None:
    """Per worker process: one BLAS thread, the shared settings, the shard store."""
    limit_threads()
    _state.update(setup=setup, store=ShardStore(setup.shards))


def process_recording(work: RecordingWork, data: bytes) -> RecordingOutcome:
    """Decode once, then cut, augment and featurize every window of the recording; write its rows."""
    try:
        samples = decode_audio(data, name=work.audio_uri)
    except AudioDecodeError as error:
        skip = Skip(error.reason, work.windows[0].task_id, work.audio_uri, str(error))
        return RecordingOutcome(0, 0, 0, [skip], 0.0, failed=True)
    rows, skips, seconds = recording_rows(work, samples)
    windows = [row for row in rows if row["augmentation"] != WHOLE_RECORDING]
    if rows:
        _state["store"].write_rows(work.key, encode_shard(rows))
    return RecordingOutcome(
        rows=len(rows),
        windows=len({row["segment_id"] for row in windows}),
        augmented_rows=sum(1 for row in windows if row["augmentation"]),
        no_speech_rows=sum(1 for row in windows if not row["text"]),
        whole_recordings=len(rows) - len(windows),
        skips=skips,
        audio_seconds=seconds,
        failed=not rows,
    )


def recording_rows(
    work: RecordingWork, samples: np.ndarray
) -> tuple[list[dict[str, Any]], list[Skip], float]:
    """The cache rows of a decoded recording (each window, then its augmented copies), the windows that
    could not be used, and the clean audio-seconds of those that could."""
    setup: WorkerSetup = _state["setup"]
    rows: list[dict[str, Any]] = []
    skips: list[Skip] = []
    seconds = 0.0
    time_index = {token: index for index, token in enumerate(work.timestamp_ids)}
    duration = len(samples) / SAMPLE_RATE
    for window in work.windows:
        if window.whole_file:
            if duration > window.end:
                detail = f"{duration:.1f} s > {window.end:g} s"
                skips.append(Skip(UNSEGMENTED_OVER_30S, window.task_id, work.audio_uri, detail))
                continue
            window = fitted_to(window, duration, work.timestamp_ids)
        try:
            clean = cut(samples, window.start, window.end)
        except AudioDecodeError as error:
            skips.append(Skip(error.reason, window.task_id, work.audio_uri, f"{window.window_id}: {error}"))
            continue
        seconds += len(clean) / SAMPLE_RATE
        for copy_index in range(work.copies + 1):
            variant, labels = clean, list(window.labels)
            if copy_index:
                seed = augmentation_seed(setup.seed, window.window_id, copy_index)
                variant = augment(clean, setup.augmentation, seed)
                if len(variant) > CHUNK_SECONDS * SAMPLE_RATE:
                    skips.append(Skip("augmented_over_30s", window.task_id, work.audio_uri, window.window_id))
                    continue
                labels = _stretched(labels, work.timestamp_ids, time_index, len(variant) / len(clean))
            features = setup.featurizer.compute(variant)
            rows.append(
                {
                    "input_features": features.frames,
                    "pad_value": features.pad_value,
                    "labels": labels,
                    "previous_tokens": list(window.previous_tokens),
                    "text": window.text,
                    "audio_uri": work.audio_uri,
                    "task_id": window.task_id,
                    "segment_id": window.window_id,
                    "start": window.start,
                    "end": window.end,
                    "augmentation": copy_index,
                    "recording_key": work.key,
                    "utterances": [],
                }
            )
    if rows and work.utterances is not None and is_long_form(duration, work.utterances):
        rows.append(_whole_recording_row(work, samples, setup.featurizer))
    return rows, skips, seconds


def _whole_recording_row(work: RecordingWork, samples: np.ndarray, featurizer) -> dict[str, Any]:
    """The recording as users transcribe it: the log-mel of all of it, and what was said when."""
    features = featurizer.compute(samples, whole=True)
    return {
        "input_features": features.frames,
        "pad_value": features.pad_value,
        "labels": [],
        "previous_tokens": [],
        "text": " ".join(utterance.text for utterance in work.utterances),
        "audio_uri": work.audio_uri,
        "task_id": work.windows[0].task_id,
        "segment_id": f"{work.windows[0].task_id}:whole",
        "start": 0.0,
        "end": len(samples) / SAMPLE_RATE,
        "augmentation": WHOLE_RECORDING,
        "recording_key": work.key,
        "utterances": [utterance._asdict() for utterance in work.utterances],
    }


def _stretched(
    labels: list[int], timestamp_ids: tuple[int, ...], time_index: dict[int, int], scale: float
) -> list[int]:
    """The labels of a copy whose audio is `scale` times as long (time stretch): every timestamp moves
    with the speech it marks."""
    if scale == 1.0:
        return labels
    last = len(timestamp_ids) - 1
    return [
        timestamp_ids[min(round(time_index[token] * scale), last)] if token in time_index else token
        for token in labels
    ]


def limit_threads() -> None:
    """Call first in each worker process: one BLAS/OpenMP/torch thread per process.

    The pool already runs one process per core; threads inside each would oversubscribe the cores and
    halve throughput. The environment variables cover libraries loaded after this call (torch included:
    it reads OMP_NUM_THREADS when imported); torch is not imported here, the feature workers never need it.
    """
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    threadpool_limits(limits=1)
