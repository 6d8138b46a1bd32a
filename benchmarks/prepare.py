"""Stage 1 benchmark: prepare_data.py against the seed's approach, on the same S3 data in the same run.

    python -m benchmarks.prepare [--recordings 150] [--latency-ms 50] [--skip-baseline]

4N synthetic recordings (espeak-ng speech, FLAC and MP3 at 44.1 kHz as archives hold them) are served by a
local S3 server, directly and through a proxy that adds a round trip. The seed's approach
(benchmarks/seed_baseline.py) and prepare_data.py run as subprocesses measured alike; the compute limit
comes from profiling the real worker path (benchmarks/stages.py). Figures, goals and tables are printed and
written as JSON (--output); benchmarks/README.md says what each means.
"""

from __future__ import annotations

import argparse
import json
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import soxr
from tqdm.auto import tqdm

from benchmarks import stages
from benchmarks.readme import goals_table, table
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.demo.corpus import PITCHES, SPEEDS, VOICES, demo_sentences
from whisper_pipeline.demo.pretrained import ensure_pretrained
from whisper_pipeline.prepare.audio import RESAMPLE_QUALITY
from whisper_pipeline.prepare.run import PrepareArguments
from whisper_pipeline.testing import synthetic
from whisper_pipeline.testing.local_s3 import LocalS3Server
from whisper_pipeline.testing.s3_proxy import S3Proxy

REPO = Path(__file__).resolve().parents[1]
BUCKET, LANGUAGE, SEED = "bench-speech", "vi", 42
SOURCE_RATE, FORMATS = 44_100, ("flac", "mp3")  # as archives hold audio: prepare decodes and resamples it
REGIONS_PER_RECORDING = (3, 5)
SENTENCES_PER_REGION = (1, 3)  # regions of about 2 to 8 s, like sentence-level annotation
CORPUS_REVISION = 2  # bump when the recipe changes: the kept corpus is then synthesised again
SCALE = 4  # the scaling run has SCALE times the recordings
SAMPLE_INTERVAL_S = 0.05  # RSS and CPU times of the measured processes
PROCESS_LIST_EVERY, PSS_EVERY = 10, 40  # samples; then also the process list, and each process's PSS
NOOP_REPEATS = 5  # no-op reruns timed; the median is reported
CORES = os.cpu_count() or 1
ENVIRONMENT = dict(os.environ)  # what the measured commands get, as it was when the benchmark started

# Goals of the GitHub issue.
GOAL_SPEEDUP = {"loopback": 3.0, "latency": 4.0}
GOAL_EFFICIENCY = 0.75
GOAL_CACHE_RATIO = 7.0
GOAL_PEAK_BYTES = 1.5e9
GOAL_FLAT_MEMORY = 1.25  # peak at 4N at most this times the peak at N
GOAL_FLAT_THROUGHPUT = 0.8  # throughput at 4N at least this times the throughput at N
GOAL_NOOP_FRACTION = 0.01


@dataclass(frozen=True)
class Recording:
    """One synthesised recording: its file (also its S3 key) and the regions its export task holds."""

    name: str
    duration: float
    utterances: tuple[synthetic.Utterance, ...]


def _synthesise(directory: Path, index: int, sentences: Sequence[str]) -> Recording:
    """Recording `index` depends on nothing else: the corpus grows without changing its first recordings."""
    rng = random.Random(f"{SEED}/{index}")
    voice, speed, pitch = rng.choice(VOICES), rng.choice(SPEEDS), rng.choice(PITCHES)
    regions = range(rng.randint(*REGIONS_PER_RECORDING))
    texts = [" ".join(rng.sample(list(sentences), rng.randint(*SENTENCES_PER_REGION))) for _ in regions]
    parts = [synthetic.Part(synthetic.synthesize(t, voice, speed=speed, pitch=pitch), t) for t in texts]
    samples, utterances = synthetic.compose(parts)
    source = soxr.resample(samples, SAMPLE_RATE, SOURCE_RATE, RESAMPLE_QUALITY)
    name = f"audio/{index:05d}.{FORMATS[index % len(FORMATS)]}"
    (directory / name).write_bytes(synthetic.encode_audio(source, SOURCE_RATE, name.rsplit(".", 1)[1]))
    return Recording(name, len(source) / SOURCE_RATE, tuple(utterances))


