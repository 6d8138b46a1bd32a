"""Stage 1 benchmark: prepare_data.py against the seed's approach, on the same S3 data in the same run.

    python -m benchmarks.prepare [--recordings 150] [--latency-ms 50] [--skip-baseline] [--baseline-4n]

1. synthesises 4N recordings of espeak-ng speech (3 to 5 regions of 1 to 3 sentences each, FLAC and MP3
   at 44.1 kHz as archives hold them) and Label Studio exports of the first N and of all 4N (the corpus is
   kept in --workdir and extended while its recipe is unchanged);
2. measures each stage's single-core CPU cost per audio-second on a sample, with every core busy: the
   compute limit;
3. serves the audio from a local S3 server (moto, plain HTTP on 127.0.0.1), directly and through a proxy
   that adds a network round trip (--latency-ms), like a remote bucket;
4. runs as subprocesses, measured the same way (wall time, process-tree RSS sampled every 50 ms, CPU time
   of the whole tree): the seed's approach (benchmarks/seed_baseline.py) and prepare_data.py at N on both
   endpoints, prepare_data.py at 4N, then a no-op rerun of that cache;
5. prints the figures, each goal with PASS/FAIL and a Markdown table, and writes them as JSON (--output).

An audio-second is a second of transcribed speech in the export: the same count for both implementations.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from whisper_pipeline.annotations import load_export, parse_export
from whisper_pipeline.audio import (
    RESAMPLE_QUALITY,
    AugmentationSettings,
    augment,
    augmentation_seed,
    cut,
    limit_threads,
)
from whisper_pipeline.cache import (
    CacheBuilder,
    CacheLayout,
    RowSource,
    ShardStore,
    encode_shard,
)
from whisper_pipeline.constants import CHUNK_SECONDS, SAMPLE_RATE
from whisper_pipeline.demo import PITCHES, SPEEDS, VOICES, demo_sentences
from whisper_pipeline.features import LabelEncoder, LogMelFeaturizer
from whisper_pipeline.local_s3 import LocalS3Server
from whisper_pipeline.prepare import PrepareArguments
from whisper_pipeline.pretrained import ensure_pretrained
from whisper_pipeline.s3_proxy import S3Proxy
from whisper_pipeline.segments import TRAIN, assign_splits, pack_windows
from whisper_pipeline.synthetic import LabelStudioExport, Part, Utterance, compose, encode_audio, synthesize
from whisper_pipeline.worker import (
    RecordingWork,
    WorkerSetup,
    init_worker,
    process_recording,
    recording_rows,
)
from whisper_pipeline.worker_server import WORKER_MODULES

REPO = Path(__file__).resolve().parents[1]
BUCKET = "bench-speech"
LANGUAGE = "vi"
SEED = 42
SOURCE_RATE = 44_100  # what archives hold; prepare resamples it to 16 kHz, as real data needs
FORMATS = ("flac", "mp3")
REGIONS_PER_RECORDING = (3, 5)
SENTENCES_PER_REGION = (1, 3)  # regions of about 2 to 8 s, like sentence-level annotation
CORPUS_REVISION = 2  # bump when the recipe changes: the kept corpus is then synthesised again
SCALE = 4  # the scaling run has SCALE times the recordings
SAMPLE_INTERVAL_S = 0.05  # RSS and CPU times of the measured processes
PROCESS_LIST_EVERY = 10  # samples; then also the process list (a scan of /proc: ~3 ms)
PSS_EVERY = 40  # samples; then also each process's PSS (the kernel walks its page tables: ~7 ms apiece)
NOOP_REPEATS = 5  # no-op reruns timed; the median is reported
CORES = os.cpu_count() or 1
# The environment the measured commands get, as it was when the benchmark started.
ENVIRONMENT = dict(os.environ)

# Goals of the GitHub issue.
GOAL_SPEEDUP_LOOPBACK = 3.0
GOAL_SPEEDUP_LATENCY = 4.0
GOAL_EFFICIENCY = 0.75
GOAL_CACHE_RATIO = 7.0
GOAL_PEAK_BYTES = 1.5e9
GOAL_FLAT_MEMORY = 1.25  # peak at 4N at most this times the peak at N
GOAL_FLAT_THROUGHPUT = 0.8  # throughput at 4N at least this times the throughput at N
GOAL_NOOP_FRACTION = 0.01


# --- the corpus -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One synthesised recording: its file (also its S3 key) and the regions its export task holds."""

    name: str
    duration: float
    utterances: tuple[Utterance, ...]

    @property
    def speech_seconds(self) -> float:
        return sum(utterance.end - utterance.start for utterance in self.utterances)

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.name}"


