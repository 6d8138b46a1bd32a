"""Compact log-mel features against WhisperFeatureExtractor itself, and labels with the real tokenizer."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from tokenizers import Tokenizer
from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

from whisper_pipeline.constants import (
    HOP_LENGTH,
    MAX_TARGET_POSITIONS,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
)
from whisper_pipeline.errors import ConfigError, ModelError
from whisper_pipeline.prepare.features import LabelEncoder, LogMelFeaturizer, pad_features

SENTENCE = "Xin chào các bạn, hôm nay trời đẹp quá."


@pytest.fixture(scope="module")
def feature_extractor(tiny_model_dir) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def featurizer(tiny_model_dir) -> LogMelFeaturizer:
    return LogMelFeaturizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir) -> WhisperTokenizerFast:
    return WhisperTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def long_speech() -> np.ndarray:
    """A little over 30 s of espeak-ng speech at 16 kHz, peak 0.9."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "vi", "--stdout", SENTENCE], capture_output=True, check=True
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    speech = soxr.resample(samples, rate, SAMPLE_RATE, "HQ")
    speech = np.tile(speech, math.ceil(N_SAMPLES / len(speech)) + 1)[: N_SAMPLES + SAMPLE_RATE]
    return (0.9 * speech / np.abs(speech).max()).astype(np.float32)


def _clip(long_speech: np.ndarray, seconds: float, level: str) -> np.ndarray:
    clip = long_speech[: round(seconds * SAMPLE_RATE)]
    if level == "quiet":
        return clip * np.float32(0.001)
    if level == "loud":  # clipped at full scale
        return np.clip(clip * np.float32(4.0), -1.0, 1.0)
    if level == "silence":
        return np.zeros_like(clip)
    return clip


@pytest.mark.parametrize("level", ["normal", "quiet", "loud", "silence"])
@pytest.mark.parametrize("seconds", [0.3, 2.0, 7.3, 29.9, 30.0])
def test_padded_features_equal_the_feature_extractor(
    featurizer, feature_extractor, long_speech, seconds, level
):
    clip = _clip(long_speech, seconds, level)
    compact = featurizer.compute(clip)
    expected = feature_extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]

    assert compact.frames.dtype == np.float16
    num_mel_bins = feature_extractor.feature_size
    num_frames = min(N_FRAMES, math.ceil((len(clip) + N_FFT // 2) / HOP_LENGTH))
    assert compact.frames.shape == (num_frames, num_mel_bins)
    restored = pad_features(compact.frames, compact.pad_value)
    assert restored.dtype == np.float32 and restored.shape == expected.shape == (num_mel_bins, N_FRAMES)
    # Before storage, our float32 values differ from the extractor's by `fft_difference` (another FFT
    # library; bounded in the test below). Storage then rounds each to float16: at most half a float16
    # step at the largest magnitude. Nothing else separates the two.
    float32_frames, _ = featurizer.log_mel(clip)
    fft_difference = np.abs(float32_frames.T - expected[:, : len(float32_frames)]).max()
    half_float16_step = np.spacing(np.float16(np.abs(expected).max())) / 2
    assert np.abs(restored - expected).max() <= half_float16_step + fft_difference
    # The padding is one float32 value, within _pad_value_bound of the extractor's.
    padding = restored[:, len(compact.frames) :]
    assert np.all(padding == np.float32(compact.pad_value))
    bound = _pad_value_bound(fft_difference, compact.pad_value)
    assert np.abs(padding - expected[:, len(compact.frames) :]).max(initial=0.0) <= bound


def _pad_value_bound(fft_difference: float, pad_value: float) -> float:
    """How far our pad value may be from the extractor's, given how far the frames are apart.

    Both compute pad = (max(silent, M - 8) + 4) / 4, M the largest log10-mel value: the silent value is
    the same constant on both sides, so the pad values differ by at most |M - M'| / 4, which is at most
    the largest difference between the two outputs' unclamped frames (the argmax frames are unclamped in
    both). Each side then rounds the float32 sum and quotient once: two float32 ULPs apiece at the value.
    """
    return fft_difference + 4 * float(np.spacing(np.float32(max(abs(pad_value), 1.0))))


@pytest.mark.parametrize("level", ["normal", "quiet", "loud"])
def test_float32_log_mel_is_the_extractors_and_storage_rounds_it_once(
    featurizer, feature_extractor, long_speech, level
):
    """Before the float16 storage our float32 values are the extractor's to within 1e-4: another FFT
    library (scipy's, not torch's) rounds differently in the last bits, as the extractor's own numpy and
    torch paths differ from each other. A float32 FFT of 400 points errs by a few float32 ULPs of the
    frame's largest bin; the log10 turns that into an absolute error that grows toward the clamp 8 decades
    below the maximum, where bins hold 1e-8 of its power: 1e-4 in output units ((log10 + 4) / 4) leaves
    room for that on any CPU while staying a tenth of the float16 step (1e-3) the cache stores."""
    clip = _clip(long_speech, 7.3, level)
    frames, pad_value = featurizer.log_mel(clip)
    expected = feature_extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    assert frames.dtype == np.float32
    fft_difference = np.abs(frames.T - expected[:, : len(frames)]).max()
    assert fft_difference <= 1e-4
    assert abs(pad_value - expected[0, -1]) <= _pad_value_bound(fft_difference, pad_value)
    # the cache holds exactly the float16 rounding of those values
    np.testing.assert_array_equal(featurizer.compute(clip).frames, frames.astype(np.float16))


@pytest.mark.parametrize("feature_size", [80, 128])
def test_mel_filters_are_the_extractors(tmp_path, feature_size):
    """Built from preprocessor_config.json without the extractor class (whose module imports torch)."""
    extractor = WhisperFeatureExtractor(feature_size=feature_size)
    extractor.save_pretrained(tmp_path)
    featurizer = LogMelFeaturizer.from_pretrained(tmp_path)
    assert featurizer.n_mels == feature_size
    np.testing.assert_array_equal(featurizer.mel_filters, extractor.mel_filters.astype(np.float32))


def test_a_transformers5_processor_config_is_read_where_transformers_reads_it(tmp_path):
    """WhisperProcessor.save_pretrained (transformers 5) nests the extractor in processor_config.json;
    beside an older preprocessor_config.json the nested one wins, in transformers as here."""
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path)
    nested = {"feature_extractor": WhisperFeatureExtractor(feature_size=128).to_dict()}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested), encoding="utf-8")
    assert WhisperFeatureExtractor.from_pretrained(tmp_path).feature_size == 128
    assert LogMelFeaturizer.from_pretrained(tmp_path).n_mels == 128
    (tmp_path / "preprocessor_config.json").unlink()
    assert LogMelFeaturizer.from_pretrained(tmp_path).n_mels == 128
    (tmp_path / "processor_config.json").write_text('{"processor_class": "WhisperProcessor"}')
    with pytest.raises(ModelError, match=r"no feature extractor settings \(preprocessor_config\.json"):
        LogMelFeaturizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("seconds", [12.0, 30.0, 41.37])
