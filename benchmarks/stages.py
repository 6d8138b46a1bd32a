"""The compute limit of stage 1: each stage's CPU cost per audio-second, from profiling its real code.

One feature worker per core, started as prepare_data.py starts them (forked from its fork server, set up by
`init_worker`), plans a sample of recordings, runs each through `process_recording` and writes its shard
into a cache, under cProfile; a stage's cost is the CPU time spent in the functions that do it (`_stages`).
The workers run at the same time because a core is slower when its neighbours work (shared caches, SMT
siblings on a VM): a cost taken on an idle machine would promise a limit that busy cores never reach.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import soxr

from whisper_pipeline.cache import TRAIN, CacheBuilder, CacheLayout, RowSource, ShardStore, encode_shard
from whisper_pipeline.prepare.audio import cut, decode_audio
from whisper_pipeline.prepare.augment import AugmentationSettings, augment
from whisper_pipeline.prepare.features import LabelEncoder, LogMelFeaturizer
from whisper_pipeline.prepare.fork_server import start_worker_server, worker_server_for_command
from whisper_pipeline.prepare.pool import feature_workers
from whisper_pipeline.prepare.report import recording_meta
from whisper_pipeline.prepare.run import PrepareArguments, parse_annotations
from whisper_pipeline.prepare.windows import assign_splits, pack_windows
from whisper_pipeline.prepare.worker import RecordingWork, WorkerSetup, process_recording

STAGES = ("decode", "resample", "cut", "augment", "log-mel", "tokenize", "write", "rest of process_recording")


def _stages(profile: pstats.Stats) -> dict[str, float]:
    """CPU seconds of each stage: the cumulative time of the functions that do it. Decoding resamples as it
    goes; planning (tokenize) and the cache's writes beyond a worker's shard are the main process's work."""

    def spent(*functions: Callable) -> float:
        keys = [(f.__code__.co_filename, f.__code__.co_firstlineno, f.__code__.co_name) for f in functions]
        return sum(profile.stats[key][3] for key in keys if key in profile.stats)

    resample = spent(soxr.ResampleStream.resample_chunk)
    worker = {
        "decode": spent(decode_audio) - resample,
        "resample": resample,
        "cut": spent(cut),
        "augment": spent(augment),
        "log-mel": spent(LogMelFeaturizer.compute),
        "write": spent(encode_shard, ShardStore.write_rows),
    }
    main = spent(ShardStore.commit, CacheBuilder.append, CacheBuilder.close_splits, CacheBuilder.swap_in)
    return {
        **worker,
        "tokenize": spent(pack_windows),
        "write": worker["write"] + main,
        "rest of process_recording": spent(process_recording) - sum(worker.values()),
    }


def profile_sample(export: Path, corpus: Path, args: PrepareArguments, shards: Path) -> dict[str, float]:
    """In a feature worker: what prepare does with the recordings of `export` (audio in `corpus`, under
    its S3 key), profiled; returns each stage's CPU seconds."""
    from datasets.arrow_writer import ArrowWriter  # noqa: F401  (imported once per run, not per recording)

    encoder = LabelEncoder.from_pretrained(Path(args.model), args.language, args.task)
    tasks = parse_annotations(export.read_bytes(), args)[1].tasks
    splits = assign_splits([task.audio_uri for task in tasks], seed=args.seed, val_fraction=args.val_fraction)
    profiler, store = cProfile.Profile(time.process_time), ShardStore(shards)
    layout, recordings = CacheLayout(shards.parent / f"cache_{os.getpid()}"), {}
    with CacheBuilder(layout, LogMelFeaturizer.from_pretrained(Path(args.model)).n_mels) as cache:
        for index, task in enumerate(tasks):
            windows, _ = profiler.runcall(
                pack_windows,
                task,
                encoder,
                max_seconds=args.max_window_seconds,
                no_speech=args.noise_examples,
            )
            split, key = splits[task.audio_uri], f"{os.getpid()}_{index}"
            copies = args.augment_copies if split == TRAIN else 0
            work = RecordingWork(key, task.audio_uri, split, tuple(windows), copies, encoder.timestamp_ids)
            data = (corpus / task.audio_uri.split("/", 3)[3]).read_bytes()
            outcome = profiler.runcall(process_recording, work, data)
            recordings[key] = profiler.runcall(store.commit, key, recording_meta(work, outcome)).meta
            profiler.runcall(cache.append, RowSource(split, store.arrow_path(key) if outcome.rows else None))
        profiler.runcall(cache.close_splits, recordings)
        profiler.runcall(cache.swap_in, {})
    shutil.rmtree(layout.root)
    return _stages(pstats.Stats(profiler))


def measure(export: Path, corpus: Path, args: PrepareArguments, processes: int) -> list[dict[str, float]]:
    """Each stage's CPU seconds on the sample of `export`, in each of `processes` feature workers at once."""
    featurizer = LogMelFeaturizer.from_pretrained(Path(args.model))
    shards = Path(args.output_dir) / "shards"
    setup = WorkerSetup(featurizer, AugmentationSettings(), args.seed, shards)
    with worker_server_for_command(), feature_workers(processes, setup, start_worker_server()) as workers:
        jobs = [workers.submit(profile_sample, export, corpus, args, shards) for _ in range(processes)]
        spent = [job.result() for job in jobs]
    shutil.rmtree(args.output_dir)
    return spent


def stage_costs(measurements: Sequence[Sequence[dict]], recordings: int, seconds: float, cores: int) -> dict:
    """Single-core CPU ms per audio-second of each stage on the sample (`recordings`, `seconds` of speech):
    the mean over every process of every measurement (right before and right after the 4N run: this VM's
    speed drifts over minutes), and the throughput these stages allow on `cores`: the compute limit."""

    def per_second(processes: Sequence[dict[str, float]]) -> dict[str, float]:
        return {stage: 1000 * sum(p[stage] for p in processes) / len(processes) / seconds for stage in STAGES}

    overall = per_second([spent for measurement in measurements for spent in measurement])
    total = sum(overall.values())
    return {
        "sample_recordings": recordings,
        "sample_audio_seconds": round(seconds, 2),
        "processes": len(measurements[0]),
        "total_ms_per_audio_second_by_measurement": [
            round(sum(per_second(m).values()), 4) for m in measurements
        ],
        "ms_per_audio_second": {stage: round(value, 4) for stage, value in overall.items()},
        "total_ms_per_audio_second": round(total, 4),
        "cores": cores,
        "limit_audio_seconds_per_second": round(1000 * cores / total, 1),
    }