def _synthesise(directory: Path, index: int, sentences: Sequence[str]) -> Recording:
    """Recording `index` depends on nothing else: the corpus grows without changing its first recordings."""
    rng = random.Random(f"{SEED}/{index}")
    voice, speed, pitch = rng.choice(VOICES), rng.choice(SPEEDS), rng.choice(PITCHES)
    texts = [
        " ".join(rng.sample(list(sentences), rng.randint(*SENTENCES_PER_REGION)))
        for _ in range(rng.randint(*REGIONS_PER_RECORDING))
    ]
    samples, utterances = compose(
        [Part(synthesize(text, voice, speed=speed, pitch=pitch), text) for text in texts]
    )
    source = soxr.resample(samples, SAMPLE_RATE, SOURCE_RATE, RESAMPLE_QUALITY)
    name = f"audio/{index:05d}.{FORMATS[index % len(FORMATS)]}"
    (directory / name).write_bytes(encode_audio(source, SOURCE_RATE, name.rsplit(".", 1)[1]))
    return Recording(name, len(source) / SOURCE_RATE, tuple(utterances))


def build_corpus(directory: Path, count: int) -> list[Recording]:
    """The first `count` recordings, synthesising only those not already in `directory`."""
    manifest_path = directory / "manifest.json"
    known: list[Recording] = []
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    if manifest.get("revision") == CORPUS_REVISION:
        for entry in manifest["recordings"]:
            if not (directory / entry["name"]).is_file():
                break
            known.append(
                Recording(
                    entry["name"], entry["duration"], tuple(Utterance(**u) for u in entry["utterances"])
                )
            )
    if len(known) >= count:
        return known[:count]
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    sentences = demo_sentences()
    missing = range(len(known), count)
    with ThreadPoolExecutor(CORES) as pool:  # espeak-ng and the encoders run outside the GIL
        made = list(
            tqdm(
                pool.map(lambda index: _synthesise(directory, index, sentences), missing),
                total=len(missing),
                desc="synthesising recordings",
                unit="recording",
            )
        )
    recordings = known + made
    manifest = {"revision": CORPUS_REVISION, "recordings": [asdict(recording) for recording in recordings]}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    return recordings


def write_export(recordings: Sequence[Recording], path: Path) -> Path:
    """The Label Studio full JSON export of `recordings`, audio on s3://BUCKET."""
    export = LabelStudioExport(seed=SEED)
    for recording in recordings:
        export.add_task(recording.uri, recording.utterances, duration=recording.duration)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export.write(path)


def speech_seconds(recordings: Sequence[Recording]) -> float:
    return sum(recording.speech_seconds for recording in recordings)


@contextmanager
def serve_corpus(
    directory: Path, recordings: Sequence[Recording], workdir: Path, latency_s: float = 0.0
) -> Iterator[dict[str, dict[str, str]]]:
    """The S3 settings of each endpoint serving `recordings`: "loopback", and "latency" when latency_s."""
    with ExitStack() as stack:
        server = stack.enter_context(LocalS3Server(tls=False, workdir=workdir))
        server.create_bucket(BUCKET)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: server.upload_file(BUCKET, r.name, directory / r.name), recordings))
        endpoints = {"loopback": server.env(BUCKET)}
        if latency_s:
            proxy = stack.enter_context(S3Proxy(server.port, latency_s=latency_s))
            endpoints["latency"] = {**server.env(BUCKET), "S3_ENDPOINT_URL": proxy.endpoint_url}
        yield endpoints


