"""transcribe as a command line: long audio in 30 s windows with timestamps, text/JSON/SRT, local and s3://,
CTranslate2 and Hugging Face models, base + adapter. The runs of the command are marked e2e; its user
errors are checked in process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.training import train_adapter
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.inference.transcribe import (
    TranscribeArguments,
    _output_paths,
    ctranslate2_compute_type,
    main,
    saved_weight_type,
)
from whisper_pipeline.testing.http_files import HttpFileServer
from whisper_pipeline.testing.synthetic import encode_audio

REPO = Path(__file__).resolve().parents[2]
SRT_BLOCK = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(\S.*)")
LONG_S = 36  # seconds of speech and pauses: two 30 s windows


def transcribe(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisper_pipeline.inference.transcribe", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture(scope="module")
def long_recording(speech_clips, tmp_path_factory) -> tuple[Path, float]:
    """The two English sentences in turn, 0.8 s of silence after each, past LONG_S seconds, as a WAV file."""
    english = [clip.samples for clip in speech_clips if clip.language == "en"]
    pause = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    pieces: list[np.ndarray] = []
    while sum(map(len, pieces)) < LONG_S * SAMPLE_RATE:
        pieces += [english[len(pieces) // 2 % len(english)], pause]
    samples = np.concatenate(pieces)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    path.write_bytes(encode_audio(samples, SAMPLE_RATE, "wav"))
    return path, len(samples) / SAMPLE_RATE


@pytest.fixture(scope="module")
def ct2_base(whisper_base_dir, tmp_path_factory) -> Path:
    """whisper-base through `export ctranslate2` with its default weight type (int8 on this CPU)."""
    output = tmp_path_factory.mktemp("ct2") / "ct2"
    command = [
        sys.executable,
        "-m",
        "whisper_pipeline.inference.export",
        "ctranslate2",
        "--model",
        str(whisper_base_dir),
    ]
    result = subprocess.run([*command, "--output", str(output)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return output


def _check_covers(segments: list[tuple[float, float, str]], duration: float) -> None:
    """Segments in order, within the audio, from its start to its end: the second window was transcribed."""
    assert len(segments) >= 6
    assert segments[0][0] < 1.0 and duration - 3.0 < segments[-1][1] <= duration + 0.5
    assert all(start <= end for start, end, _ in segments)
    assert all(earlier[1] <= later[0] + 0.01 for earlier, later in pairwise(segments))
    text = " ".join(text for _, _, text in segments).lower()
    assert text.count("brown fox") >= 4 and text.count("call me back") >= 4


def test_the_weight_type_of_an_export_is_read_from_its_model_bin(ct2_base, tmp_path):
    assert saved_weight_type(ct2_base / "model.bin") == "int8_float16"  # export's default
    cut_short = tmp_path / "model.bin"
    cut_short.write_bytes((ct2_base / "model.bin").read_bytes()[:4096])
    assert saved_weight_type(cut_short) is None and saved_weight_type(tmp_path / "missing.bin") is None


@pytest.mark.parametrize(
    ("saved", "cuda", "expected"),
    [
        ("int8_float16", False, "int8_float32"),  # what CTranslate2 itself converts it to, silently here
        ("float16", False, "float32"),
        ("bfloat16", False, "float32"),
        ("int8_float32", False, "default"),
        ("float32", False, "default"),
        ("int8_float16", True, "default"),  # a GPU runs it as saved
        (None, False, "default"),  # unread: CTranslate2 decides
    ],
)
def test_an_export_runs_as_saved_where_the_device_can(saved, cuda, expected):
    assert (
        ctranslate2_compute_type(saved, cuda=cuda, cpu_types={"float32", "int8", "int8_float32"}) == expected
    )


def test_a_ctranslate2_export_is_run_without_importing_torch(ct2_base, speech_clips):
    """Importing torch and transformers' models is 10 s of a command's start on 2 cores: the faster-whisper
    path, which needs neither, must not pay it (nor pre-annotation, which runs through it)."""
    code = (
        "import sys; from whisper_pipeline.inference import preannotate, transcribe; "
        f"transcribe.main([{str(speech_clips[3].paths['wav'])!r}, '--model', {str(ct2_base)!r}]); "
        "print(sorted({'torch', 'peft'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.e2e
def test_ctranslate2_model_transcribes_long_audio_in_windows_with_timestamps(ct2_base, long_recording):
    path, duration = long_recording
    result = transcribe(path, "--model", ct2_base, "--language", "en", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    (transcript,) = json.loads(result.stdout)
    assert transcript["audio"] == str(path) and transcript["language"] == "en"
    assert transcript["duration"] == pytest.approx(duration, abs=1e-3)
    segments = [(s["start"], s["end"], s["text"]) for s in transcript["segments"]]
    _check_covers(segments, duration)
    assert transcript["text"] == " ".join(text for _, _, text in segments)


@pytest.mark.e2e
def test_hugging_face_model_transcribes_long_audio_from_s3_as_srt(
    whisper_base_dir, long_recording, s3_bucket, tmp_path
):
    path, duration = long_recording
    uri = s3_bucket.put("audio/long.wav", path.read_bytes())
    srt = tmp_path / "long.srt"
    result = transcribe(
        uri, "--model", whisper_base_dir, "--language", "en", "--format", "srt", "--output", srt,
        env=s3_bucket.env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = srt.read_text(encoding="utf-8").strip().split("\n\n")
    matches = [SRT_BLOCK.fullmatch(block) for block in blocks]
    assert all(matches), blocks
    assert [int(match[1]) for match in matches] == list(range(1, len(blocks) + 1))

    starts_ends = [(_srt_seconds(m.groups()[1:5]), _srt_seconds(m.groups()[5:9]), m[10]) for m in matches]
    _check_covers(starts_ends, duration)


def _srt_seconds(fields: tuple[str, ...]) -> float:
    hours, minutes, secs, millis = map(int, fields)
    return hours * 3600 + minutes * 60 + secs + millis / 1000


@pytest.mark.e2e
def test_subtitles_of_several_files_go_one_per_input_and_never_end_past_the_audio(
    ct2_base, long_recording, speech_clips, tmp_path
):
    """A short clip's last segment ends where its window would (30 s, or the end of the speech rounded up):
    written, it ends within the file. VTT with faster-whisper's VAD and words with their own times in JSON,
    on the short clip alone (the long recording's JSON is the test above's)."""
    path, duration = long_recording
    short = speech_clips[2].paths["flac"]
    runs = (
        ("srt", [path, short], []),
        ("vtt", [short], ["--vad-filter"]),
        ("json", [short], ["--word-timestamps"]),
    )
    for fmt, inputs, extra in runs:
        out = tmp_path / fmt
        result = transcribe(*inputs, "--model", ct2_base, "--language", "en", "--format", fmt,
                            "--output-dir", out, *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(file.name for file in out.iterdir()) == sorted(f"{p.stem}.{fmt}" for p in inputs)
    for srt, seconds in ((path, duration), (short, speech_clips[2].duration)):
        blocks = (tmp_path / "srt" / f"{srt.stem}.srt").read_text(encoding="utf-8").strip().split("\n\n")
        ends = [_srt_seconds(SRT_BLOCK.fullmatch(block).groups()[5:9]) for block in blocks]
        assert ends and max(ends) <= seconds + 0.001, (srt.name, ends, seconds)  # SRT: rounded ms
    (transcript,) = json.loads((tmp_path / "json" / f"{short.stem}.json").read_text())
    assert all(0 <= s["start"] <= s["end"] <= transcript["duration"] for s in transcript["segments"])
    words = [word for segment in transcript["segments"] for word in segment["words"]]
    assert words and all(w["start"] <= w["end"] for w in words)
    vtt = (tmp_path / "vtt" / f"{short.stem}.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n1\n00:00:0") and " --> " in vtt and "," not in vtt.split("\n")[3]


@pytest.mark.e2e
def test_base_model_with_an_adapter_transcribes_several_files_as_text(
    whisper_base_dir, speech_clips, tmp_path
):
    """A fresh adapter (B = 0) is enough to run the adapter path; its train_config.yaml gives the language.
    (whisper-base rather than the tiny random model, whose every window runs to 448 tokens of noise.)"""
    adapter = train_adapter(whisper_base_dir, tmp_path, steps=0, learning_rate=0.0, language="vi")
    files = [speech_clips[0].paths["mp3"], speech_clips[1].paths["ogg"], speech_clips[2].paths["flac"]]
    result = transcribe(*files, "--model", whisper_base_dir, "--adapter", adapter, "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.rstrip("\n").split("\n")
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in files]
    assert all(len(line.split("\t")[1].split()) >= 3 for line in lines)


@pytest.mark.e2e
def test_missing_audio_is_one_line_before_any_model_loads(tiny_model_dir, tmp_path):
    result = transcribe(tmp_path / "missing.flac", "--model", tiny_model_dir)
    assert result.returncode == 2
    assert result.stderr == f"error: cannot read {tmp_path / 'missing.flac'}: no such file\n"


def test_http_audio_is_fetched_with_retries_and_named_without_its_signature(
    tiny_model_dir, speech_clips, tmp_path, capsys
):
    """A presigned-style URL through a server that fails twice first; the transcript names it without
    its query string, as does the one-line error of a missing URL."""
    clip = speech_clips[0]
    shutil.copy(clip.paths["wav"], tmp_path / "a clip.wav")
    with HttpFileServer(tmp_path) as files:
        url = f"{files.url}/a%20clip.wav?X-Amz-Signature=s3cr3t&X-Amz-Expires=600"
        files.fail_next(1, "status", 503)
        files.fail_next(1, "reset")
        flags = [
            "--model",
            str(tiny_model_dir),
            "--format",
            "json",
            "--max-new-tokens",
            "4",
            "--language",
            "vi",
        ]
        assert main([url, *flags]) == 0
        captured = capsys.readouterr()
        (transcript,) = json.loads(captured.out)
        assert transcript["audio"] == f"{files.url}/a%20clip.wav"
        assert transcript["duration"] == pytest.approx(clip.duration, abs=1 / SAMPLE_RATE)
        assert files.requests.count("/a clip.wav") == 4  # two failed tries, the size and ETag, the body
        assert main([f"{files.url}/gone.wav?token=t0k", *flags]) == 2
        missing = capsys.readouterr().err
        assert missing == f"error: cannot read {files.url}/gone.wav: not found (404)\n"
    assert "s3cr3t" not in captured.out + captured.err and "t0k" not in missing


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{audio} --model {tmp}/nowhere", "--model {tmp}/nowhere: no such directory"),
        ("{audio} --model {tmp}", "not a Whisper model directory"),
        ("--model {model}", "usage"),
        ("{audio} {audio} --model {model} --format srt", "give --output-dir DIR for a file per input"),
        ("{audio} --model {model} --vad-filter", "faster-whisper's: give a CTranslate2 --model"),
        ("{audio} --model {model} --output a.txt --output-dir b", "not both"),
        ("{audio} --model {model} --language xx", "'xx' is not a language of this model"),
        ("{audio} --model {model} --task summarize", "--task must be one of"),
        ("{audio} --model {broken} --adapter {tmp}", "a CTranslate2 export is merged already"),
        ("{audio} --model {broken}", "cannot load --model {broken}"),
    ],
    ids=[
        "no-model",
        "not-a-model",
        "no-audio",
        "srt-of-several",
        "vad-on-transformers",
        "output-and-output-dir",
        "language",
        "task",
        "ct2-adapter",
        "broken",
    ],
)
def test_user_errors_end_in_one_line(arguments, message, tiny_model_dir, speech_clips, tmp_path, capsys):
    broken = tmp_path / "broken-ct2"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a CTranslate2 model")
    shutil.copy(tiny_model_dir / "tokenizer.json", broken)
    places = {
        "audio": speech_clips[0].paths["wav"],
        "model": tiny_model_dir,
        "tmp": tmp_path,
        "broken": broken,
    }
    assert main(arguments.format(**places).split()) == 2
    lines = capsys.readouterr().err.splitlines()  # (model loading may draw a progress bar first)
    assert lines[-1].startswith("error: ") and message.format(**places) in lines[-1]


def test_output_dir_names_each_file_after_its_input(tmp_path):
    uris = [
        "s3://bucket/calls/first%20call.wav",
        "https://files.example/audio/second%20call.mp3?X-Amz-Signature=s3cr3t",
        "/data/local-files/?d=calls/third%20call.flac",
        "http://ls.example:8080/data/local-files/?d=other/fourth.ogg",
    ]
    arguments = TranscribeArguments(format="srt", output_dir=str(tmp_path))
    names = [path.name for path in _output_paths(uris, arguments)]
    assert names == ["first%20call.srt", "second call.srt", "third call.srt", "fourth.srt"]
