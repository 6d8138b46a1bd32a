"""decode_audio, cut and augment on real espeak-ng speech, encoded by libsndfile and ffmpeg."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.errors import ConfigError
from whisper_pipeline.prepare.audio import (
    REGION_TOLERANCE_S,
    AudioDecodeError,
    AudioRegionError,
    cut,
    decode_audio,
)
from whisper_pipeline.prepare.augment import AugmentationSettings, augment, augmentation_seed

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "Xin chào các bạn, hôm nay trời đẹp quá."
ALL_ON = AugmentationSettings(gain_p=1.0, noise_p=1.0, stretch_p=1.0, pitch_p=1.0)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """espeak-ng's Vietnamese at its own 22,050 Hz, float32 mono."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "vi", "--stdout", SENTENCE], capture_output=True, check=True
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


@pytest.fixture(scope="module")
def reference(speech) -> np.ndarray:
    """What every lossless encoding must decode to: one-shot soxr HQ to 16 kHz."""
    samples, rate = speech
    return soxr.resample(samples, rate, SAMPLE_RATE, "HQ")


def _encode(samples: np.ndarray, rate: int, file_format: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def _ffmpeg_encode(samples: np.ndarray, rate: int, path: Path, *codec: str) -> bytes:
    """Encode with ffmpeg through a file (the MP4 muxer needs to seek)."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "wav", "-i", "pipe:0", *codec, str(path)],
        input=_encode(samples, rate, "WAV", "FLOAT"),
        check=True,
    )
    return path.read_bytes()


def _piped_mp3(samples: np.ndarray, rate: int, *bitrate: str) -> bytes:
    """MP3 as ffmpeg writes it to a pipe: no Xing/Info tag, which it could only write by seeking back."""
    encode = ["ffmpeg", "-v", "error", "-f", "wav", "-i", "pipe:0", "-c:a", "libmp3lame", *bitrate]
    return subprocess.run([*encode, "-f", "mp3", "pipe:1"], input=_encode(samples, rate, "WAV", "FLOAT"),
                          capture_output=True, check=True).stdout  # fmt: skip


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


# --- decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_format", "subtype", "tolerance"),
    [
        ("WAV", "PCM_U8", 0.02),  # 8-bit WAV: quantisation steps of 1/128
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "PCM_24", 1e-4),
        ("WAV", "FLOAT", 1e-6),
        ("FLAC", "PCM_16", 1e-4),
    ],
)
def test_lossless_files_decode_to_the_resampled_speech(speech, reference, file_format, subtype, tolerance):
    samples, rate = speech
    decoded = decode_audio(_encode(samples, rate, file_format, subtype), name=f"speech.{file_format.lower()}")
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert len(decoded) == len(reference)
    assert np.abs(decoded - reference).max() <= tolerance


def test_stereo_is_the_mean_of_its_channels(speech, reference):
    samples, rate = speech
    stereo = np.stack([samples, 0.25 * samples], axis=1)
    decoded = decode_audio(_encode(stereo, rate, "WAV", "FLOAT"))
    np.testing.assert_allclose(decoded, 0.625 * reference, atol=1e-5)


@pytest.mark.parametrize(("rate", "min_correlation"), [(8_000, 0.98), (16_000, 0.999), (48_000, 0.999)])
def test_any_sample_rate_becomes_16_khz(speech, reference, rate, min_correlation):
    samples, source_rate = speech
    resampled = soxr.resample(samples, source_rate, rate, "HQ")
    decoded = decode_audio(_encode(resampled, rate, "WAV", "PCM_16"))
    assert abs(len(decoded) - len(reference)) <= 2
    length = min(len(decoded), len(reference))
    assert np.corrcoef(decoded[:length], reference[:length])[0, 1] >= min_correlation


@pytest.mark.parametrize(
    ("suffix", "codec", "channels"),
    [
        ("mp3", ("-c:a", "libmp3lame", "-b:a", "128k"), 1),  # libsndfile (mpg123)
        ("ogg", ("-c:a", "libvorbis", "-q:a", "6"), 2),  # libsndfile (Vorbis)
        ("m4a", ("-c:a", "aac", "-b:a", "192k"), 1),  # libsndfile cannot: the ffmpeg fallback
        ("m4a", ("-c:a", "aac", "-b:a", "192k"), 2),
    ],
)
def test_lossy_formats_keep_duration_and_level(speech, reference, tmp_path, suffix, codec, channels):
    samples, rate = speech
    # stereo as (x, x/2): a mean downmix gives 3/4 of the level, ffmpeg's own -ac 1 would give 1.06
    audio = np.stack([samples, 0.5 * samples], axis=1) if channels == 2 else samples
    data = _ffmpeg_encode(audio, rate, tmp_path / f"speech.{suffix}", *codec)
    decoded = decode_audio(data, name=f"speech.{suffix}")
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert abs(len(decoded) - len(reference)) <= 0.1 * SAMPLE_RATE  # encoder priming and padding
    expected_level = _rms(reference) * (0.75 if channels == 2 else 1.0)
    assert _rms(decoded) == pytest.approx(expected_level, rel=0.1)


@pytest.mark.parametrize(
    ("loud_first", "bitrate"),
    [(False, ("-b:a", "128k")), (True, ("-q:a", "0"))],
    ids=["cbr-overstated", "vbr-understated"],
)
def test_an_mp3_without_a_length_tag_decodes_to_what_it_holds(speech, loud_first, bitrate):
    """ffmpeg encoding to a pipe cannot go back to write LAME's length tag, so libsndfile estimates the
    length from the first frame's bitrate: espeak speech at a constant 128 kb/s is estimated too long (its
    reads then came back short, and the decode ended with stale samples); a variable bitrate file whose
    loud first second is followed by quiet speech is estimated far too short (libsndfile stops there). The
    decode ends where the data does and matches ffmpeg's decoder within 2^-14, ISO/IEC 11172-4's bound for
    a fully accurate MPEG audio decoder (the same soxr resampling follows both)."""
    samples, rate = speech
    if loud_first:
        burst = 0.5 * np.random.default_rng(0).standard_normal(rate).astype(np.float32)
        samples = np.concatenate([burst, 0.05 * samples, np.zeros(5 * rate, np.float32)])
    mp3 = _piped_mp3(samples, rate, *bitrate)
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "pipe:1"],
                         input=mp3, capture_output=True, check=True).stdout  # fmt: skip
    held = np.frombuffer(pcm, dtype="<f4")
    estimated = sf.info(io.BytesIO(mp3)).frames
    assert estimated < len(held) / 2 if loud_first else estimated > len(held)  # the case at hand
    expected = soxr.resample(held, rate, SAMPLE_RATE, "HQ")
    decoded = decode_audio(mp3, name="piped.mp3")
    assert len(decoded) == len(expected)
    assert np.abs(decoded - expected).max() <= 2**-14


def test_without_ffmpeg_an_mp3_without_a_length_tag_is_refused_not_cut_short(speech, tmp_path, monkeypatch):
    mp3 = _piped_mp3(*speech, "-b:a", "128k")
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg, no ffprobe
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(mp3, name="piped.mp3")
    assert caught.value.reason == "unsupported_format"
    assert str(caught.value) == (
        "piped.mp3: libsndfile cannot read it (an MP3 without a Xing, Info or VBRI tag, whose length "
        "libsndfile only estimates); ffmpeg is not installed"
    )


def test_zero_bytes_is_empty_audio():
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(b"", name="s3://bucket/empty.wav")
    assert caught.value.reason == "empty_audio"
    assert "s3://bucket/empty.wav" in str(caught.value)


def test_a_wav_without_samples_is_empty_audio():
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(_encode(np.zeros(0, dtype=np.float32), 22_050, "WAV", "PCM_16"))
    assert caught.value.reason == "empty_audio"


def test_a_wav_header_without_data_is_corrupt_audio():
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ", name="header-only.wav")
    assert caught.value.reason == "corrupt_audio"


def test_truncated_flac_is_corrupt_audio(speech):
    samples, rate = speech
    flac = _encode(samples, rate, "FLAC", "PCM_16")
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(flac[: len(flac) // 2], name="cut-short.flac")
    assert caught.value.reason == "corrupt_audio"


@pytest.mark.parametrize(
    "not_audio",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"<html><body><h1>403 Forbidden</h1></body></html>\n",  # an error page saved as the audio
        b'{"error": "NoSuchKey"}',
    ],
    ids=["random", "html", "json"],
)
def test_bytes_that_are_no_audio_are_an_unsupported_format(not_audio):
    with pytest.raises(AudioDecodeError) as caught:
        decode_audio(not_audio, name="speech.wav")
    assert caught.value.reason == "unsupported_format"
    assert "speech.wav" in str(caught.value) and "/tmp" not in str(caught.value)


def test_decode_errors_survive_pickling():
    """Worker processes may send them back to the parent."""
    import pickle

    error = pickle.loads(pickle.dumps(AudioRegionError("empty_region", "region 1-1 s has no length")))
    assert isinstance(error, AudioRegionError)
    assert (error.reason, str(error)) == ("empty_region", "region 1-1 s has no length")


# --- cutting ------------------------------------------------------------------------------------------


def test_cut_returns_a_copy_of_the_region():
    samples = np.arange(3 * SAMPLE_RATE, dtype=np.float32)
    region = cut(samples, 0.5, 1.25)
    np.testing.assert_array_equal(region, samples[8_000:20_000])
    region[:] = 0
    assert samples[8_000] == 8_000


def test_cut_clamps_a_small_overrun_of_either_end():
    samples = np.ones(SAMPLE_RATE, dtype=np.float32)
    assert len(cut(samples, -0.5 * REGION_TOLERANCE_S, 1.0 + 0.5 * REGION_TOLERANCE_S)) == SAMPLE_RATE


@pytest.mark.parametrize(
    ("start", "end", "reason"),
    [
        (0.5, 1.0 + 2 * REGION_TOLERANCE_S, "region_outside_audio"),  # partly outside
        (2.0, 3.0, "region_outside_audio"),  # wholly outside
        (-1.0, 0.5, "region_outside_audio"),
        (0.5, 0.5, "empty_region"),
        (0.7, 0.5, "empty_region"),
        (float("nan"), 0.5, "empty_region"),
        (1.0 + 0.5 * REGION_TOLERANCE_S, 1.0 + REGION_TOLERANCE_S, "empty_region"),  # past the end, tolerated
    ],
)
def test_cut_refuses_regions_that_do_not_fit(start, end, reason):
    with pytest.raises(AudioRegionError) as caught:
        cut(np.ones(SAMPLE_RATE, dtype=np.float32), start, end)
    assert caught.value.reason == reason
    assert isinstance(caught.value, AudioDecodeError)  # the caller counts both kinds as skips


# --- augmentation -------------------------------------------------------------------------------------


def _digest(samples: np.ndarray) -> str:
    return hashlib.sha256(samples.tobytes()).hexdigest()


def test_augment_is_reproducible_and_seed_dependent(reference):
    seeds = [augmentation_seed(42, f"task-1/{index}", 1) for index in range(6)]
    first = [augment(reference, ALL_ON, seed) for seed in seeds]
    again = [augment(reference, ALL_ON, seed) for seed in reversed(seeds)][::-1]
    assert [_digest(x) for x in first] == [_digest(x) for x in again]
    assert len({_digest(x) for x in first}) == len(seeds)
    for augmented in first:
        assert augmented.dtype == np.float32 and augmented.ndim == 1
        assert np.abs(augmented).max() <= 1.0
        assert 0.85 * len(reference) <= len(augmented) <= 1.15 * len(reference)  # stretched 0.9-1.1


def test_augment_is_identical_in_other_processes(reference):
    seeds = [augmentation_seed(7, "task-9/0", copy) for copy in (1, 2, 3)]
    here = [_digest(augment(reference, AugmentationSettings(), seed)) for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        there = pool.starmap(augment, [(reference, AugmentationSettings(), seed) for seed in reversed(seeds)])
    assert [_digest(x) for x in reversed(there)] == here


def test_augment_leaves_the_global_generators_alone(reference):
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    augment(reference, ALL_ON, 99)
    assert (random.random(), np.random.random()) == expected


def test_augment_clips_to_full_scale():
    loud = np.full(SAMPLE_RATE, 0.9, dtype=np.float32)
    louder = AugmentationSettings(
        gain_min_db=6.0, gain_max_db=6.0, gain_p=1.0, noise_p=0, stretch_p=0, pitch_p=0
    )
    augmented = augment(loud, louder, 1)
    assert augmented.max() == 1.0 and augmented.dtype == np.float32


def test_augmentation_seed_is_pinned():
    """A changed derivation would silently change every cached augmented copy."""
    assert augmentation_seed(42, "task-1/0", 1) == 0xF5FC5FF463BE6456
    assert augmentation_seed(42, "task-1/0", 2) != augmentation_seed(42, "task-1/0", 1)
    assert augmentation_seed(43, "task-1/0", 1) != augmentation_seed(42, "task-1/0", 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"gain_min_db": 7.0},
        {"noise_min_amplitude": 0.0},
        {"stretch_min_rate": 1.2},
        {"pitch_max_semitones": 30.0},
        {"pitch_p": 1.5},
    ],
)
def test_augmentation_settings_refuse_bad_ranges(bad):
    with pytest.raises(ConfigError):
        AugmentationSettings(**bad)


def test_augmentation_settings_come_from_a_config_file(tmp_path):
    config = tmp_path / "prepare.yaml"
    config.write_text("gain_p: 0.0\npitch_max_semitones: 1.5\n", encoding="utf-8")
    (settings,) = parse_config([AugmentationSettings], [str(config), "--noise_p", "0.25"])
    assert settings == AugmentationSettings(gain_p=0.0, pitch_max_semitones=1.5, noise_p=0.25)


# --- worker processes ---------------------------------------------------------------------------------


def test_limit_threads_leaves_one_thread_per_library():
    probe = (
        "from whisper_pipeline.prepare.worker import limit_threads; limit_threads(); "
        "import torch; from threadpoolctl import threadpool_info; "
        "print(torch.get_num_threads(), max(pool['num_threads'] for pool in threadpool_info()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.split() == ["1", "1"]