# --- measuring a run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A subprocess's wall time, the peaks of its process tree's summed RSS and PSS, and the tree's CPU time.

    RSS counts a page shared between processes (libraries, fork's copy-on-write) once per process, as the
    issue's "sum of RSS" does; PSS splits it between them, so it does not depend on how workers start.
    """

    wall_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    cpu_s: float
    server_cpu_s: float  # meanwhile: the moto server process
    harness_cpu_s: float  # meanwhile: this process (the sampler, the latency proxy's threads)


@dataclass
class _TreeSampler:
    """Samples a process tree: summed memory peaks, and each process's last seen CPU time.

    RSS and CPU times cost microseconds per process; the process list (a scan of /proc) and PSS (the
    kernel sums the process's page tables) cost milliseconds, so they are taken less often: sampling
    everything every 50 ms took about an eighth of this 2-core machine from the measured command, the
    PSS of every process every 0.5 s still 3 to 4 CPU-seconds of a one-minute run.
    """

    root: psutil.Process
    peak_rss: int = 0
    peak_pss: int = 0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    processes: list[psutil.Process] = field(default_factory=list)
    samples: int = 0

    def sample(self) -> None:
        with_pss = self.samples % PSS_EVERY == 0
        if self.samples % PROCESS_LIST_EVERY == 0:
            with suppress(psutil.NoSuchProcess):
                self.processes = [self.root, *self.root.children(recursive=True)]
        self.samples += 1
        rss = pss = 0
        for process in self.processes:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                memory = process.memory_full_info() if with_pss else process.memory_info()
                cpu = process.cpu_times()
                rss, pss = rss + memory.rss, pss + (memory.pss if with_pss else 0)
                self.cpu_by_pid[process.pid] = cpu.user + cpu.system
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)


def measure(command: Sequence[str], env: Mapping[str, str], log: Path) -> Measured:
    """Run `command` from the repository root, its output to `log`; raise if it fails.

    CPU time: two lower bounds, the larger wins. The children's rusage holds every process of the tree
    that its parent waited for, however short-lived; the sampled CPU time of every process seen also
    holds those nobody waits for (a forkserver and the workers it forks) but misses the last 50 ms of each
    (and any process that lives less than the 0.5 s between two looks at the process list).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    before, server_before, harness_before = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        _server_cpu(me),
        _cpu(me),
    )
    started = time.perf_counter()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            list(command), cwd=REPO, env=dict(env), stdout=output, stderr=subprocess.STDOUT
        )
        sampler = _TreeSampler(psutil.Process(process.pid))
        while process.poll() is None:
            sampler.sample()
            time.sleep(SAMPLE_INTERVAL_S)
    wall = time.perf_counter() - started
    after, server_after, harness_after = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        _server_cpu(me),
        _cpu(me),
    )
    if process.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({process.returncode}), see {log}:\n{tail}")
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu = max(reaped, sum(sampler.cpu_by_pid.values()))
    return Measured(
        wall,
        sampler.peak_rss,
        sampler.peak_pss,
        cpu,
        server_after - server_before,
        harness_after - harness_before,
    )


def _server_cpu(me: psutil.Process) -> float:
    """CPU seconds of this process's running children: the moto server (the measured command is not
    running yet, or reaped already, when this is called)."""
    return sum(_cpu(process) for process in me.children(recursive=True))


def _cpu(process: psutil.Process) -> float:
    with suppress(psutil.Error):
        times = process.cpu_times()
        return times.user + times.system
    return 0.0


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


@dataclass(frozen=True)
class RunResult:
    """One full run of one implementation on one endpoint."""

    implementation: str  # "seed" or "ours"
    endpoint: str  # "loopback" or "latency"
    scale: str  # "N" or "4N"
    recordings: int
    audio_seconds: float
    measured: Measured
    cache_bytes: int
    rows: int
    stage_seconds: float | None  # ours: run_prepare's own elapsed time (no interpreter start or imports)

    @property
    def throughput(self) -> float:
        """Audio-seconds per wall-second, interpreter start and imports included (both sides pay them)."""
        return self.audio_seconds / self.measured.wall_s

    @property
    def cache_per_audio_second(self) -> float:
        return self.cache_bytes / self.audio_seconds

    @property
    def cpu_utilisation(self) -> float:
        return self.measured.cpu_s / self.measured.wall_s / CORES

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "audio_seconds_per_second": round(self.throughput, 2),
            "cache_bytes_per_audio_second": round(self.cache_per_audio_second),
            "cpu_utilisation": round(self.cpu_utilisation, 3),
        }


def _subprocess_env(s3_env: Mapping[str, str]) -> dict[str, str]:
    return {**ENVIRONMENT, **s3_env, "PYTHONUNBUFFERED": "1"}


def run_seed(
    export: Path, output: Path, model: Path, s3_env: Mapping[str, str], log: Path, num_proc: int
) -> dict:
    """The seed's approach from scratch; returns the measurement and its summary."""
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable, "-m", "benchmarks.seed_baseline", "--annotations", str(export), "--output-dir",
        str(output), "--model", str(model), "--language", LANGUAGE, "--seed", str(SEED),
        "--num-proc", str(num_proc),
    ]  # fmt: skip
    measured = measure(command, _subprocess_env(s3_env), log)
    summary = json.loads((output / "seed_summary.json").read_text())
    cache_bytes = directory_bytes(output)
    shutil.rmtree(output)  # gigabytes of padded float32: measured, then gone
    return {"measured": measured, "cache_bytes": cache_bytes, "rows": summary["rows"], "stage_seconds": None}


def ours_command(export: Path, output: Path, model: Path) -> list[str]:
    return [
        sys.executable, "prepare_data.py", "--annotations", str(export), "--output-dir", str(output),
        "--model", str(model), "--language", LANGUAGE, "--seed", str(SEED), "--num-workers", "0",
    ]  # fmt: skip