def test_a_whole_recording_is_the_extractors_long_form_input(
    featurizer, feature_extractor, long_speech, seconds
):
    """What long-form transcription feeds the model (transformers' `truncation=False, padding="longest"`,
    30 s of zero padding for a shorter file): every frame, one frame per 160 samples past 30 s."""
    clip = np.tile(long_speech, 2)[: round(seconds * SAMPLE_RATE)]
    padding = "longest" if len(clip) > N_SAMPLES else "max_length"
    expected = feature_extractor(
        clip, sampling_rate=SAMPLE_RATE, truncation=False, padding=padding, return_tensors="np"
    ).input_features[0]
    compact = featurizer.compute(clip, whole=True)
    restored = pad_features(compact.frames, compact.pad_value, max(N_FRAMES, len(compact.frames)))
    assert (
        restored.shape
        == expected.shape
        == (feature_extractor.feature_size, max(N_FRAMES, len(clip) // HOP_LENGTH))
    )
    # as in test_padded_features_equal_the_feature_extractor: the FFT difference, then one float16 rounding
    frames, _ = featurizer.log_mel(clip, whole=True)
    fft_difference = np.abs(frames.T - expected[:, : len(frames)]).max()
    assert fft_difference <= 1e-4
    half_float16_step = np.spacing(np.float16(np.abs(expected).max())) / 2
    assert np.abs(restored - expected).max() <= half_float16_step + _pad_value_bound(
        fft_difference, compact.pad_value
    )


def test_audio_over_30_seconds_is_refused(featurizer, long_speech):
    with pytest.raises(ValueError, match="at most"):
        featurizer.compute(long_speech[: N_SAMPLES + 1])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dither": 1e-4}, "dither"),
        ({"hop_length": 200}, "not Whisper's"),
        ({"sampling_rate": 8000}, "not Whisper's"),
    ],
)
@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")  # the 8 kHz extractor's own
def test_another_log_mel_is_refused(tmp_path, settings, message):
    WhisperFeatureExtractor(**settings).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=message):
        LogMelFeaturizer.from_pretrained(tmp_path)


def test_an_unreadable_extractor_config_is_a_model_error(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=r"preprocessor_config\.json"):
        LogMelFeaturizer.from_pretrained(tmp_path)


def test_pad_features_refuses_more_frames_than_the_input_holds():
    with pytest.raises(ValueError):
        pad_features(np.zeros((N_FRAMES + 1, 80), dtype=np.float16), -1.5)


