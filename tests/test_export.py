"""export merge / ctranslate2 as command lines: merged logits equal base + adapter; faster-whisper on the
CTranslate2 export transcribes like the merged Hugging Face model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from faster_whisper import WhisperModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tests.test_modeling import LORA
from whisper_pipeline.constants import N_SAMPLES, SAMPLE_RATE
from whisper_pipeline.modeling import load_base_model, load_trained, new_adapter, save_adapter

REPO = Path(__file__).resolve().parents[1]


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisper_pipeline.export", *args], cwd=REPO, capture_output=True, text=True
    )


def make_adapter(model_dir: Path, directory: Path, *, scale: float, language: str) -> Path:
    """An adapter as training leaves it (non-zero LoRA, changed convolutions) with its train_config.yaml."""
    torch.manual_seed(0)
    model = new_adapter(load_base_model(model_dir, precision="fp32"), **LORA, unfreeze_conv=True)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn_like(parameter))
    save_adapter(model, WhisperProcessor.from_pretrained(str(model_dir)), directory / "adapter")
    config = {"resolved": {"language": language, "task": "transcribe"}}
    (directory / "train_config.yaml").write_text(yaml.safe_dump(config))
    return directory / "adapter"


@pytest.fixture(scope="module")
def tiny_merged(tiny_model_dir, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    adapter = make_adapter(tiny_model_dir, outputs, scale=0.01, language="vi")
    result = export(
        "merge",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(adapter),
        "--output",
        str(outputs / "merged"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return adapter, outputs / "merged"


def test_merged_model_equals_base_plus_adapter_with_the_trained_convolutions(tiny_model_dir, tiny_merged):
    adapter, merged_dir = tiny_merged
    merged = WhisperForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    with_adapter = load_trained(tiny_model_dir, adapter)
    base = load_base_model(tiny_model_dir, precision="fp32")
    torch.manual_seed(1)
    batch = {
        "input_features": torch.randn(2, 80, 3000),
        "decoder_input_ids": torch.randint(0, 50000, (2, 6)),
    }
    with torch.no_grad():
        expected = with_adapter(**batch).logits
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)
        assert not torch.allclose(base(**batch).logits, expected, atol=1e-4)
    conv = with_adapter.base_model.model.model.encoder.conv1.weight
    assert torch.equal(merged.model.encoder.conv1.weight, conv)
    assert not torch.equal(base.model.encoder.conv1.weight, conv)
    assert merged.generation_config.language == "vi" and merged.generation_config.task == "transcribe"
    names = {path.name for path in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert "preprocessor_config.json" in names and not any(name.endswith(".bin") for name in names)
    assert sorted(path.name for path in merged_dir.parent.iterdir() if path.name.startswith(".")) == []


def test_ctranslate2_refuses_an_adapter_and_a_missing_model(tiny_merged, tmp_path):
    adapter, _ = tiny_merged
    for model in (adapter, tmp_path / "nowhere"):
        result = export("ctranslate2", "--model", str(model), "--output", str(tmp_path / "ct2"))
        assert (
            result.returncode == 2
            and result.stderr.startswith("error: ")
            and "Traceback" not in result.stderr
        )
    assert not (tmp_path / "ct2").exists()


@pytest.fixture(scope="module")
def base_exports(whisper_base_dir, tmp_path_factory):
    """whisper-base + a small trained-like adapter, merged, then converted to CTranslate2 (float32)."""
    outputs = tmp_path_factory.mktemp("base-outputs")
    adapter = make_adapter(whisper_base_dir, outputs, scale=0.002, language="en")
    merged, ct2 = outputs / "merged", outputs / "ct2"
    result = export(
        "merge", "--model", str(whisper_base_dir), "--adapter", str(adapter), "--output", str(merged)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = export("ctranslate2", "--model", str(merged), "--output", str(ct2), "--quantization", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    return merged, ct2


def test_faster_whisper_on_the_export_transcribes_like_the_merged_model(base_exports, speech_clips):
    merged_dir, ct2_dir = base_exports
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in ct2_dir.iterdir()}
    merged = WhisperForConditionalGeneration.from_pretrained(str(merged_dir)).eval()
    processor = WhisperProcessor.from_pretrained(str(merged_dir))
    runtime = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32")
    clips = [clip for clip in speech_clips if clip.language == "en"] + [speech_clips[0]]
    for clip in clips:
        language = clip.language
        features = processor(clip.samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = merged.generate(features, language=language, task="transcribe")
        expected = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        segments, _ = runtime.transcribe(
            np.pad(clip.samples, (0, N_SAMPLES - len(clip.samples))),
            language=language,
            beam_size=1,
            best_of=1,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
        )
        actual = " ".join(segment.text.strip() for segment in segments)
        assert actual.split() == expected.split(), (clip.name, actual, expected)
        assert len(expected.split()) >= 3