def build_corpus(directory: Path, count: int) -> list[Recording]:
    """The first `count` recordings, synthesising only those not in `directory` yet."""
    manifest = directory / "manifest.json"
    kept = json.loads(manifest.read_text()) if manifest.is_file() else {}
    recordings = []
    for entry in kept["recordings"] if kept.get("revision") == CORPUS_REVISION else []:
        if not (directory / entry["name"]).is_file():
            break
        utterances = tuple(synthetic.Utterance(**utterance) for utterance in entry["utterances"])
        recordings.append(Recording(entry["name"], entry["duration"], utterances))
    if len(recordings) < count:
        (directory / "audio").mkdir(parents=True, exist_ok=True)
        sentences, missing = demo_sentences(), range(len(recordings), count)
        with ThreadPoolExecutor(CORES) as pool:  # espeak-ng and the encoders run outside the GIL
            made = pool.map(lambda index: _synthesise(directory, index, sentences), missing)
            recordings += tqdm(made, total=len(missing), desc="synthesising recordings", unit="recording")
        kept = {"revision": CORPUS_REVISION, "recordings": [asdict(recording) for recording in recordings]}
        manifest.write_text(json.dumps(kept))
    return recordings[:count]


def write_export(recordings: Sequence[Recording], path: Path) -> Path:
    """The Label Studio full JSON export of `recordings`, audio on s3://BUCKET."""
    export = synthetic.LabelStudioExport(seed=SEED)
    for recording in recordings:
        export.add_task(f"s3://{BUCKET}/{recording.name}", recording.utterances, duration=recording.duration)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export.write(path)


def speech_seconds(recordings: Sequence[Recording]) -> float:
    """Audio-seconds: seconds of transcribed speech in the export, the same count for both sides."""
    return sum(u.end - u.start for recording in recordings for u in recording.utterances)


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


