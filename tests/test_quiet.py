"""The commands' output is theirs: no library warnings, deprecation notices or weight-loading bars in a run of
training, evaluation, transcription and export on the tiny model (each in its own process, as a user runs
it, so that no warning was already shown once by an earlier test)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# What a library prints on its own: Python warnings (FutureWarning, UserWarning, ...), transformers'
# logger warnings and its "Loading weights" and "Writing model shards" bars.
NOISE = re.compile(
    r"warn|deprecat|loading weights|writing model shards|attention mask|generation flags", re.IGNORECASE
)


def run(*command: str) -> str:
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def noise(output: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", output) if NOISE.search(line)]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, prepared_cache, tmp_path_factory) -> tuple[Path, str]:
    outputs = tmp_path_factory.mktemp("quiet") / "outputs"
    output = run(
        "train_model.py", "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
        "--output-dir", str(outputs), "--max-steps", "2", "--per-device-train-batch-size", "4",
        "--eval-strategy", "steps", "--eval-steps", "2", "--save-strategy", "steps", "--save-steps", "2",
        "--generation-max-length", "24", "--lora-r", "4", "--lora-alpha", "8",
    )  # fmt: skip
    return outputs, output


def test_training_prints_no_library_warning_and_writes_its_report(trained):
    assert noise(trained[1]) == []
    assert (trained[0] / "report.html").is_file() and "report.html" in trained[1]


def test_evaluate_prints_no_library_warning(trained, tiny_model_dir, prepared_cache):
    output = run(
        "-m", "whisper_pipeline.inference.evaluate", "--model", str(tiny_model_dir),
        "--adapter", str(trained[0] / "adapter"), "--data-dir", str(prepared_cache),
        "--output-dir", str(trained[0] / "evaluation"), "--max-new-tokens", "16",
    )  # fmt: skip
    assert noise(output) == []


def test_transcribe_prints_no_library_warning(trained, tiny_model_dir, speech_clips):
    output = run(
        "-m", "whisper_pipeline.inference.transcribe", str(speech_clips[0].paths["wav"]),
        str(speech_clips[1].paths["flac"]), "--model", str(tiny_model_dir),
        "--adapter", str(trained[0] / "adapter"), "--max-new-tokens", "16",
    )  # fmt: skip
    assert noise(output) == []


@pytest.fixture(scope="module")
def merged(trained, tiny_model_dir) -> tuple[Path, str]:
    """The trained adapter merged into the tiny model by `export merge`, and what the command printed."""
    folder = trained[0] / "merged"
    output = run(
        "-m", "whisper_pipeline.inference.export", "merge", "--model", str(tiny_model_dir),
        "--adapter", str(trained[0] / "adapter"), "--output", str(folder),
    )  # fmt: skip
    return folder, output


def test_export_merge_prints_no_library_warning(merged):
    assert noise(merged[1]) == []


@pytest.fixture(scope="module")
def exported(merged) -> tuple[Path, str]:
    """The merged model through `export ctranslate2` at its default type (int8_float16), and the output."""
    folder = merged[0].parent / "ct2"
    output = run(
        "-m", "whisper_pipeline.inference.export", "ctranslate2", "--model", str(merged[0]),
        "--output", str(folder),
    )  # fmt: skip
    return folder, output


def test_export_ctranslate2_prints_no_library_warning(exported):
    # CTranslate2's converter loads the merged model through transformers: its "Loading weights" bar
    assert noise(exported[1]) == [] and (exported[0] / "model.bin").is_file()


def test_transcribe_with_the_default_ctranslate2_export_on_cpu_prints_no_library_warning(
    exported, speech_clips
):
    """The default export is int8_float16, for GPUs: on a CPU it runs as int8_float32, chosen before the
    load, so that CTranslate2 does not convert it and say so ("[ctranslate2] [warning] The compute type
    inferred from the saved model is int8_float16, but the target device ...")."""
    output = run(
        "-m", "whisper_pipeline.inference.transcribe", str(speech_clips[0].paths["wav"]),
        "--model", str(exported[0]), "--max-new-tokens", "16",
    )  # fmt: skip
    assert noise(output) == []
