"""Compact log-mel features against WhisperFeatureExtractor itself, and labels with the real tokenizer."""

from __future__ import annotations

import io
import math
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr
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
from whisper_pipeline.features import LabelEncoder, LogMelFeaturizer, pad_features

SENTENCE = "Xin chào các bạn, hôm nay trời đẹp quá."


@pytest.fixture(scope="module")
def feature_extractor(tiny_model_dir) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def featurizer(feature_extractor) -> LogMelFeaturizer:
    return LogMelFeaturizer.for_extractor(feature_extractor)


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
    assert np.abs(restored - expected).max() <= 1e-3  # float16 rounding of values in about [-1.5, 2]
    # the padding is exact, not merely close: it is one float32 value
    np.testing.assert_array_equal(restored[:, len(compact.frames) :], expected[:, len(compact.frames) :])


def test_features_are_float32_exact_before_float16_storage(featurizer, feature_extractor, long_speech):
    """The same arithmetic as the extractor: the only difference left is the float16 rounding."""
    clip = long_speech[: 73 * SAMPLE_RATE // 10]
    compact = featurizer.compute(clip)
    expected = feature_extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    step = np.spacing(np.abs(expected[:, : len(compact.frames)]).astype(np.float16)).astype(np.float32)
    assert np.all(
        np.abs(compact.frames.T.astype(np.float32) - expected[:, : len(compact.frames)]) <= step / 2
    )


def test_audio_over_30_seconds_is_refused(featurizer, long_speech):
    with pytest.raises(ValueError, match="at most"):
        featurizer.compute(long_speech[: N_SAMPLES + 1])


def test_a_dithering_extractor_is_refused():
    with pytest.raises(ModelError, match="dither"):
        LogMelFeaturizer.for_extractor(WhisperFeatureExtractor(dither=1e-4))


def test_pad_features_refuses_more_frames_than_the_input_holds():
    with pytest.raises(ValueError):
        pad_features(np.zeros((N_FRAMES + 1, 80), dtype=np.float16), -1.5)


def test_labels_are_prefix_text_and_eos(tokenizer):
    encoder = LabelEncoder(tokenizer, "vi", "transcribe")
    ids = encoder.encode(SENTENCE)
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == [
        "<|startoftranscript|>",
        "<|vi|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert encoder.decode(ids) == SENTENCE


def test_language_names_and_codes_give_the_same_labels(tokenizer):
    by_code = LabelEncoder(tokenizer, "vi", "transcribe").encode(SENTENCE)
    assert LabelEncoder(tokenizer, "vietnamese", "transcribe").encode(SENTENCE) == by_code


@pytest.mark.parametrize(("language", "task"), [("klingon", "transcribe"), ("vi", "summarize")])
def test_unknown_language_or_task_is_a_config_error(tokenizer, language, task):
    with pytest.raises(ConfigError):
        LabelEncoder(tokenizer, language, task)


def test_long_labels_are_returned_whole_for_the_caller_to_split(tokenizer):
    encoder = LabelEncoder(tokenizer, "vi", "transcribe")
    ids = encoder.encode(" ".join([SENTENCE] * 40))
    assert len(ids) > MAX_TARGET_POSITIONS
    assert ids[-1] == tokenizer.eos_token_id
