"""Whisper's log-mel input stored compactly and restored exactly, and the token labels that go with it.

Whisper always sees 30 s: audio is zero-padded to 480,000 samples before its log-mel. Every frame past the
audio sees only that padding and takes one value, so the cache keeps the audio's frames (float16, 16 KB per
audio-second) and that value; `pad_features` rebuilds the 80 x 3000 input the feature extractor would give.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from whisper_pipeline.constants import (
    HOP_LENGTH,
    LOG_MEL_DYNAMIC_RANGE,
    LOG_MEL_FLOOR,
    N_FFT,
    N_FRAMES,
    N_SAMPLES,
    N_TIMESTAMPS,
    SAMPLE_RATE,
    TIME_PRECISION,
    TIMESTAMP_TOKENS,
)
from whisper_pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"  # the feature extractor's own file
# transformers 5's WhisperProcessor.save_pretrained (and Trainer checkpoints) write the feature extractor's
# settings nested in this one, under "feature_extractor", and no preprocessor_config.json
PROCESSOR_CONFIG = "processor_config.json"
FEATURE_EXTRACTOR_FILES = (PROCESSOR_CONFIG, PREPROCESSOR_CONFIG)


def _json_object(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read the feature extractor settings {path}: {error}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return config


def feature_extractor_settings(model_dir: Path) -> tuple[Path, dict]:
    """The feature extractor's settings where transformers takes them from, and that file: nested in
    processor_config.json when it holds them (they win there), else preprocessor_config.json."""
    model_dir = Path(model_dir)
    processor, own = model_dir / PROCESSOR_CONFIG, model_dir / PREPROCESSOR_CONFIG
    if processor.is_file():
        nested = _json_object(processor).get("feature_extractor")
        if isinstance(nested, dict):
            return processor, nested
        if nested is not None:
            raise ModelError(f"{processor}: its feature_extractor is not a JSON object")
    if not own.is_file():
        raise ModelError(
            f"{model_dir} has no feature extractor settings ({PREPROCESSOR_CONFIG}, or {PROCESSOR_CONFIG} "
            "with a feature_extractor)"
        )
    return own, _json_object(own)


@dataclass(frozen=True)
class CompactFeatures:
    """The log-mel frames that hold audio, time-major (only the first dimension varies between rows), and
    the value every later frame of the 30 s input takes."""

    frames: np.ndarray  # float16 [num_frames, n_mels]
    pad_value: float  # a float32 value


class LogMelFeaturizer:
    """WhisperFeatureExtractor's log-mel, computed only over the frames the audio reaches, with numpy.

    The extractor's steps: periodic Hann window, centred STFT with reflect padding, power, the extractor's
    own mel filters, log10 of at least LOG_MEL_FLOOR, clamp to the maximum minus LOG_MEL_DYNAMIC_RANGE,
    then (x + 4) / 4, in float32. Frame i covers samples [i*160 - 200, i*160 + 200) of the zero-padded
    input, so frames from ceil((len + 200) / 160) on see only zeros; their log-mel is
    log10(LOG_MEL_FLOOR), never above the audio's maximum, so the clamp is the same as over 30 s.
    A 2 s clip costs an STFT of 2 s instead of 30 s.

    numpy and scipy.fft, not torch: the feature workers then start without importing torch (seconds and
    hundreds of MB each). Another FFT library rounds differently in the last float32 bit: the values stay
    within 1e-5 of the extractor's (its own numpy and torch paths differ by as much), far below the float16
    step the cache stores them in.
    """

    def __init__(self, mel_filters: np.ndarray) -> None:
        """`mel_filters`: the extractor's [n_freqs, n_mels] matrix (see `from_pretrained`)."""
        self._mel_filters = np.asarray(mel_filters, dtype=np.float32)
        if self._mel_filters.shape[0] != N_FFT // 2 + 1:
            raise ValueError(
                f"expected mel filters of {N_FFT // 2 + 1} frequencies, got {self._mel_filters.shape}"
            )
        self._window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic, as torch.hann_window
        self._silent_log_mel = np.log10(np.float32(LOG_MEL_FLOOR))

    @property
    def mel_filters(self) -> np.ndarray:
        """float32 [n_freqs, n_mels]."""
        return self._mel_filters

    @property
    def n_mels(self) -> int:
        return self._mel_filters.shape[1]

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> LogMelFeaturizer:
        """The log-mel of the model directory's WhisperFeatureExtractor, without loading that class: its
        module imports torch, which the main process of prepare_data.py does not otherwise need. The settings
        come from its preprocessor_config.json (or transformers 5's processor_config.json), the mel filters
        are built as its constructor builds them. Refuses another geometry or dithering, which would make it
        another log-mel."""
        from transformers.audio_utils import mel_filter_bank

        path, config = feature_extractor_settings(model_dir)
        sampling_rate = config.get("sampling_rate", SAMPLE_RATE)
        n_fft = config.get("n_fft", N_FFT)
        hop_length = config.get("hop_length", HOP_LENGTH)
        n_samples = config.get("chunk_length", N_SAMPLES // SAMPLE_RATE) * sampling_rate
        geometry = (sampling_rate, n_fft, hop_length, n_samples)
        if geometry != (SAMPLE_RATE, N_FFT, HOP_LENGTH, N_SAMPLES):
            raise ModelError(
                f"{path}: the feature extractor's (sampling rate, n_fft, hop, samples) are "
                f"{geometry}, not Whisper's {(SAMPLE_RATE, N_FFT, HOP_LENGTH, N_SAMPLES)}"
            )
        if config.get("dither", 0.0):
            raise ModelError(
                f"{path}: the feature extractor dithers, the cached features would not be reproducible"
            )
        feature_size = config.get("feature_size", 80)
        if not isinstance(feature_size, int) or feature_size <= 0:
            raise ModelError(f"{path}: feature_size must be a positive integer, got {feature_size!r}")
        return cls(
            mel_filter_bank(
                num_frequency_bins=1 + N_FFT // 2,
                num_mel_filters=feature_size,
                min_frequency=0.0,
                max_frequency=8000.0,
                sampling_rate=SAMPLE_RATE,
                norm="slaney",
                mel_scale="slaney",
            )
        )

    def log_mel(self, samples: np.ndarray, *, whole: bool = False) -> tuple[np.ndarray, np.float32]:
        """16 kHz mono samples (at most 30 s) -> float32 [num_frames, n_mels] of the frames that hold audio,
        and the value of every later frame. With `whole`, audio of any length as Whisper's long-form input:
        the log-mel of the whole recording (the extractor with `truncation=False`), zero-padded to 30 s."""
        if samples.ndim != 1 or (len(samples) > N_SAMPLES and not whole):
            raise ValueError(f"expected mono audio of at most {N_SAMPLES} samples, got shape {samples.shape}")
        half = N_FFT // 2
        input_samples = max(len(samples), N_SAMPLES)
        num_frames = min(input_samples // HOP_LENGTH, math.ceil((len(samples) + half) / HOP_LENGTH))
        reach = (num_frames - 1) * HOP_LENGTH + half  # samples of the padded input the last frame reaches
        padded = np.zeros(min(reach, input_samples), dtype=np.float32)
        padded[: min(len(samples), reach)] = samples[:reach]  # a long recording's last samples reach no frame
        # the STFT's own centring: reflect at the start, and at the end only when the audio fills the input
        padded = np.pad(padded, (half, max(0, reach - input_samples)), mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
        from scipy import fft  # slow to import: the main process of prepare_data.py only builds this

        spectrum = fft.rfft(frames * self._window, axis=-1, overwrite_x=True)
        power = np.square(spectrum.real) + np.square(spectrum.imag)
        log_mel = np.log10(np.maximum(power @ self._mel_filters, np.float32(LOG_MEL_FLOOR)))
        floor = log_mel.max() - np.float32(LOG_MEL_DYNAMIC_RANGE)
        frames_out = (np.maximum(log_mel, floor) + np.float32(4.0)) / np.float32(4.0)
        pad_value = (np.maximum(self._silent_log_mel, floor) + np.float32(4.0)) / np.float32(4.0)
        return frames_out, pad_value

    def compute(self, samples: np.ndarray, *, whole: bool = False) -> CompactFeatures:
        """16 kHz mono samples (at most 30 s, or with `whole` a recording of any length, see `log_mel`) ->
        the frames that hold audio."""
        frames, pad_value = self.log_mel(samples, whole=whole)
        return CompactFeatures(frames=frames.astype(np.float16), pad_value=float(pad_value))


def pad_features(frames: ArrayLike, pad_value: float, n_frames: int = N_FRAMES) -> np.ndarray:
    """Cached time-major frames -> the model's input: float32 [n_mels, n_frames], padded with pad_value."""
    frames = np.asarray(frames)
    if frames.ndim != 2 or len(frames) > n_frames:
        raise ValueError(f"expected at most {n_frames} frames of shape [frames, mels], got {frames.shape}")
    padded = np.full((frames.shape[1], n_frames), pad_value, dtype=np.float32)
    padded[:, : len(frames)] = frames.T
    return padded


NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # Whisper v3's name, then the older vocabularies'


class LabelEncoder:
    """Transcripts -> decoder labels in Whisper's timestamped form, as its long-form decoding expects:

        <|startoftranscript|><|lang|><|task|> (<|start|> text <|end|>)... <|endoftext|>

    one segment per speech region of a window, times relative to the window's start on Whisper's 0.02 s
    grid. Training derives the <|notimestamps|> form from these at batch time (train/trainer.py).
    A window with no speech gets what Whisper emits then: <|startoftranscript|><|nospeech|><|endoftext|>
    (<|nocaptions|> in the older vocabularies).

    Every special token is looked up by its text in the model's own tokenizer, never by offset (Whisper
    v3's vocabulary moves them). Text tokens are the ids WhisperTokenizerFast gives (the tests compare
    them), from the `tokenizers` library it wraps: the wrapper's import and load would delay the first
    recording of prepare_data.py. A segment's text is encoded with its leading space, as Whisper writes it.
    Does not cut long labels: the caller compares the length with MAX_TARGET_POSITIONS.
    """

    def __init__(self, tokenizer: Tokenizer, language: str, task: str) -> None:
        """`tokenizer`: the model's tokenizer.json (or WhisperTokenizerFast's `backend_tokenizer`)."""
        if task not in ("transcribe", "translate"):
            raise ConfigError(f"unsupported task {task!r}: Whisper's are transcribe and translate")
        self._tokenizer = tokenizer
        self._prefix = [
            self._special_id("<|startoftranscript|>"),
            self._special_id(f"<|{_language_code(tokenizer, language)}|>"),
            self._special_id(f"<|{task}|>"),
        ]
        self._eos = self._special_id("<|endoftext|>")
        self.timestamp_ids = tuple(self._special_id(token) for token in TIMESTAMP_TOKENS)
        names = [name for name in NO_SPEECH_TOKENS if tokenizer.token_to_id(name) is not None]
        self._no_speech = self._special_id(names[0] if names else NO_SPEECH_TOKENS[0])

    @classmethod
    def from_pretrained(cls, model_dir: Path, language: str, task: str) -> LabelEncoder:
        """The model directory's tokenizer.json; a directory with only the slow tokenizer's files (vocab.json,
        merges.txt) goes through transformers, which converts them."""
        path = Path(model_dir) / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)), language, task)
        from transformers import WhisperTokenizerFast

        return cls(WhisperTokenizerFast.from_pretrained(str(model_dir)).backend_tokenizer, language, task)

    def _special_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelError(f"the tokenizer has no {token} token: not a multilingual Whisper tokenizer")
        return token_id

    def text_tokens(self, text: str) -> tuple[int, ...]:
        """A segment's text tokens, with the leading space Whisper writes before each segment."""
        return tuple(self._tokenizer.encode(f" {text}", add_special_tokens=False).ids)

    def timestamp(self, seconds: float) -> int:
        """The token of the nearest 0.02 s step, within [0, 30] s."""
        return timestamp_token(self.timestamp_ids, seconds)

    def labels(self, segments: Sequence[tuple[float, float, Sequence[int]]]) -> list[int]:
        """(start, end, text tokens) of each segment, in seconds from the window's start -> the labels."""
        body = [
            token
            for start, end, tokens in segments
            for token in (self.timestamp(start), *tokens, self.timestamp(end))
        ]
        return [*self._prefix, *body, self._eos]

    def label_length(self, token_counts: Sequence[int]) -> int:
        """The length of `labels` for segments of these token counts, without building them."""
        return len(self._prefix) + sum(count + 2 for count in token_counts) + 1

    def no_speech_labels(self) -> list[int]:
        return [self._prefix[0], self._no_speech, self._eos]


def timestamp_token(timestamp_ids: Sequence[int], seconds: float) -> int:
    """The token of the nearest 0.02 s step, within [0, 30] s, among <|0.00|> ... <|30.00|>'s ids."""
    return timestamp_ids[min(max(round(seconds / TIME_PRECISION), 0), N_TIMESTAMPS - 1)]


def _language_code(tokenizer: Tokenizer, language: str) -> str:
    """A Whisper language code from a code or an English name (vi, Vietnamese), as WhisperTokenizer reads
    it. Whisper's special tokens list the language tokens between <|startoftranscript|> and <|translate|>;
    names are looked up in transformers' table only when given (importing it is slow)."""

    def is_language(code: str) -> bool:
        token_id = tokenizer.token_to_id(f"<|{code}|>")
        first, last = tokenizer.token_to_id("<|startoftranscript|>"), tokenizer.token_to_id("<|translate|>")
        return None not in (token_id, first, last) and first < token_id < last

    code = language.lower()
    if not is_language(code):
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(code, code)
    if not is_language(code):
        raise ConfigError(
            f"unsupported language {language!r}: give a Whisper language code (vi) or its English name"
            " (vietnamese)"
        )
    return code
