"""Reliability and security: hostile input, S3 faults, kills, full or read-only disks, secrets.

Each case is a clear one-line error (exit 2) or a counted skip naming the item, with the valid items
still processed. The long cases (many kill points, a two-hour recording) are marked slow: `make test-slow`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from tests.fixtures.cache import cache_digest, prepare_arguments, prepare_command
from tests.fixtures.checkout import copy_checkout
from tests.fixtures.disk import read_only
from tests.fixtures.processes import kill_in_phase
from whisper_pipeline.cache import open_cache
from whisper_pipeline.errors import PipelineError
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.run import run_prepare
from whisper_pipeline.testing.local_s3 import LocalS3Server
from whisper_pipeline.testing.s3_proxy import FaultRule, S3Proxy
from whisper_pipeline.testing.synthetic import LabelStudioExport, Utterance, encode_audio, synthesize

# Real commands under faults and kills (`make test`, not test-fast); the longest are slow as well.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TEXT = "Một hai ba bốn năm."
ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synthesize(TEXT)


def _wav(samples: np.ndarray, rate: int, subtype: str, channels: int = 1) -> bytes:
    data = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(samples, 16_000, rate).astype(np.float32)


def _hostile_corpus(root: Path, voice: np.ndarray) -> tuple[LabelStudioExport, dict[str, str | None]]:
    """Local-files tasks: file name -> the skip reason expected (None: the item must be processed)."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    seconds = len(voice) / 16_000
    flac = encode_audio(voice, 16_000, "flac")
    files: dict[str, tuple[bytes, str | None]] = {
        "good.flac": (flac, None),
        "eight_bit.wav": (_wav(voice, 16_000, "PCM_U8"), None),
        "twenty_four_bit.wav": (_wav(voice, 16_000, "PCM_24"), None),
        "stereo.wav": (_wav(voice, 16_000, "PCM_16", channels=2), None),
        "eight_khz.wav": (_wav(_resampled(voice, 8_000), 8_000, "PCM_16"), None),
        "forty_eight_khz.flac": (encode_audio(_resampled(voice, 48_000), 48_000, "flac"), None),
        "silence.flac": (encode_audio(np.zeros_like(voice), 16_000, "flac"), None),
        "zero_bytes.flac": (b"", "empty_audio"),
        "truncated.flac": (flac[: len(flac) // 3], "corrupt_audio"),
        "not_audio.wav": (b"<html>this is a web page, not audio</html>" * 50, "unsupported_format"),
    }
    export = LabelStudioExport(seed=9)
    expected: dict[str, str | None] = {}
    for name, (data, reason) in files.items():
        (audio / name).write_bytes(data)
        export.add_task(f"/data/local-files/?d=audio/{name}", [Utterance(TEXT, 0.0, seconds)])
        expected[name] = reason
    # Region faults inside otherwise good files.
    (audio / "regions.flac").write_bytes(flac)
    # A region past the end of a good file (a task of its own: it would take its window down with it).
    export.add_task("/data/local-files/?d=audio/regions.flac", [Utterance(TEXT, 0.0, seconds)])
    export.add_task(
        "/data/local-files/?d=audio/regions.flac", [Utterance("ngoài tệp", seconds + 5, seconds + 6)]
    )
    expected["regions.flac"] = None
    bad_times = [(3.0, 1.0), (-2.0, 1.0), (float("nan"), 1.0)]
    for start, end in bad_times:
        task = export.add_task(
            f"/data/local-files/?d=audio/regions.flac#{start}", [Utterance(TEXT, 0.5, 1.0)]
        )
        for result in task["annotations"][0]["result"]:
            result["value"]["start"], result["value"]["end"] = start, end
    (audio / "huge_text.flac").write_bytes(flac)
    export.add_task("/data/local-files/?d=audio/huge_text.flac", [Utterance("xin chào " * 400, 0.0, seconds)])
    # Paths that escape the root, directly or through a symlink; tasks without audio.
    (root.parent / "outside.flac").write_bytes(flac)
    os.symlink(root.parent / "outside.flac", audio / "link.flac")
    export.add_task("/data/local-files/?d=../../etc/passwd", [Utterance(TEXT, 0.0, 1.0)])
    export.add_task("/data/local-files/?d=audio/link.flac", [Utterance(TEXT, 0.0, 1.0)])
    export.add_task("/data/local-files/?d=audio/absent.flac", [Utterance(TEXT, 0.0, 1.0)])
    export.add_task("ftp://example.com/a.flac", [Utterance(TEXT, 0.0, 1.0)])
    export.add_task("s3://forbidden-bucket/a.flac", [Utterance(TEXT, 0.0, 1.0)])
    no_audio = export.add_task("unused", [Utterance(TEXT, 0.0, 1.0)])
    no_audio["data"] = {}
    return export, expected


def test_hostile_items_are_counted_skips_and_valid_items_are_processed(voice, tiny_model_dir, tmp_path):
    export, expected = _hostile_corpus(tmp_path / "files", voice)
    export_path = export.write(tmp_path / "export.json")
    args = prepare_arguments(
        type("Corpus", (), {"annotations_uri": str(export_path)})(),
        tiny_model_dir,
        tmp_path / "cache",
        local_files_root=str(tmp_path / "files"),
        allowed_buckets=["allowed-bucket"],
        val_fraction=0.0,
        augment_copies=0,
        max_skip_fraction=0.9,
    )
    report = run_prepare(args, AugmentationSettings(), environ={}).report
    by_reason = report["skips"]["by_reason"]
    assert by_reason == {
        "bucket_not_allowed": 1,
        "corrupt_audio": 1,
        "empty_audio": 1,
        "invalid_region_times": 3,
        "labels_too_long": 1,
        "missing_file": 1,
        "no_audio": 1,
        "no_transcribed_speech": 3,
        "path_escapes_root": 2,
        "region_outside_audio": 1,
        "unsupported_format": 1,
        "unsupported_uri": 1,
    }
    skipped = {Path(item["audio_uri"]).name for item in report["skips"]["items"]}
    for name, reason in expected.items():
        if name != "regions.flac":  # a good file with one bad region: skipped region, kept file
            assert (name in skipped) == (reason is not None), name
    kept = {uri.rsplit("/", 1)[1] for uri in open_cache(tmp_path / "cache").train["audio_uri"]}
    assert kept == {name for name, reason in expected.items() if reason is None}


def _secret_env(server: LocalS3Server, bucket: str, secret: str) -> dict[str, str]:
    return {**os.environ, **server.env(bucket), "AWS_SECRET_ACCESS_KEY": secret}


def test_transient_s3_faults_are_retried_and_nothing_is_lost(
    s3_server, staged_corpus_http, tiny_model_dir, tmp_path
):
    corpus = staged_corpus_http
    faults = [
        FaultRule("503", "/clips/vi_greeting", times=2),
        FaultRule("500", "/clips/vi_booking", times=1),
        FaultRule("reset", "/clips/vi_thanks", times=1),
        FaultRule("truncate", "/clips/en_fox", times=1),
        FaultRule("stall", "/clips/en_callback.flac", times=1, stall_s=4.0),
    ]
    with S3Proxy(s3_server.port, faults=faults) as proxy:
        env = {**corpus.env, "S3_ENDPOINT_URL": proxy.endpoint_url, "S3_READ_TIMEOUT": "2"}
        summary = run_prepare(
            prepare_arguments(corpus, tiny_model_dir, tmp_path / "faulty"),
            AugmentationSettings(),
            environ=env,
        )
    assert all(count > 0 for count in proxy.injected.values()), proxy.injected
    report = summary.report
    assert report["recordings"]["failed"] == 0 and report["recordings"]["to_retry"] == 0
    assert report["transfers"]["retries"] >= sum(proxy.injected.values())
    clean = tmp_path / "clean"
    run_prepare(prepare_arguments(corpus, tiny_model_dir, clean), AugmentationSettings(), environ=corpus.env)
    assert cache_digest(tmp_path / "faulty") == cache_digest(clean)


def test_permanent_s3_faults_are_skips_naming_the_item(
    s3_server, staged_corpus_http, tiny_model_dir, tmp_path
):
    corpus = staged_corpus_http
    with S3Proxy(s3_server.port, faults=[FaultRule("503", "/clips/en_fox.mp3", times=float("inf"))]) as proxy:
        env = {**corpus.env, "S3_ENDPOINT_URL": proxy.endpoint_url, "S3_MAX_ATTEMPTS": "3"}
        report = run_prepare(
            prepare_arguments(corpus, tiny_model_dir, tmp_path / "c"), AugmentationSettings(), environ=env
        ).report
    failed = [item for item in report["skips"]["items"] if item["audio_uri"].endswith("/clips/en_fox.mp3")]
    assert [item["reason"] for item in failed] == ["download_failed"]
    assert report["recordings"]["to_retry"] == 1  # transient in kind: the next run tries again
    assert report["fingerprint"].startswith("retry-needed:")


def _limit_file_size() -> None:
    """In the child: writes past 64 KiB fail with EFBIG, as they would on a full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.parametrize("fault", ["read_only", "disk_full"])
def test_unwritable_output_is_a_clear_error_and_the_previous_cache_is_untouched(
    fault, prepared_cache, staged_corpus, tiny_model_dir, tmp_path
):
    root = tmp_path / "processed_data"
    shutil.copytree(prepared_cache, root)
    before = cache_digest(root)
    command = [*prepare_command(staged_corpus, tiny_model_dir, root), "--force"]
    env = {**os.environ, **staged_corpus.env}
    run = partial(subprocess.run, command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if fault == "read_only":
        with read_only(root):
            result = run()
    else:
        result = run(preexec_fn=_limit_file_size)
    assert result.returncode == 2, result.stderr[-2000:]
    # read-only: caught before any work (check_writable); disk full: while writing the cache
    message = "cannot be written" if fault == "read_only" else "cannot write the cache"
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr[-2000:]
    assert cache_digest(root) == before


SECRET = "SECRET-canary-7f3a9d1e-do-not-print"


def test_secrets_appear_in_no_output_log_report_cache_or_event_file(
    staged_corpus, tiny_model_dir, tmp_path, s3_tls_server
):
    env = {**os.environ, **staged_corpus.env, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET}
    outputs, cache = tmp_path / "outputs", tmp_path / "processed_data"
    train = [
        sys.executable, "train_model.py", "--model", str(tiny_model_dir), "--data-dir", str(cache),
        "--output-dir", str(outputs), "--max-steps", "1", "--per-device-eval-batch-size", "8",
        "--generation-max-length", "8", "--eval-strategy", "no", "--save-strategy", "no",
        "--load-best-model-at-end", "false", "--eval-on-start", "false",
    ]  # fmt: skip
    runs = [
        # A failing run (the certificate is not trusted), a working one, then training.
        (prepare_command(staged_corpus, tiny_model_dir, cache), {**env, "AWS_CA_BUNDLE": ""}),
        (prepare_command(staged_corpus, tiny_model_dir, cache), env),
        (train, env),
    ]
    console = []
    for command, run_env in runs:
        result = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=300)
        console.append(result.stdout + result.stderr)
    assert "certificate" in console[0] and "Traceback" not in console[0]
    assert all(SECRET not in text for text in console)
    scanned = 0
    for folder in (cache, outputs):
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
                scanned += 1
    assert scanned > 10 and any("tfevents" in p.name for p in outputs.rglob("*"))


def _docker_context(root: Path) -> set[str]:
    """Files docker would send as build context, by .dockerignore's rules (last matching pattern wins)."""
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    kept = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        excluded = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            parts = relative.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(
                fnmatch.fnmatch(prefix, body) or fnmatch.fnmatch(prefix, body.replace("**/", ""))
                for prefix in prefixes
            ):
                excluded = not negate
        if not excluded:
            kept.add(relative)
    return kept


def test_dockerignore_keeps_env_files_and_credentials_out_of_the_build_context(tmp_path):
    project = copy_checkout(tmp_path / "project")
    secrets = [".env", ".env.production", "certs/ca.pem", "certs/client.key", ".aws/credentials", "outputs/x"]
    for name in secrets:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(SECRET)
    context = _docker_context(project)
    assert not set(secrets) & context
    assert {".env.example", "Dockerfile", "requirements.txt", "whisper_pipeline/prepare/run.py"} <= context


@pytest.mark.slow
def test_kill_9_at_eleven_points_across_every_phase(prepared_cache, staged_corpus, tiny_model_dir, tmp_path):
    """Kills while planning, while downloading and featurizing, between shard writes and while finalizing;
    each rerun resumes, and the last one ends with the cache of an uninterrupted run."""
    output_dir = tmp_path / "processed_data"
    env = {**os.environ, **staged_corpus.env}
    command = prepare_command(staged_corpus, tiny_model_dir, output_dir)
    rng = np.random.default_rng(7)
    plan = [("plan", rng.uniform(0.2, 1.0))]
    plan += [("features", rng.uniform(0.0, 0.3)) for _ in range(3)]
    plan += [("shards", rng.uniform(0.0, 0.05)) for _ in range(4)]
    plan += [("finalize", rng.uniform(0.0, 0.003)) for _ in range(3)]
    hits = [kill_in_phase(command, env, output_dir, target, delay) for target, delay in plan]
    assert {"plan", "features", "shards", "finalize"} <= set(hits), hits
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert cache_digest(output_dir) == cache_digest(prepared_cache)
    assert not (output_dir / ".staging").exists() and not (output_dir / ".build").exists()


def test_invalid_settings_are_one_line_errors(tiny_model_dir, tmp_path):
    with pytest.raises(PipelineError):
        run_prepare(
            prepare_arguments(
                type("Corpus", (), {"annotations_uri": str(tmp_path / "x.json")})(), tiny_model_dir, tmp_path
            ),
            AugmentationSettings(),
            environ={},
        )
    result = subprocess.run(
        [sys.executable, "prepare_data.py", "--val-fraction", "2", "--model", str(tiny_model_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr


def _train_command(model_dir: Path, cache: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train_model.py", "--model", str(model_dir), "--data-dir", str(cache),
        "--output-dir", str(output_dir), "--max-steps", "8", "--per-device-train-batch-size", "4",
        "--eval-strategy", "steps", "--eval-steps", "2", "--save-strategy", "steps", "--save-steps", "2",
        "--save-total-limit", "10", "--generation-max-length", "8", "--lora-r", "4", "--lora-alpha", "8",
        "--logging-steps", "1", "--disable-tqdm", "true", *extra,
    ]  # fmt: skip


def test_training_killed_with_9_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_run(
    prepared_cache, tiny_model_dir, tmp_path
):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run = partial(subprocess.run, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run(_train_command(tiny_model_dir, prepared_cache, reference)).returncode == 0
    process = subprocess.Popen(
        _train_command(tiny_model_dir, prepared_cache, killed),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint-4" / "trainer_state.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "adapter").exists()
    resumed = run(_train_command(tiny_model_dir, prepared_cache, killed, "--resume-from-checkpoint", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = {
        name: json.loads((folder / "metrics.json").read_text())
        for name, folder in [("ref", reference), ("k", killed)]
    }
    assert metrics["k"]["train"]["global_step"] == metrics["ref"]["train"]["global_step"] == 8
    steps = [entry["step"] for entry in metrics["k"]["train"]["loss_history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 8
    expected, actual = (
        load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (reference, killed)
    )
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-5), name


@pytest.mark.slow
def test_a_two_hour_recording_keeps_memory_bounded(voice, tiny_model_dir, tmp_path):
    """Two hours of 48 kHz stereo (2.7 GB as float samples) with one transcribed region near its start."""
    path = tmp_path / "files" / "two_hours.flac"
    path.parent.mkdir()
    block = np.zeros((48_000 * 60, 2), dtype=np.float32)
    speech = _resampled(voice, 48_000)
    with sf.SoundFile(path, "w", samplerate=48_000, channels=2, format="FLAC", subtype="PCM_16") as audio:
        first = block.copy()
        first[48_000 : 48_000 + len(speech)] = speech[:, None]
        audio.write(first)
        for _ in range(119):
            audio.write(block)
    export = LabelStudioExport()
    export.add_task(f"/data/local-files/?d={path.name}", [Utterance(TEXT, 1.0, 1.0 + len(voice) / 16_000)])
    export_path = export.write(tmp_path / "export.json")
    command = [
        sys.executable, "prepare_data.py", "--annotations", str(export_path), "--model", str(tiny_model_dir),
        "--output-dir", str(tmp_path / "cache"), "--local-files-root", str(path.parent),
        "--val-fraction", "0", "--num-workers", "1",
    ]  # fmt: skip
    process = psutil.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        tree = [process, *process.children(recursive=True)]
        with contextlib.suppress(psutil.Error):
            peak = max(peak, sum(member.memory_info().rss for member in tree))
        time.sleep(0.05)
    assert process.returncode == 0, process.stderr.read().decode()[-2000:]
    assert peak < 1.5 * 2**30, f"peak memory {peak / 2**30:.2f} GiB"
    cache = open_cache(tmp_path / "cache")
    assert (
        cache.report["windows"]["train"] == 1 and len(cache.train) == 2
    )  # the window and its augmented copy