def run_ours(export: Path, output: Path, model: Path, s3_env: Mapping[str, str], log: Path) -> dict:
    """prepare_data.py from scratch (`--num-workers 0`: one worker per core)."""
    shutil.rmtree(output, ignore_errors=True)
    measured = measure(ours_command(export, output, model), _subprocess_env(s3_env), log)
    report = json.loads((output / "prepare_report.json").read_text())
    rows = sum(report["examples"].values())
    return {
        "measured": measured,
        "cache_bytes": report["cache_bytes"],
        "rows": rows,
        "stage_seconds": report["elapsed_seconds"],
    }


_NOOP_PROBE = """
import json, sys, time
import boto3  # imported by prepare_data.py too, when it makes its S3 client
from whisper_pipeline.audio import AugmentationSettings
from whisper_pipeline.prepare import PrepareArguments, run_prepare
args = PrepareArguments(**json.loads(sys.argv[1]))
started = time.perf_counter()
summary = run_prepare(args, AugmentationSettings())
print(json.dumps({"seconds": time.perf_counter() - started, "current": summary.current}))
"""


def noop_rerun_seconds(export: Path, output: Path, model: Path, s3_env: Mapping[str, str]) -> float:
    """run_prepare on a current cache: what a rerun costs beyond starting Python and importing. The median
    of NOOP_REPEATS runs, each in a fresh process that imports what prepare_data.py imports (boto3
    included, which it imports on the way, when it makes its S3 client): in this
    process (torch, transformers and datasets loaded, a large heap) Python's garbage collector ran
    during every other rerun and doubled its time, which a user's rerun does not pay."""
    args = {
        "annotations": str(export), "output_dir": str(output), "model": str(model), "language": LANGUAGE,
        "seed": SEED,
    }  # fmt: skip
    seconds = []
    for _ in range(NOOP_REPEATS):
        result = subprocess.run(
            [sys.executable, "-c", _NOOP_PROBE, json.dumps(args)],
            cwd=REPO, env=_subprocess_env(s3_env), capture_output=True, text=True, check=True,
        )  # fmt: skip
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        if not outcome["current"]:
            raise RuntimeError(f"the rerun on {output} rebuilt the cache: it was not current")
        seconds.append(outcome["seconds"])
    return statistics.median(seconds)


# --- the compute limit ------------------------------------------------------------------------------

STAGES = ("decode", "resample", "augment", "log-mel", "tokenize", "write")


def measure_stages(
    directory: Path, recordings: Sequence[Recording], model: Path, workdir: Path
) -> list[dict[str, float]]:
    """CPU seconds of each stage on `recordings`, done as prepare does it, by each of one process per core.

    Measured with every core busy, as in a full run: the processes run all the stages on the whole sample
    at the same time (one BLAS thread each). A core's speed depends on what its neighbours do (shared
    caches and memory bandwidth, SMT siblings on a VM), so a cost taken on an otherwise idle machine would
    promise a limit that two busy cores never reach.
    """
    jobs = [(directory, recordings, model, workdir / f"stage_costs_{index}") for index in range(CORES)]
    with multiprocessing.get_context("spawn").Pool(CORES) as pool:
        return pool.starmap(_stage_seconds, jobs)


def stage_costs(measurements: Sequence[list[dict[str, float]]], recordings: Sequence[Recording]) -> dict:
    """Single-core CPU ms per audio-second of each stage: the mean over every process of every measurement
    (taken right before and right after the 4N run: this VM's speed drifts by tens of percent over
    minutes, and the share of the limit compares the two)."""
    seconds = speech_seconds(recordings)

    def per_second(processes: Sequence[dict[str, float]]) -> dict[str, float]:
        return {
            stage: sum(spent[stage] for spent in processes) / len(processes) / seconds
            for stage in processes[0]
        }

    def total(costs: Mapping[str, float]) -> float:
        return sum(costs[stage] for stage in STAGES)

    overall = per_second([spent for measurement in measurements for spent in measurement])
    return {
        "sample_recordings": len(recordings),
        "sample_audio_seconds": round(seconds, 2),
        "processes": len(measurements[0]),
        "measurements": len(measurements),
        "total_ms_per_audio_second_by_measurement": [
            round(1000 * total(per_second(measurement)), 4) for measurement in measurements
        ],
        "ms_per_audio_second": {stage: round(1000 * value, 4) for stage, value in overall.items()},
        "total_ms_per_audio_second": round(1000 * total(overall), 4),
        "cores": CORES,
        "limit_audio_seconds_per_second": round(CORES / total(overall), 1),
    }