def test_labels_are_prefix_timestamped_segments_and_eos(tokenizer, tiny_model_dir):
    encoder = LabelEncoder.from_pretrained(tiny_model_dir, "vi", "transcribe")
    ids = encoder.labels([(0.0, 1.5, encoder.text_tokens(SENTENCE)), (2.04, 3.0, encoder.text_tokens("hai"))])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:4] == ["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|0.00|>"]
    assert tokens[-5:-3] == ["<|1.50|>", "<|2.04|>"] and tokens[-2:] == ["<|3.00|>", "<|endoftext|>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == f" {SENTENCE} hai"
    assert len(ids) == encoder.label_length(
        [len(encoder.text_tokens(SENTENCE)), len(encoder.text_tokens("hai"))]
    )


def test_timestamps_are_looked_up_by_their_text_and_clamped_to_the_window(tokenizer, tiny_model_dir):
    encoder = LabelEncoder.from_pretrained(tiny_model_dir, "vi", "transcribe")
    assert len(encoder.timestamp_ids) == 1501
    assert tokenizer.convert_ids_to_tokens([encoder.timestamp_ids[0], encoder.timestamp_ids[-1]]) == [
        "<|0.00|>",
        "<|30.00|>",
    ]
    assert tokenizer.convert_ids_to_tokens(encoder.timestamp(12.345)) == "<|12.34|>"
    assert (
        encoder.timestamp(30.5) == encoder.timestamp_ids[-1]
        and encoder.timestamp(-0.1) == encoder.timestamp_ids[0]
    )


def test_no_speech_target_is_the_tokenizers_own_no_speech_token(tokenizer, tiny_model_dir):
    """whisper-base's vocabulary names it <|nocaptions|>; Whisper v3's <|nospeech|>."""
    encoder = LabelEncoder.from_pretrained(tiny_model_dir, "vi", "transcribe")
    assert tokenizer.convert_ids_to_tokens(encoder.no_speech_labels()) == [
        "<|startoftranscript|>",
        "<|nocaptions|>",
        "<|endoftext|>",
    ]


@pytest.fixture(scope="module")
def slow_tokenizer_files_only(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's tokenizer as vocab.json + merges.txt + added_tokens.json (the special and
    timestamp tokens), no tokenizer.json: an older save, as OpenAI's Hugging Face repositories hold."""
    directory = tmp_path_factory.mktemp("slow-tokenizer")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(tiny_model_dir / name, directory / name)
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    tokenizer.model.save(str(directory))
    added = {token.content: token_id for token_id, token in tokenizer.get_added_tokens_decoder().items()}
    (directory / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    return directory


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json + merges.txt"])
@pytest.mark.parametrize(("language", "task"), [("vi", "transcribe"), ("en", "translate")])
def test_labels_are_those_of_whisper_tokenizer_fast(
    tiny_model_dir, slow_tokenizer_files_only, files, language, task
):
    """The prefix WhisperTokenizerFast gives when it predicts timestamps, and its ids of each segment's
    text with the leading space Whisper writes."""
    reference = WhisperTokenizerFast.from_pretrained(tiny_model_dir)
    reference.set_prefix_tokens(language=language, task=task, predict_timestamps=True)
    model_dir = tiny_model_dir if files == "tokenizer.json" else slow_tokenizer_files_only
    encoder = LabelEncoder.from_pretrained(model_dir, language, task)
    assert encoder.labels([]) == reference("").input_ids
    texts = [SENTENCE, " a leading space", "", "số 123 <|en|> và  hai  dấu cách", "Ờ, ừm... Việt Nam!"]
    for text in texts:
        assert list(encoder.text_tokens(text)) == reference(f" {text}", add_special_tokens=False).input_ids


def test_language_names_and_codes_give_the_same_labels(tiny_model_dir):
    def labels(language: str) -> list[int]:
        encoder = LabelEncoder.from_pretrained(tiny_model_dir, language, "transcribe")
        return encoder.labels([(0.0, 1.0, encoder.text_tokens(SENTENCE))])

    for name in ("vietnamese", "Vietnamese", "VI"):
        assert labels(name) == labels("vi")


@pytest.mark.parametrize(
    ("language", "task"),
    [
        ("klingon", "transcribe"),
        ("transcribe", "transcribe"),
        ("notimestamps", "transcribe"),
        ("vi", "summarize"),
    ],
)
def test_unknown_language_or_task_is_a_config_error(tiny_model_dir, language, task):
    with pytest.raises(ConfigError, match=language if task == "transcribe" else task):
        LabelEncoder.from_pretrained(tiny_model_dir, language, task)


def test_long_labels_are_returned_whole_for_the_caller_to_split(tokenizer, tiny_model_dir):
    encoder = LabelEncoder.from_pretrained(tiny_model_dir, "vi", "transcribe")
    ids = encoder.labels([(0.0, 30.0, encoder.text_tokens(" ".join([SENTENCE] * 40)))])
    assert len(ids) > MAX_TARGET_POSITIONS
    assert ids[-1] == tokenizer.eos_token_id
