"""transcribe as a command line: long audio in 30 s windows with timestamps, text/JSON/SRT, local and s3://."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.synthetic import Part, compose, encode_audio

REPO = Path(__file__).resolve().parents[1]
SRT_BLOCK = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+$")


def transcribe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisper_pipeline.transcribe", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture(scope="module")
def long_recording(speech_clips, tmp_path_factory) -> Path:
    """The English clips again and again: over 40 s, so two or more 30 s windows."""
    english = [clip for clip in speech_clips if clip.language == "en"]
    parts = [Part(english[index % len(english)].samples) for index in range(12)]
    samples, _ = compose(parts, gap_s=0.8)
    assert len(samples) / SAMPLE_RATE > 40
    path = tmp_path_factory.mktemp("long") / "long.flac"
    path.write_bytes(encode_audio(samples, SAMPLE_RATE, "flac"))
    return path


@pytest.fixture(scope="module")
def ct2_base(whisper_base_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ct2") / "ct2"
    command = [
        sys.executable,
        "-m",
        "whisper_pipeline.export",
        "ctranslate2",
        "--model",
        str(whisper_base_dir),
    ]
    result = subprocess.run(
        [*command, "--output", str(output), "--quantization", "int8"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return output


def _check_segments(document: list[dict], duration_over: float) -> None:
    (transcript,) = document
    assert transcript["duration"] > duration_over
    segments = transcript["segments"]
    assert segments and all(segment["text"] for segment in segments)
    assert max(segment["end"] or 0 for segment in segments) > 30  # the second window was transcribed
    assert "quick brown fox" in transcript["text"].lower()


def test_ctranslate2_model_transcribes_long_audio_with_timestamps(ct2_base, long_recording, tmp_path):
    result = transcribe(str(long_recording), "--model", str(ct2_base), "--language", "en", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    _check_segments(json.loads(result.stdout), 40)
    srt = tmp_path / "long.srt"
    result = transcribe(
        str(long_recording),
        "--model",
        str(ct2_base),
        "--language",
        "en",
        "--format",
        "srt",
        "--output",
        str(srt),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = srt.read_text().strip().split("\n\n")
    assert len(blocks) >= 2 and all(SRT_BLOCK.match(block) for block in blocks), blocks[:3]


def test_hugging_face_model_transcribes_long_audio_and_s3_uris(whisper_base_dir, long_recording, s3_bucket):
    uri = s3_bucket.put("audio/long.flac", long_recording.read_bytes())
    result = transcribe(
        uri, "--model", str(whisper_base_dir), "--language", "en", "--format", "json", env=s3_bucket.env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _check_segments(json.loads(result.stdout), 40)


def test_plain_text_of_several_files_and_an_adapter_on_the_tiny_model(tiny_model_dir, speech_clips, tmp_path):
    from tests.test_export import make_adapter

    adapter = make_adapter(tiny_model_dir, tmp_path, scale=0.01, language="vi")
    files = [str(clip.paths["mp3"]) for clip in speech_clips[:2]]
    result = transcribe(*files, "--model", str(tiny_model_dir), "--adapter", str(adapter))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip("\n").split("\n")
    assert [line.split("\t")[0] for line in lines] == files


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.flac", "--model", "MODEL"], "cannot read missing.flac"),
        (["AUDIO", "--model", "/nowhere"], "--model /nowhere"),
        (["--model", "MODEL"], "usage"),
    ],
)
def test_user_errors_are_one_line(args, fragment, tiny_model_dir, speech_clips):
    args = [
        str(tiny_model_dir) if a == "MODEL" else str(speech_clips[0].paths["wav"]) if a == "AUDIO" else a
        for a in args
    ]
    result = transcribe(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr and "Traceback" not in result.stderr