def _stage_seconds(
    directory: Path, recordings: Sequence[Recording], model: Path, workdir: Path
) -> dict[str, float]:
    """CPU seconds of each stage over `recordings`, in this process with one BLAS/torch thread, like a
    worker. decode + resample + augment + log-mel is a worker's share; tokenize (window planning) is the
    main process's; write is both: a worker encodes and writes a recording's shard, the main process
    commits its meta, then writes the final splits. `worker_check` is process_recording timed whole: it
    should match the worker's stages and its part of write."""
    limit_threads()
    settings = AugmentationSettings()
    featurizer = LogMelFeaturizer.from_pretrained(model)
    layout = CacheLayout(workdir / "sample_cache")
    shutil.rmtree(layout.root, ignore_errors=True)
    store = ShardStore(layout.staging)
    # As in a worker forked from the fork server, with its modules imported: process_recording runs as there.
    for module in WORKER_MODULES:
        importlib.import_module(module)
    init_worker(WorkerSetup(featurizer, settings, SEED, store.directory))
    encoder = LabelEncoder.from_pretrained(model, LANGUAGE, "transcribe")
    workdir.mkdir(parents=True, exist_ok=True)
    export = write_export(recordings, workdir / "sample_export.json")
    tasks = parse_export(load_export(export.read_bytes()), PrepareArguments().annotation_settings).tasks
    splits = assign_splits(
        [task.audio_uri for task in tasks], seed=SEED, val_fraction=PrepareArguments().val_fraction
    )
    spent = dict.fromkeys((*STAGES, "worker_check"), 0.0)

    def timed(stage: str, function, *args, **kwargs):
        started = time.process_time()
        result = function(*args, **kwargs)
        spent[stage] += time.process_time() - started
        return result

    sources: list[RowSource] = []
    by_name = {recording.uri: recording for recording in recordings}
    for task in tasks:
        windows, _ = timed("tokenize", pack_windows, task, encoder.encode)
        data = (directory / by_name[task.audio_uri].name).read_bytes()
        source, rate = timed("decode", sf.read, io.BytesIO(data), dtype="float32", always_2d=True)
        mono = timed("decode", np.mean, source, axis=1, dtype=np.float32)
        samples = timed("resample", soxr.resample, mono, rate, SAMPLE_RATE, RESAMPLE_QUALITY)
        copies = 1 if splits[task.audio_uri] == TRAIN else 0
        for window in windows:
            clean = cut(samples, window.start, window.end)
            timed("log-mel", featurizer.compute, clean)
            if copies:
                variant = timed(
                    "augment", augment, clean, settings, augmentation_seed(SEED, window.window_id, 1)
                )
                if len(variant) <= CHUNK_SECONDS * SAMPLE_RATE:  # else skipped, as recording_rows does
                    timed("log-mel", featurizer.compute, variant)
        work = RecordingWork(task.task_id, task.audio_uri, splits[task.audio_uri], tuple(windows), copies)
        outcome = timed("worker_check", process_recording, work, data)
        rows, _, _ = recording_rows(work, samples)  # the rows process_recording wrote: written again
        shard = timed("write", encode_shard, rows)
        timed("write", store.write_rows, work.key, shard)
        timed("write", store.commit, work.key, {"split": work.split, "rows": outcome.rows})
        sources.append(RowSource(work.split, store.arrow_path(work.key)))
    import datasets  # noqa: F401  (untimed: the first append would import it, once per run, not per row)

    with CacheBuilder(layout, featurizer.n_mels) as cache:
        for source in sources:
            timed("write", cache.append, source)
        timed("write", cache.commit, {}, lambda size: {"cache_bytes": size})
    shutil.rmtree(workdir, ignore_errors=True)
    return spent


