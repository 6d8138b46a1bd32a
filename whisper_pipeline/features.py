"""Whisper's log-mel input stored compactly and restored exactly, and the token labels that go with it.

Whisper always sees 30 s: audio is zero-padded to 480,000 samples before its log-mel. Every frame past the
audio sees only that padding and takes one value, so the cache keeps the audio's frames (float16, 16 KB per
audio-second) and that value; `pad_features` rebuilds the 80 x 3000 input the feature extractor would give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import ArrayLike

from whisper_pipeline.constants import (
    HOP_LENGTH,
    LOG_MEL_DYNAMIC_RANGE,
    LOG_MEL_FLOOR,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
)
from whisper_pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from transformers import WhisperFeatureExtractor, WhisperTokenizer


@dataclass(frozen=True)
class CompactFeatures:
    """The log-mel frames that hold audio, time-major (only the first dimension varies between rows), and
    the value every later frame of the 30 s input takes."""

    frames: np.ndarray  # float16 [num_frames, n_mels]
    pad_value: float  # a float32 value


class LogMelFeaturizer:
    """WhisperFeatureExtractor's log-mel, computed only over the frames the audio reaches.

    Same steps as the extractor's torch path: periodic Hann window, centred STFT with reflect padding,
    power, the extractor's own mel filters, log10 of at least LOG_MEL_FLOOR, clamp to the maximum minus
    LOG_MEL_DYNAMIC_RANGE, then (x + 4) / 4. Frame i covers samples [i*160 - 200, i*160 + 200) of the
    zero-padded input, so frames from ceil((len + 200) / 160) on see only zeros; their log-mel is
    log10(LOG_MEL_FLOOR), never above the audio's maximum, so the clamp is the same as over 30 s.
    A 2 s clip costs an STFT of 2 s instead of 30 s.
    """

    def __init__(self, mel_filters: np.ndarray) -> None:
        """`mel_filters`: the extractor's [n_freqs, n_mels] matrix (see `for_extractor`)."""
        self._mel_filters_t = torch.from_numpy(np.asarray(mel_filters, dtype=np.float32)).T
        self._window = torch.hann_window(N_FFT)
        self._silent_log_mel = torch.tensor(LOG_MEL_FLOOR, dtype=torch.float32).log10()

    @classmethod
    def for_extractor(cls, feature_extractor: WhisperFeatureExtractor) -> LogMelFeaturizer:
        """The extractor's log-mel, refused when its geometry or dithering would make it another one."""
        geometry = (
            feature_extractor.sampling_rate,
            feature_extractor.n_fft,
            feature_extractor.hop_length,
            feature_extractor.n_samples,
        )
        if geometry != (SAMPLE_RATE, N_FFT, HOP_LENGTH, N_SAMPLES):
            raise ModelError(
                "the feature extractor's (sampling rate, n_fft, hop, samples) are "
                f"{geometry}, not Whisper's {(SAMPLE_RATE, N_FFT, HOP_LENGTH, N_SAMPLES)}"
            )
        if feature_extractor.dither:
            raise ModelError("the feature extractor dithers: the cached features would not be reproducible")
        return cls(feature_extractor.mel_filters)

    def compute(self, samples: np.ndarray) -> CompactFeatures:
        """16 kHz mono samples (at most 30 s; segment longer audio first) -> the frames that hold audio."""
        if samples.ndim != 1 or len(samples) > N_SAMPLES:
            raise ValueError(f"expected mono audio of at most {N_SAMPLES} samples, got shape {samples.shape}")
        half = N_FFT // 2
        num_frames = min(N_FRAMES, math.ceil((len(samples) + half) / HOP_LENGTH))
        reach = (num_frames - 1) * HOP_LENGTH + half  # samples of the padded input the last frame reaches
        padded = np.zeros(min(reach, N_SAMPLES), dtype=np.float32)
        padded[: len(samples)] = samples
        # the STFT's own centring: reflect at the start, and at the end only when the audio fills 30 s
        padded = np.pad(padded, (half, max(0, reach - N_SAMPLES)), mode="reflect")
        spectrum = torch.stft(
            torch.from_numpy(padded),
            N_FFT,
            HOP_LENGTH,
            window=self._window,
            center=False,
            return_complex=True,
        )
        log_mel = torch.clamp(self._mel_filters_t @ (spectrum.abs() ** 2), min=LOG_MEL_FLOOR).log10()
        floor = log_mel.max() - LOG_MEL_DYNAMIC_RANGE
        frames = (torch.maximum(log_mel, floor) + 4.0) / 4.0
        pad_value = (torch.maximum(self._silent_log_mel, floor) + 4.0) / 4.0
        return CompactFeatures(
            frames=np.ascontiguousarray(frames.T.numpy().astype(np.float16)),
            pad_value=float(pad_value),
        )


def pad_features(frames: ArrayLike, pad_value: float, n_frames: int = N_FRAMES) -> np.ndarray:
    """Cached time-major frames -> the model's input: float32 [n_mels, n_frames], padded with pad_value."""
    frames = np.asarray(frames)
    if frames.ndim != 2 or len(frames) > n_frames:
        raise ValueError(f"expected at most {n_frames} frames of shape [frames, mels], got {frames.shape}")
    padded = np.full((frames.shape[1], n_frames), pad_value, dtype=np.float32)
    padded[:, : len(frames)] = frames.T
    return padded


class LabelEncoder:
    """Transcript -> decoder labels: <|startoftranscript|><|lang|><|task|><|notimestamps|> text <|endoftext|>.

    Configures the tokenizer it is given (its prefix tokens). Does not cut long labels: the caller compares
    the length with MAX_TARGET_POSITIONS and splits or skips the window. Text arrives NFC-normalised.
    """

    def __init__(self, tokenizer: WhisperTokenizer, language: str, task: str) -> None:
        try:
            tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
        except ValueError as error:  # an unknown language or task
            raise ConfigError(str(error)) from None
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids with the prefix and eos around the text."""
        return list(self.tokenizer(text).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
