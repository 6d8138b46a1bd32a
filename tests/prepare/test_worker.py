"""The feature worker: one recording's bytes -> its shard, in a process that imports only what it runs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from whisper_pipeline.cache import ShardStore
from whisper_pipeline.constants import N_TIMESTAMPS, TIME_PRECISION
from whisper_pipeline.prepare.audio import cut, decode_audio
from whisper_pipeline.prepare.augment import AugmentationSettings, augment, augmentation_seed
from whisper_pipeline.prepare.features import LogMelFeaturizer
from whisper_pipeline.prepare.windows import Window
from whisper_pipeline.prepare.worker import RecordingWork, WorkerSetup, init_worker, process_recording

ROOT = Path(__file__).resolve().parents[2]
SEED = 42
HEAVY_MODULES = ("torch", "transformers", "datasets", "boto3", "botocore")
TIMESTAMP_IDS = tuple(range(50364, 50364 + N_TIMESTAMPS))  # whisper-base's <|0.00|> ... <|30.00|>


@pytest.fixture(scope="module")
def featurizer(tiny_model_dir) -> LogMelFeaturizer:
    return LogMelFeaturizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def setup(featurizer, tmp_path) -> WorkerSetup:
    return WorkerSetup(featurizer, AugmentationSettings(), SEED, tmp_path / "shards")


def shard_rows(setup: WorkerSetup, key: str) -> list[dict]:
    with pa.OSFile(str(ShardStore(setup.shards).arrow_path(key))) as shard:
        return pa.ipc.open_stream(shard).read_all().to_pylist()


@pytest.fixture
def recording_work(multi_utterance_recording) -> RecordingWork:
    windows = tuple(
        Window(
            f"call-{i}",
            "7",
            "s3://bucket/call.flac",
            u.start,
            u.end,
            u.text,
            (50258, 50278, 50359, TIMESTAMP_IDS[0], 1000 + i, TIMESTAMP_IDS[_step(u.end - u.start)], 50257),
            previous_tokens=tuple(range(2000, 2000 + i)),
        )
        for i, u in enumerate(multi_utterance_recording.utterances)
    )
    return RecordingWork(
        "k", "s3://bucket/call.flac", "train", windows, copies=1, timestamp_ids=TIMESTAMP_IDS
    )


def _step(seconds: float) -> int:
    return round(seconds / TIME_PRECISION)


def test_rows_are_each_window_and_its_augmented_copy(
    featurizer, setup, multi_utterance_recording, recording_work
):
    init_worker(setup)
    data = multi_utterance_recording.path.read_bytes()
    outcome = process_recording(recording_work, data)

    assert not outcome.failed and outcome.skips == []
    rows = shard_rows(setup, recording_work.key)
    assert [(row["segment_id"], row["augmentation"]) for row in rows] == [
        (window.window_id, copy) for window in recording_work.windows for copy in (0, 1)
    ]
    assert (outcome.rows, outcome.windows, outcome.augmented_rows) == (
        len(rows),
        len(recording_work.windows),
        len(recording_work.windows),
    )
    samples = decode_audio(data, name="call.flac")
    for window, (clean_row, augmented_row) in zip(
        recording_work.windows, zip(rows[::2], rows[1::2], strict=True), strict=True
    ):
        clean_audio = cut(samples, window.start, window.end)
        augmented_audio = augment(
            clean_audio, AugmentationSettings(), augmentation_seed(SEED, window.window_id, 1)
        )
        clean, variant = featurizer.compute(clean_audio), featurizer.compute(augmented_audio)
        for row, features in ((clean_row, clean), (augmented_row, variant)):
            assert np.array(row["input_features"], dtype=np.float16).tobytes() == features.frames.tobytes()
            assert row["pad_value"] == pytest.approx(features.pad_value)
            assert row["previous_tokens"] == list(window.previous_tokens)
        assert clean_row["labels"] == list(window.labels)
        # a time-stretched copy's segment ends where its speech now ends; its text is unchanged
        stretched_end = round(_step(window.duration) * len(augmented_audio) / len(clean_audio))
        assert augmented_row["labels"] == [
            *window.labels[:5],
            TIMESTAMP_IDS[stretched_end],
            window.labels[-1],
        ]
        assert clean_row["recording_key"] == recording_work.key
    assert outcome.audio_seconds == pytest.approx(sum(w.duration for w in recording_work.windows), abs=1e-3)


def test_undecodable_bytes_fail_the_recording_with_a_counted_reason(setup, recording_work):
    init_worker(setup)
    outcome = process_recording(recording_work, b"this is not audio")
    assert outcome.failed and outcome.rows == 0
    assert not ShardStore(setup.shards).arrow_path(recording_work.key).exists()
    assert [skip.reason for skip in outcome.skips] == ["unsupported_format"]


def test_a_worker_process_imports_no_torch_transformers_datasets_or_s3_client(
    tmp_path, setup, multi_utterance_recording, recording_work
):
    """What keeps a worker's start-up short and its memory small: it runs only decode, augment, log-mel."""
    job = tmp_path / "job.pickle"
    job.write_bytes(pickle.dumps((setup, recording_work, multi_utterance_recording.path.read_bytes())))
    probe = (
        "import json, pickle, sys\n"
        "from whisper_pipeline.prepare.worker import init_worker, process_recording\n"
        f"setup, work, data = pickle.loads(open({str(job)!r}, 'rb').read())\n"
        "init_worker(setup)\n"
        "outcome = process_recording(work, data)\n"
        f"print(json.dumps([outcome.rows, [m for m in {HEAVY_MODULES!r} if m in sys.modules]]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    rows, heavy = json.loads(result.stdout)
    assert rows == 2 * len(recording_work.windows)
    assert heavy == []