# --- the benchmark ----------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Everything in order; returns the JSON document (figures, goals, tables)."""
    started, load_at_start = time.perf_counter(), os.getloadavg()
    workdir, model = Path(args.workdir).resolve(), Path(args.model).resolve()
    ensure_pretrained(model)
    corpus_dir = workdir / "corpus"
    recordings = build_corpus(corpus_dir, SCALE * args.recordings)
    counts = {"N": args.recordings, "4N": SCALE * args.recordings}
    exports = {
        scale: write_export(recordings[:count], workdir / f"export_{count}.json")
        for scale, count in counts.items()
    }
    seconds = {scale: speech_seconds(recordings[:count]) for scale, count in counts.items()}
    sample = recordings[: min(args.stage_sample, args.recordings)]
    measurements: list[list[dict[str, float]]] = []

    def measure_stage_costs() -> None:
        print(f"stage costs on {len(sample)} recordings ...", end=" ", flush=True)
        measurements.append(measure_stages(corpus_dir, sample, model, workdir))
        print("done", flush=True)

    # One-time costs fall on neither side: librosa compiles (and caches) numba kernels on its first import.
    subprocess.run(
        [sys.executable, "-c", "import audiomentations, datasets, librosa, transformers"], check=True
    )
    plan: list[tuple[str, str, str]] = []
    runs: list[RunResult] = []
    with serve_corpus(corpus_dir, recordings, workdir / "s3", args.latency_ms / 1000) as endpoints:
        for endpoint in endpoints:
            plan += [("seed", endpoint, "N")] if not args.skip_baseline else []
            plan += [("ours", endpoint, "N")]
        plan += [("ours", "loopback", "4N")]
        plan += [("seed", "loopback", "4N")] if args.baseline_4n and not args.skip_baseline else []
        for implementation, endpoint, scale in plan:
            name = f"{implementation}_{endpoint}_{scale}"
            output, log = workdir / "out" / name, workdir / "logs" / f"{name}.log"
            limit_run = (implementation, endpoint, scale) == ("ours", "loopback", "4N")
            if limit_run:
                measure_stage_costs()
            print(
                f"{name}: {counts[scale]} recordings, {seconds[scale]:.0f} audio-s ...", end=" ", flush=True
            )
            if implementation == "seed":
                outcome = run_seed(exports[scale], output, model, endpoints[endpoint], log, args.num_proc)
            else:
                outcome = run_ours(exports[scale], output, model, endpoints[endpoint], log)
            runs.append(RunResult(implementation, endpoint, scale, counts[scale], seconds[scale], **outcome))
            print(f"{runs[-1].throughput:.0f} audio-s/s, {runs[-1].measured.wall_s:.1f} s", flush=True)
            if limit_run:
                measure_stage_costs()
        full = workdir / "out" / "ours_loopback_4N"
        noop_cli = measure(
            ours_command(exports["4N"], full, model),
            _subprocess_env(endpoints["loopback"]),
            workdir / "logs" / "ours_noop.log",
        )
        noop_stage = noop_rerun_seconds(exports["4N"], full, model, endpoints["loopback"])
    costs = stage_costs(measurements, sample)

    regions = [u.end - u.start for recording in recordings[: counts["N"]] for u in recording.utterances]
    document: dict[str, Any] = {
        "machine": {
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            "cores": CORES,
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "settings": {
            "recordings": counts,
            "audio_seconds": {scale: round(value, 2) for scale, value in seconds.items()},
            "mean_region_seconds": round(sum(regions) / len(regions), 2),
            "latency_ms": args.latency_ms,
            "seed_num_proc": args.num_proc,
            "source_rate": SOURCE_RATE,
            "formats": FORMATS,
        },
        "runs": [run.to_dict() for run in runs],
        "compute": {
            **costs,
            "ours_stage_share_of_cpu": {
                f"{run.endpoint}_{run.scale}": round(stage_share(run, costs), 3)
                for run in runs
                if run.implementation == "ours"
            },
        },
        "noop_rerun": {
            "run_prepare_seconds": round(noop_stage, 3),
            "full_run_prepare_seconds": _run(runs, "ours", "loopback", "4N").stage_seconds,
            "cli_wall_seconds": round(noop_cli.wall_s, 3),
            "full_cli_wall_seconds": round(_run(runs, "ours", "loopback", "4N").measured.wall_s, 3),
        },
    }
    document["goals"] = [
        asdict(goal) for goal in evaluate_goals(runs, costs, document["noop_rerun"], args.latency_ms)
    ]
    document["markdown"] = markdown(document, runs, args.latency_ms)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def _run(runs: Sequence[RunResult], implementation: str, endpoint: str, scale: str) -> RunResult | None:
    return next(
        (r for r in runs if (r.implementation, r.endpoint, r.scale) == (implementation, endpoint, scale)),
        None,
    )


@dataclass(frozen=True)
class Goal:
    goal: str
    measured: str
    passed: bool | None  # None: not measured in this run (--skip-baseline, --latency-ms 0)

    @property
    def verdict(self) -> str:
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"


def evaluate_goals(
    runs: Sequence[RunResult], costs: Mapping[str, Any], noop: Mapping[str, Any], latency_ms: float
) -> list[Goal]:
    goals = []
    for endpoint, target, where in (
        ("loopback", GOAL_SPEEDUP_LOOPBACK, "on loopback"),
        ("latency", GOAL_SPEEDUP_LATENCY, f"with {latency_ms:g} ms round trip"),
    ):
        ours, seed = _run(runs, "ours", endpoint, "N"), _run(runs, "seed", endpoint, "N")
        if ours and seed:
            ratio = ours.throughput / seed.throughput
            measured = f"{ratio:.2f}x ({ours.throughput:.0f} vs {seed.throughput:.0f} audio-s/s)"
            goals.append(Goal(f"throughput >= {target:g}x the seed's {where}", measured, ratio >= target))
        else:
            goals.append(Goal(f"throughput >= {target:g}x the seed's {where}", "not run", None))
    limit = costs["limit_audio_seconds_per_second"]
    small, large = _run(runs, "ours", "loopback", "N"), _run(runs, "ours", "loopback", "4N")
    efficiency = large.throughput / limit
    goals.append(
        Goal(
            f">= {GOAL_EFFICIENCY:.0%} of the compute limit ({limit:.0f} audio-s/s on {CORES} cores)",
            f"{efficiency:.0%} at 4N ({large.throughput:.0f} audio-s/s); {small.throughput / limit:.0%} at N",
            efficiency >= GOAL_EFFICIENCY,
        )
    )
    seed = _run(runs, "seed", "loopback", "N")
    if seed:
        ratio = seed.cache_per_audio_second / small.cache_per_audio_second
        sizes = f"{small.cache_per_audio_second / 1e3:.1f} vs {seed.cache_per_audio_second / 1e3:.1f} KB"
        measured = f"{ratio:.1f}x ({sizes})"
        goals.append(
            Goal(
                f"cache >= {GOAL_CACHE_RATIO:g}x smaller per audio-second",
                measured,
                ratio >= GOAL_CACHE_RATIO,
            )
        )
    else:
        goals.append(Goal(f"cache >= {GOAL_CACHE_RATIO:g}x smaller per audio-second", "not run", None))
    growth = large.measured.peak_rss_bytes / small.measured.peak_rss_bytes
    goals.append(
        Goal(
            f"peak memory < {GOAL_PEAK_BYTES / 1e9:g} GB, flat from N to 4N (<= {GOAL_FLAT_MEMORY:g}x)",
            f"{small.measured.peak_rss_bytes / 1e9:.2f} GB at N, "
            f"{large.measured.peak_rss_bytes / 1e9:.2f} GB at 4N ({growth:.2f}x); PSS "
            f"{small.measured.peak_pss_bytes / 1e9:.2f} and {large.measured.peak_pss_bytes / 1e9:.2f} GB",
            max(small.measured.peak_rss_bytes, large.measured.peak_rss_bytes) < GOAL_PEAK_BYTES
            and growth <= GOAL_FLAT_MEMORY,
        )
    )
    scaling = large.throughput / small.throughput
    goals.append(
        Goal(
            f"throughput per audio-second flat from N to 4N (>= {GOAL_FLAT_THROUGHPUT:g}x)",
            f"{scaling:.2f}x ({small.throughput:.0f} -> {large.throughput:.0f} audio-s/s)",
            scaling >= GOAL_FLAT_THROUGHPUT,
        )
    )
    fraction = noop["run_prepare_seconds"] / noop["full_run_prepare_seconds"]
    goals.append(
        Goal(
            f"no-op rerun < {GOAL_NOOP_FRACTION:.0%} of a full run",
            f"{fraction:.2%} ({noop['run_prepare_seconds']:.2f} s of "
            f"{noop['full_run_prepare_seconds']:.1f} s in run_prepare; as a command "
            f"{noop['cli_wall_seconds']:.1f} s of {noop['full_cli_wall_seconds']:.1f} s)",
            fraction < GOAL_NOOP_FRACTION,
        )
    )
    return goals


# --- output -----------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def stage_share(run: RunResult, costs: Mapping[str, Any]) -> float:
    """What the stages need for the run's audio over the CPU time its process tree used: the rest went to
    start-up, transfers and moving data between processes. Unlike the share of the limit, it does not
    drop when other programs take the cores."""
    return run.audio_seconds * costs["total_ms_per_audio_second"] / 1000 / run.measured.cpu_s


def _ratio(ours: float | None, seed: float | None) -> str:
    return f"{ours / seed:.2f}x" if ours is not None and seed else "n/a"


def markdown(document: Mapping[str, Any], runs: Sequence[RunResult], latency_ms: float) -> str:
    """The tables the README shows: comparison at N, scaling, compute limit, goals."""
    settings, costs = document["settings"], document["compute"]
    gigabytes = "{:.2f} GB".format
    metrics = (
        ("audio-seconds per wall-second", lambda r: r.throughput, lambda v: f"{v:.0f}"),
        ("cache per audio-second", lambda r: r.cache_per_audio_second, lambda v: f"{v / 1e3:.1f} KB"),
        ("peak memory (process tree RSS)", lambda r: r.measured.peak_rss_bytes / 1e9, gigabytes),
        ("peak memory (process tree PSS)", lambda r: r.measured.peak_pss_bytes / 1e9, gigabytes),
        ("CPU utilisation", lambda r: r.cpu_utilisation, lambda v: f"{v:.0%}"),
        ("examples in the cache", lambda r: r.rows, lambda v: f"{v}"),
        ("wall time", lambda r: r.measured.wall_s, lambda v: f"{v:.1f} s"),
    )
    endpoints = [("loopback", "loopback")] + ([("latency", f"+{latency_ms:g} ms")] if latency_ms else [])
    header = [""]
    for _, title in endpoints:
        header += [f"seed, {title}", f"ours, {title}", "ours / seed"]
    rows = []
    for label, value, show in metrics:
        row = [label]
        for endpoint, _ in endpoints:
            seed, ours = _run(runs, "seed", endpoint, "N"), _run(runs, "ours", endpoint, "N")
            row += [show(value(seed)) if seed else "not run", show(value(ours)) if ours else "not run"]
            row += [_ratio(value(ours) if ours else None, value(seed) if seed else None)]
        rows.append(row)
    counts, seconds = settings["recordings"], settings["audio_seconds"]
    small, large = _run(runs, "ours", "loopback", "N"), _run(runs, "ours", "loopback", "4N")
    scaling = [
        [label, show(value(small)), show(value(large)), _ratio(value(large), value(small))]
        for label, value, show in metrics
        if label != "examples in the cache"
    ]
    per_stage = costs["ms_per_audio_second"]
    limit = costs["limit_audio_seconds_per_second"]
    compute = [[stage, f"{per_stage[stage]:.3f}"] for stage in STAGES]
    compute += [
        ["total", f"{costs['total_ms_per_audio_second']:.3f}"],
        [
            "total, measured right before / right after the 4N run",
            " / ".join(f"{total:.3f}" for total in costs["total_ms_per_audio_second_by_measurement"]),
        ],
        ["(check: process_recording timed whole)", f"{per_stage['worker_check']:.3f}"],
        [f"compute limit on {CORES} cores", f"{limit:.0f} audio-s/s"],
        [
            "ours at N / 4N, share of the limit",
            f"{small.throughput / limit:.0%} / {large.throughput / limit:.0%}",
        ],
        [
            "ours at N / 4N, share of its CPU time spent in these stages",
            f"{stage_share(small, costs):.0%} / {stage_share(large, costs):.0%}",
        ],
    ]
    goals = [[goal["goal"], goal["measured"], Goal(**goal).verdict] for goal in document["goals"]]
    return "\n\n".join(
        [
            f"**Stage 1 at N = {counts['N']} recordings ({seconds['N'] / 60:.0f} audio-min, regions of "
            f"{settings['mean_region_seconds']:.1f} s on average), {CORES} cores**",
            markdown_table(header, rows),
            f"**Scaling, ours on loopback: N = {counts['N']} ({seconds['N'] / 60:.0f} audio-min) and 4N = "
            f"{counts['4N']} ({seconds['4N'] / 60:.0f} audio-min)**",
            markdown_table(["", "N", "4N", "4N / N"], scaling),
            f"**Compute limit: CPU ms per audio-second on one core while all {costs['processes']} are busy, "
            f"sample of {costs['sample_recordings']} recordings**",
            markdown_table(["stage", "ms per audio-second"], compute),
            "**Goals**",
            markdown_table(["goal", "measured", "result"], goals),
        ]
    )


def publish(document: Mapping[str, Any], output: Path) -> None:
    """Print a benchmark's tables and write its JSON (what the README quotes)."""
    print()
    print(document["markdown"])
    print(f"\nwhole benchmark: {document['wall_seconds']:.0f} s")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=150, help="N (the scaling run has 4N; default 150)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added round trip (0: loopback only)")
    parser.add_argument("--skip-baseline", action="store_true", help="run only ours")
    parser.add_argument("--baseline-4n", action="store_true", help="also run the seed's approach at 4N")
    parser.add_argument("--model", default="model", help="whisper-base directory (built if missing)")
    parser.add_argument("--workdir", default="benchmarks/work", help="corpus, exports, caches, logs")
    parser.add_argument("--output", default="benchmarks/results/prepare.json", help="the JSON results")
    parser.add_argument("--stage-sample", type=int, default=16, help="recordings timed stage by stage")
    parser.add_argument("--num-proc", type=int, default=4, help="the seed's datasets.map processes (its 4)")
    args = parser.parse_args(argv)
    document = run_benchmark(args)
    publish(document, Path(args.output))
    failed = [goal for goal in document["goals"] if goal["passed"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
