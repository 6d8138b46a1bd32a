"""export merge / ctranslate2 as command lines: merged logits equal base + adapter; faster-whisper on the
CTranslate2 export transcribes like the merged Hugging Face model. The runs of the command are marked e2e;
its user errors are checked in process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_whisper import WhisperModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tests.fixtures.models import faster_whisper_greedy
from tests.fixtures.training import train_adapter
from whisper_pipeline.constants import N_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper_pipeline.inference.export import main
from whisper_pipeline.train.modeling import load_base_model, load_trained

REPO = Path(__file__).resolve().parents[2]


def export(*args: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "whisper_pipeline.inference.export", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny adapter trained three steps for Vietnamese, and its merge by the command line."""
    run = tmp_path_factory.mktemp("run")
    adapter = train_adapter(tiny_model_dir, run, steps=3, learning_rate=1e-2, language="vi")
    result = export("merge", "--model", tiny_model_dir, "--adapter", adapter, "--output", run / "merged")
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.mark.e2e
def test_merged_model_equals_base_plus_adapter_with_the_trained_convolutions(tiny_model_dir, tiny_run):
    adapter, merged_dir = tiny_run / "adapter", tiny_run / "merged"
    merged = WhisperForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    with_adapter = load_trained(tiny_model_dir, adapter)
    base = load_base_model(tiny_model_dir, precision="fp32").eval()
    torch.manual_seed(1)
    batch = {
        "input_features": torch.randn(2, merged.config.num_mel_bins, N_FRAMES),
        "decoder_input_ids": torch.randint(0, 50000, (2, 6)),
    }
    with torch.no_grad():
        expected = with_adapter(**batch).logits
        assert torch.allclose(merged(**batch).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base(**batch).logits, expected, atol=1e-2)
    for conv in ("conv1", "conv2"):
        trained = getattr(with_adapter.base_model.model.model.encoder, conv).modules_to_save["default"].weight
        assert torch.equal(getattr(merged.model.encoder, conv).weight, trained)
        assert not torch.equal(getattr(base.model.encoder, conv).weight, trained)

    assert (merged.generation_config.language, merged.generation_config.task) == ("vi", "transcribe")
    names = {path.name for path in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) or name.startswith("adapter") for name in names)
    vocabulary = WhisperProcessor.from_pretrained(str(merged_dir)).tokenizer.get_vocab()
    assert vocabulary == WhisperProcessor.from_pretrained(str(adapter)).tokenizer.get_vocab()
    assert not [path.name for path in tiny_run.iterdir() if path.name.startswith(".")]  # no staging left


@pytest.mark.e2e
def test_flags_win_over_the_training_and_an_older_export_is_replaced(tiny_model_dir, tiny_run, tmp_path):
    output = tmp_path / "merged"
    shutil.copytree(tiny_run / "merged", output)
    (output / "stale.txt").write_text("from the older export")
    result = export(
        "merge", "--model", tiny_model_dir, "--adapter", tiny_run / "adapter", "--output", output,
        "--language", "en",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert WhisperForConditionalGeneration.from_pretrained(str(output)).generation_config.language == "en"
    assert not (output / "stale.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["merged"]


@pytest.mark.e2e
def test_ctranslate2_default_export_loads_on_cpu(tiny_run):
    ct2_dir = tiny_run / "ct2"
    result = export("ctranslate2", "--model", tiny_run / "merged", "--output", ct2_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {path.name for path in ct2_dir.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= names
    assert "generation_config.json" in names  # where transcribe finds the model's language
    runtime = WhisperModel(str(ct2_dir), device="cpu")
    assert runtime.model.compute_type == "int8_float32"  # int8_float16, as a CPU runs it
    silence = np.zeros(SAMPLE_RATE, np.float32)
    segments, info = runtime.transcribe(silence, language="vi", temperature=0.0, max_new_tokens=4)
    list(segments)  # decodes (random weights: what it says means nothing)
    assert info.duration == 1.0


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("ctranslate2 --model {adapter} --output {run}/ct2", "is an adapter: merge it first"),
        ("ctranslate2 --model {run}/nowhere --output {run}/ct2", "not a Whisper model directory"),
        ("ctranslate2 --model {model} --output {run}/ct2 --quantization int4", "invalid"),
        ("merge --model {model} --adapter {adapter} --output {run}", "its own input"),
        ("merge --model {model} --adapter {adapter} --output {run}/m --task translate", "needs a language"),
        ("quantize --model {model}", "usage"),
    ],
    ids=["adapter", "missing", "quantization", "overwrite-input", "task-alone", "command"],
)
def test_user_errors_exit_2_and_write_nothing(command, message, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    places = {"adapter": run / "adapter", "run": run, "model": tiny_model_dir}
    assert main(command.format(**places).split()) == 2
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in stderr
    assert sorted(path.name for path in run.iterdir()) == ["adapter"]


@pytest.fixture(scope="module")
def base_exports(whisper_base_dir, tmp_path_factory) -> tuple[Path, Path]:
    """whisper-base + an adapter trained two steps, merged, then converted to CTranslate2 in float32."""
    run = tmp_path_factory.mktemp("base-run")
    adapter = train_adapter(whisper_base_dir, run, steps=2, learning_rate=1e-4, language="en")
    merged, ct2 = run / "merged", run / "ct2"
    result = export("merge", "--model", whisper_base_dir, "--adapter", adapter, "--output", merged)
    assert result.returncode == 0, result.stderr[-2000:]
    result = export("ctranslate2", "--model", merged, "--output", ct2, "--quantization", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    return merged, ct2


@pytest.mark.e2e
def test_faster_whisper_on_the_export_transcribes_like_the_merged_model(base_exports, speech_clips):
    """Greedy, no timestamps, language forced, both given the clip padded to 30 s (faster-whisper pads the
    log-mel of a short clip with zeros where the Hugging Face feature extractor pads the audio)."""
    merged_dir, ct2_dir = base_exports
    merged = WhisperForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    processor = WhisperProcessor.from_pretrained(str(merged_dir))
    runtime = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32")
    clips = [clip for clip in speech_clips if clip.language == "en"] + [speech_clips[0]]
    for clip in clips:
        audio = np.pad(clip.samples, (0, N_SAMPLES - len(clip.samples)))
        features = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = merged.generate(features, language=clip.language, task="transcribe")
        expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        actual = faster_whisper_greedy(runtime, audio, clip.language)
        assert actual == expected, (clip.name, actual, expected)
        assert len(expected.split()) >= 3


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_describes_each_command(flag, capsys):
    assert main([flag]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("usage: ")
    assert {line.split()[0] for line in lines if line.startswith("  ") and line.split()} >= {
        "merge",
        "ctranslate2",
    }


def test_no_command_is_a_usage_line(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("error: usage: ")