def _cpu(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with suppress(psutil.Error):
            total += sum(process.cpu_times()[:2])
    return total


def measure(command: Sequence[str], s3_env: Mapping[str, str], log: Path) -> dict[str, float]:
    """Run `command` from the repository root, its output to `log`; raise if it fails. Returns its wall
    time, the peaks of its process tree's summed RSS and PSS, the tree's CPU time, and meanwhile that of
    the S3 server (this process's other child) and of this process (the sampler, the latency proxy).

    RSS counts a page shared between processes once per process, as the issue's "sum of RSS" does; PSS
    splits it between them. The process list and PSS take milliseconds to read, so they are sampled less
    often than RSS and CPU times, or the sampler would take the measured command's cores. CPU time is the
    larger of two lower bounds: the rusage of the reaped children (without the processes nobody waits for:
    a fork server's) and the last sampled time of every process seen (without its last interval)."""
    me, children = psutil.Process(), resource.getrusage(resource.RUSAGE_CHILDREN)
    log.parent.mkdir(parents=True, exist_ok=True)
    server, harness, started = _cpu(me.children(True)), _cpu([me]), time.perf_counter()
    samples, peak_rss, peak_pss, cpu_by_pid = 0, 0, 0, {}
    with open(log, "wb") as output:
        env = {**ENVIRONMENT, **s3_env, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        root, tree = psutil.Process(process.pid), []
        while process.poll() is None:
            if samples % PROCESS_LIST_EVERY == 0:
                with suppress(psutil.Error):
                    tree = [root, *root.children(recursive=True)]
            rss = pss = 0
            for member in tree:
                with suppress(psutil.Error):
                    memory = member.memory_full_info() if samples % PSS_EVERY == 0 else member.memory_info()
                    cpu_by_pid[member.pid] = sum(member.cpu_times()[:2])
                    rss, pss = rss + memory.rss, pss + getattr(memory, "pss", 0)
            peak_rss, peak_pss, samples = max(peak_rss, rss), max(peak_pss, pss), samples + 1
            time.sleep(SAMPLE_INTERVAL_S)
    wall = time.perf_counter() - started
    if process.returncode:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({process.returncode}), see {log}:\n{tail}")
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = now.ru_utime - children.ru_utime + now.ru_stime - children.ru_stime
    figures = {"wall_s": wall, "peak_rss_bytes": peak_rss, "peak_pss_bytes": peak_pss}
    figures.update(cpu_s=max(reaped, sum(cpu_by_pid.values())), server_cpu_s=_cpu(me.children(True)) - server)
    return {**figures, "harness_cpu_s": _cpu([me]) - harness}


def command(implementation: str, export: Path, output: Path, model: Path, num_proc: int) -> list[str]:
    """The seed's approach, or prepare_data.py with one worker per core (`--num-workers 0`)."""
    common = ["--annotations", str(export), "--output-dir", str(output), "--model", str(model)]
    common += ["--language", LANGUAGE, "--seed", str(SEED)]
    if implementation == "seed":
        return [sys.executable, "-m", "benchmarks.seed_baseline", *common, "--num-proc", str(num_proc)]
    return [sys.executable, "prepare_data.py", *common, "--num-workers", "0"]


def outcome(implementation: str, output: Path) -> dict[str, Any]:
    """What a run left: its examples, the cache's bytes, and (ours) run_prepare's own seconds."""
    if implementation == "seed":
        rows = json.loads((output / "seed_summary.json").read_text())["rows"]
        cache_bytes = sum(item.stat().st_size for item in output.rglob("*") if item.is_file())
        shutil.rmtree(output)  # gigabytes of padded float32: measured, then gone
        return {"rows": rows, "cache_bytes": cache_bytes, "stage_seconds": None}
    report = json.loads((output / "prepare_report.json").read_text())
    rows = sum(report["examples"].values())
    return {"rows": rows, "cache_bytes": report["cache_bytes"], "stage_seconds": report["elapsed_seconds"]}


_NOOP_PROBE = """
import json, sys, time
import boto3  # imported by prepare_data.py too, when it makes its S3 client
from whisper_pipeline.prepare.run import PrepareArguments, run_prepare
args = PrepareArguments(**json.loads(sys.argv[1]))
started = time.perf_counter()
summary = run_prepare(args)
print(json.dumps({"seconds": time.perf_counter() - started, "current": summary.current}))
"""


def noop_rerun_seconds(export: Path, output: Path, model: Path, s3_env: Mapping[str, str]) -> float:
    """run_prepare on a current cache, the median of NOOP_REPEATS: what a rerun costs beyond starting
    Python and importing. Each runs in a fresh process that imports what prepare_data.py imports: in this
    one (torch and datasets loaded, a large heap) the garbage collector would run during the rerun."""
    args = {"annotations": str(export), "output_dir": str(output), "model": str(model), "seed": SEED}
    probe, env, seconds = [sys.executable, "-c", _NOOP_PROBE, json.dumps(args)], {**ENVIRONMENT, **s3_env}, []
    for _ in range(NOOP_REPEATS):
        result = subprocess.run(probe, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        rerun = json.loads(result.stdout.strip().splitlines()[-1])
        if not rerun["current"]:
            raise RuntimeError(f"the rerun on {output} rebuilt the cache: it was not current")
        seconds.append(rerun["seconds"])
    return statistics.median(seconds)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Everything in order; returns the JSON document (figures, goals, tables)."""
    started, load_at_start = time.perf_counter(), os.getloadavg()
    workdir, model = Path(args.workdir).resolve(), Path(args.model).resolve()
    ensure_pretrained(model)
    corpus_dir = workdir / "corpus"
    recordings = build_corpus(corpus_dir, SCALE * args.recordings)
    counts = {"N": args.recordings, "4N": SCALE * args.recordings}
    exports = {n: write_export(recordings[:k], workdir / f"export_{k}.json") for n, k in counts.items()}
    seconds = {n: speech_seconds(recordings[:k]) for n, k in counts.items()}
    sample = recordings[: min(args.stage_sample, args.recordings)]
    sample_export = write_export(sample, workdir / "export_sample.json")
    profiled = PrepareArguments(output_dir=str(workdir / "stages"), model=str(model), seed=SEED)
    # One-time costs fall on neither side: librosa compiles (and caches) numba kernels on its first import.
    warm_up = "import audiomentations, datasets, librosa, transformers"
    subprocess.run([sys.executable, "-c", warm_up], check=True)
    runs: dict[str, dict[str, Any]] = {}

    def run(implementation: str, endpoint: str, n: str) -> None:
        name = f"{implementation}_{endpoint}_{n}"
        output = workdir / "out" / name
        shutil.rmtree(output, ignore_errors=True)
        print(f"{name}: {counts[n]} recordings, {seconds[n]:.0f} audio-s ...", end=" ", flush=True)
        ran = command(implementation, exports[n], output, model, args.num_proc)
        measured = measure(ran, endpoints[endpoint], workdir / "logs" / f"{name}.log")
        result = runs[name] = {"recordings": counts[n], "audio_seconds": seconds[n], "measured": measured}
        result.update(outcome(implementation, output))
        # per wall-second of the whole command, interpreter start and imports included: both sides pay them
        result["audio_seconds_per_second"] = round(seconds[n] / measured["wall_s"], 2)
        result["cache_bytes_per_audio_second"] = round(result["cache_bytes"] / seconds[n])
        result["cpu_utilisation"] = round(measured["cpu_s"] / measured["wall_s"] / CORES, 3)
        print(f"{result['audio_seconds_per_second']:.0f} audio-s/s, {measured['wall_s']:.1f} s", flush=True)

    def stage_costs() -> list[dict[str, float]]:
        print(f"profiling {len(sample)} recordings in {CORES} feature workers ...", flush=True)
        return stages.measure(sample_export, corpus_dir, profiled, CORES)

    with serve_corpus(corpus_dir, recordings, workdir / "s3", args.latency_ms / 1000) as endpoints:
        for endpoint in endpoints:
            for implementation in ("ours",) if args.skip_baseline else ("seed", "ours"):
                run(implementation, endpoint, "N")
        measurements = [stage_costs()]  # right before and after the 4N run: this VM's speed drifts
        run("ours", "loopback", "4N")
        measurements.append(stage_costs())
        cache, loopback = workdir / "out" / "ours_loopback_4N", endpoints["loopback"]
        rerun = command("ours", exports["4N"], cache, model, 0)
        rerun_s = measure(rerun, loopback, workdir / "logs" / "noop.log")["wall_s"]
        noop_s = noop_rerun_seconds(exports["4N"], cache, model, loopback)
    full_run = runs["ours_loopback_4N"]
    noop = {"run_prepare_seconds": round(noop_s, 3), "full_run_prepare_seconds": full_run["stage_seconds"]}
    noop |= {"cli_wall_seconds": round(rerun_s, 3), "full_cli_wall_seconds": full_run["measured"]["wall_s"]}
    regions = [u.end - u.start for recording in recordings[: counts["N"]] for u in recording.utterances]
    machine = {"load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(), "cores": CORES}
    machine.update(processor=platform.processor() or platform.machine(), python=platform.python_version())
    settings = {"recordings": counts, "audio_seconds": {n: round(s, 2) for n, s in seconds.items()}}
    settings.update(mean_region_seconds=round(sum(regions) / len(regions), 2), latency_ms=args.latency_ms)
    settings.update(seed_num_proc=args.num_proc, source_rate=SOURCE_RATE, formats=FORMATS)
    compute = stages.stage_costs(measurements, len(sample), speech_seconds(sample), CORES)
    document = dict(machine=machine, settings=settings, runs=runs, compute=compute, noop_rerun=noop)
    document["goals"] = goals(document)
    document["markdown"] = markdown(document)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def stage_share(run: Mapping[str, Any], compute: Mapping[str, Any]) -> float:
    """What the stages need for the run's audio over the CPU time its process tree used: the rest went to
    start-up, transfers and moving data between processes. Unlike the share of the limit, it does not
    drop when other programs take the cores."""
    return run["audio_seconds"] * compute["total_ms_per_audio_second"] / 1000 / run["measured"]["cpu_s"]


def goals(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue: what it asks, what was measured, and whether it passed (None: not run)."""
    runs, noop, latency = document["runs"], document["noop_rerun"], document["settings"]["latency_ms"]
    small, large, seed = runs["ours_loopback_N"], runs["ours_loopback_4N"], runs.get("seed_loopback_N")
    speed, kb = "audio_seconds_per_second", "cache_bytes_per_audio_second"
    limit = document["compute"]["limit_audio_seconds_per_second"]
    checked: list[dict[str, Any]] = []

    def goal(asks: str, measured: str, passed: bool | None) -> None:
        checked.append({"goal": asks, "measured": measured, "passed": passed})

    for endpoint, where in ("loopback", "on loopback"), ("latency", f"with {latency:g} ms round trip"):
        ours, base = runs.get(f"ours_{endpoint}_N"), runs.get(f"seed_{endpoint}_N")
        ratio, target = ours[speed] / base[speed] if ours and base else None, GOAL_SPEEDUP[endpoint]
        shown = f"{ratio:.2f}x ({ours[speed]:.0f} vs {base[speed]:.0f} audio-s/s)" if ratio else "not run"
        passed = None if ratio is None else ratio >= target
        goal(f"throughput >= {target:g}x the seed's {where}", shown, passed)
    efficiency = large[speed] / limit
    asks = f">= {GOAL_EFFICIENCY:.0%} of the compute limit ({limit:.0f} audio-s/s on {CORES} cores)"
    shown = f"{efficiency:.0%} at 4N ({large[speed]:.0f} audio-s/s); {small[speed] / limit:.0%} at N"
    goal(asks, shown, efficiency >= GOAL_EFFICIENCY)
    ratio = seed[kb] / small[kb] if seed else None
    shown = f"{ratio:.1f}x ({small[kb] / 1e3:.1f} vs {seed[kb] / 1e3:.1f} KB)" if seed else "not run"
    asks = f"cache >= {GOAL_CACHE_RATIO:g}x smaller per audio-second"
    goal(asks, shown, None if ratio is None else ratio >= GOAL_CACHE_RATIO)
    rss = [run["measured"]["peak_rss_bytes"] / 1e9 for run in (small, large)]
    pss = [run["measured"]["peak_pss_bytes"] / 1e9 for run in (small, large)]
    asks = f"peak memory < {GOAL_PEAK_BYTES / 1e9:g} GB, flat from N to 4N (<= {GOAL_FLAT_MEMORY:g}x)"
    shown = f"{rss[0]:.2f} GB at N, {rss[1]:.2f} GB at 4N ({rss[1] / rss[0]:.2f}x); "
    shown += f"PSS {pss[0]:.2f} and {pss[1]:.2f} GB"
    goal(asks, shown, max(rss) < GOAL_PEAK_BYTES / 1e9 and rss[1] / rss[0] <= GOAL_FLAT_MEMORY)
    scaling = large[speed] / small[speed]
    asks = f"throughput per audio-second flat from N to 4N (>= {GOAL_FLAT_THROUGHPUT:g}x)"
    shown = f"{scaling:.2f}x ({small[speed]:.0f} -> {large[speed]:.0f} audio-s/s)"
    goal(asks, shown, scaling >= GOAL_FLAT_THROUGHPUT)
    rerun, full = noop["run_prepare_seconds"], noop["full_run_prepare_seconds"]
    shown = f"{rerun / full:.2%} ({rerun:.2f} s of {full:.1f} s in run_prepare; as a command "
    shown += f"{noop['cli_wall_seconds']:.1f} s of {noop['full_cli_wall_seconds']:.1f} s)"
    goal(f"no-op rerun < {GOAL_NOOP_FRACTION:.0%} of a full run", shown, rerun / full < GOAL_NOOP_FRACTION)
    return checked


METRICS = (  # the comparison and scaling tables: label, figure of a run, format
    ("audio-seconds per wall-second", lambda r: r["audio_seconds_per_second"], "{:.0f}"),
    ("cache per audio-second", lambda r: r["cache_bytes_per_audio_second"] / 1e3, "{:.1f} KB"),
    ("peak memory (process tree RSS)", lambda r: r["measured"]["peak_rss_bytes"] / 1e9, "{:.2f} GB"),
    ("peak memory (process tree PSS)", lambda r: r["measured"]["peak_pss_bytes"] / 1e9, "{:.2f} GB"),
    ("CPU utilisation", lambda r: r["cpu_utilisation"], "{:.0%}"),
    ("wall time", lambda r: r["measured"]["wall_s"], "{:.1f} s"),
)


def markdown(document: Mapping[str, Any]) -> str:
    """The tables the README shows: comparison at N, scaling, compute limit, goals."""
    settings, compute, runs = document["settings"], document["compute"], document["runs"]
    counts, minutes = settings["recordings"], {n: s / 60 for n, s in settings["audio_seconds"].items()}

    def cells(base: str, other: str, metric: tuple) -> list[str]:
        """The figure of two runs ("not run" if missing), and the second's over the first's."""
        (_, value, show), pair = metric, (runs.get(base), runs.get(other))
        ratio = f"{value(pair[1]) / value(pair[0]):.2f}x" if all(pair) and value(pair[0]) else "n/a"
        return [show.format(value(run)) if run else "not run" for run in pair] + [ratio]

    endpoints = {"loopback": "loopback", "latency": f"+{settings['latency_ms']:g} ms"}
    endpoints = {key: title for key, title in endpoints.items() if f"ours_{key}_N" in runs}
    header = [""] + [c for t in endpoints.values() for c in (f"seed, {t}", f"ours, {t}", "ours / seed")]
    metrics = (*METRICS, ("examples in the cache", lambda r: r["rows"], "{}"))  # compared at N only
    pairs = [(f"seed_{endpoint}_N", f"ours_{endpoint}_N") for endpoint in endpoints]
    comparison = [[m[0], *(cell for pair in pairs for cell in cells(*pair, m))] for m in metrics]
    scaling = [[m[0], *cells("ours_loopback_N", "ours_loopback_4N", m)] for m in METRICS]
    small, large = runs["ours_loopback_N"], runs["ours_loopback_4N"]
    limit = compute["limit_audio_seconds_per_second"]
    costs = [[stage, f"{ms:.3f}"] for stage, ms in compute["ms_per_audio_second"].items()]
    costs += [["total", f"{compute['total_ms_per_audio_second']:.3f}"]]
    totals = " / ".join(f"{total:.3f}" for total in compute["total_ms_per_audio_second_by_measurement"])
    costs += [["total, measured right before / right after the 4N run", totals]]
    costs += [[f"compute limit on {compute['cores']} cores", f"{limit:.0f} audio-s/s"]]
    shares = [f"{run['audio_seconds_per_second'] / limit:.0%}" for run in (small, large)]
    costs += [["ours at N / 4N, share of the limit", " / ".join(shares)]]
    shares = [f"{stage_share(run, compute):.0%}" for run in (small, large)]
    costs += [["ours at N / 4N, share of its CPU time spent in these stages", " / ".join(shares)]]
    return "\n\n".join(
        [
            f"**Stage 1 at N = {counts['N']} recordings ({minutes['N']:.0f} audio-min, regions of "
            f"{settings['mean_region_seconds']:.1f} s on average), {CORES} cores**",
            table(header, comparison),
            f"**Scaling, ours on loopback: N = {counts['N']} ({minutes['N']:.0f} audio-min) and "
            f"4N = {counts['4N']} ({minutes['4N']:.0f} audio-min)**",
            table(["", "N", "4N", "4N / N"], scaling),
            f"**Compute limit: CPU ms per audio-second on one core while all {compute['processes']} are "
            f"busy, profiled on {compute['sample_recordings']} recordings**",
            table(["stage", "ms per audio-second"], costs),
            "**Goals**",
            goals_table(document["goals"]),
        ]
    )


def publish(document: Mapping[str, Any], output: Path) -> None:
    """Print a benchmark's tables and write its JSON (what the README quotes)."""
    print(f"\n{document['markdown']}\n\nwhole benchmark: {document['wall_seconds']:.0f} s")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m benchmarks.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=150, help="N (the scaling run has 4N; default 150)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added round trip (0: loopback only)")
    parser.add_argument("--skip-baseline", action="store_true", help="run only ours")
    parser.add_argument("--model", default="model", help="whisper-base directory (built if missing)")
    parser.add_argument("--workdir", default="benchmarks/work", help="corpus, exports, caches, logs")
    parser.add_argument("--output", default="benchmarks/results/prepare.json", help="the JSON results")
    parser.add_argument("--stage-sample", type=int, default=16, help="recordings profiled (compute limit)")
    parser.add_argument("--num-proc", type=int, default=4, help="the seed's datasets.map processes (its 4)")
    args = parser.parse_args(argv)
    document = run_benchmark(args)
    publish(document, Path(args.output))
    return 1 if any(goal["passed"] is False for goal in document["goals"]) else 0


if __name__ == "__main__":
    sys.exit(main())
