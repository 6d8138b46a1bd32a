"""Audio inside prepare_data.py's worker processes: decode to 16 kHz mono, cut windows, augment.

Every function is deterministic: the same bytes, region, settings and seed give byte-identical samples in
any process and in any order, so a resumed or re-run stage 1 rebuilds exactly the same cache.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, cast

import numpy as np
import soundfile as sf
import soxr

from whisper_pipeline.constants import SAMPLE_RATE

RESAMPLE_QUALITY = "HQ"  # soxr's high quality: the same filter in every run, no dithering
BLOCK_FRAMES = 1 << 17  # frames decoded and resampled at a time (about 3 s at 48 kHz)
REGION_TOLERANCE_S = 0.1  # a region may overrun the decoded audio by this much (see `cut`)
_SF_ERR_UNRECOGNISED_FORMAT = 1  # libsndfile's code for "these bytes are no format I know"
# An MP3 states its length only in a Xing/Info (LAME) or VBRI tag inside its first frame. Without one,
# libsndfile estimates the length from the first frame's bitrate and stops reading there: a 20 s VBR file
# piped out of ffmpeg, loud first, decoded as 3.3 s. ffmpeg reads such a file to its end.
MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
MP3_FIRST_FRAME_BYTES = 1024  # more than any first frame holds before its tag
UNTAGGED_MP3 = "an MP3 without a Xing, Info or VBRI tag, whose length libsndfile only estimates"


class AudioDecodeError(Exception):
    """An audio file or region that cannot become training audio: the caller counts a skip by `reason`.

    Reasons: "empty_audio", "corrupt_audio", "unsupported_format" (decoding); "empty_region",
    "region_outside_audio" (cutting, see AudioRegionError).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # both in args, so the error survives pickling between processes
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class AudioRegionError(AudioDecodeError):
    """A labelled region that does not fit the decoded audio: "empty_region" or "region_outside_audio"."""


# --- decoding -----------------------------------------------------------------------------------------


class _SampleBuffer:
    """Appends float32 chunks into one array, so the decoded audio is held once, not once per chunk.

    Collecting chunks and concatenating them would hold the recording twice at the end (2 x 460 MB for two
    hours at 16 kHz); starting at the expected length means no copy at all when the estimate holds.
    """

    def __init__(self, capacity: int) -> None:
        self._array = np.empty(max(capacity, SAMPLE_RATE), dtype=np.float32)
        self._length = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self._length + len(chunk)
        if end > len(self._array):
            grown = np.empty(max(end, len(self._array) * 3 // 2), dtype=np.float32)
            grown[: self._length] = self._array[: self._length]
            self._array = grown
        self._array[self._length : end] = chunk
        self._length = end

    def samples(self) -> np.ndarray:
        return self._array[: self._length]


def decode_audio(data: bytes, *, name: str = "") -> np.ndarray:
    """Encoded audio (WAV, FLAC, MP3, OGG, ... at any rate and channel count) -> float32 mono at 16 kHz.

    libsndfile decodes what it knows (WAV of any sample format, FLAC, MP3 with a length tag, OGG
    Vorbis/Opus); ffmpeg decodes the rest (AAC/M4A, WebM, MP3 without one: see MP3_LENGTH_TAGS). Either way
    channels are averaged and soxr resamples, block by block (BLOCK_FRAMES), so memory holds the 16 kHz
    result (460 MB for two hours) plus one block, never the whole recording at its source rate (2.7 GB for
    two hours of 48 kHz stereo float).
    `name` only labels error messages. Raises AudioDecodeError.
    """
    label = name or "audio"
    if not data:
        raise AudioDecodeError("empty_audio", f"{label}: the file is empty (zero bytes)")
    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except sf.LibsndfileError as error:
        recognised = error.code != _SF_ERR_UNRECOGNISED_FORMAT
        samples = _decode_with_ffmpeg(data, label, recognised=recognised, reader_error=error.error_string)
    else:
        with sound:
            if sound.format == "MP3" and not _mp3_states_its_length(data):
                samples = _decode_with_ffmpeg(data, label, recognised=True, reader_error=UNTAGGED_MP3)
            else:
                try:
                    samples = _downmix_resample(_file_blocks(sound), sound.samplerate, sound.frames)
                except sf.LibsndfileError as error:  # recognised, but its data breaks off (truncated FLAC)
                    raise AudioDecodeError(
                        "corrupt_audio",
                        f"{label}: its {sound.format} data cannot be decoded ({error.error_string})",
                    ) from None
    if not len(samples):
        raise AudioDecodeError("empty_audio", f"{label}: the file holds no samples")
    if not np.isfinite(samples).all():
        raise AudioDecodeError("corrupt_audio", f"{label}: the samples hold NaN or infinity")
    return samples


def _mp3_states_its_length(data: bytes) -> bool:
    """Whether the first MPEG frame, after any ID3v2 tag, holds a length tag (MP3_LENGTH_TAGS)."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # 10-byte header, the size in 4 syncsafe bytes, a footer flag
        start = 10 + (data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]) + (10 if data[5] & 0x10 else 0)
    first_frame = data[start : start + MP3_FIRST_FRAME_BYTES]
    return any(tag in first_frame for tag in MP3_LENGTH_TAGS)


def _downmix_resample(blocks: Iterable[np.ndarray], rate: int, expected_frames: int) -> np.ndarray:
    """[frames, channels] float32 blocks at `rate` -> one 16 kHz mono array (mean of the channels)."""
    resampler = (
        None
        if rate == SAMPLE_RATE
        else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32", RESAMPLE_QUALITY)
    )
    buffer = _SampleBuffer(math.ceil(max(expected_frames, 0) * SAMPLE_RATE / rate) + 1)
    for block in blocks:
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        buffer.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        buffer.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return buffer.samples()


def _file_blocks(sound: sf.SoundFile) -> Iterator[np.ndarray]:
    """[frames, channels] blocks of up to BLOCK_FRAMES until the decoder has no more.

    Not SoundFile.blocks: it reads as many frames as the header announces and keeps its buffer when a read
    comes back short, so a count above what the data holds (an MP3 whose tag is wrong; untagged MP3s, whose
    count is only an estimate, go to ffmpeg) gave the end of the recording a second time, or uninitialised
    memory for a file shorter than one block.
    """
    while len(block := sound.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
        yield block


def _pipe_blocks(pipe: IO[bytes], channels: int) -> Iterator[np.ndarray]:
    """Interleaved float32 from a pipe -> [frames, channels] blocks of up to BLOCK_FRAMES."""
    frame_bytes = 4 * channels
    while chunk := pipe.read(BLOCK_FRAMES * frame_bytes):
        whole_frames = chunk[: len(chunk) // frame_bytes * frame_bytes]
        yield np.frombuffer(whole_frames, dtype="<f4").reshape(-1, channels)


def _decode_with_ffmpeg(data: bytes, label: str, *, recognised: bool, reader_error: str) -> np.ndarray:
    """Formats libsndfile cannot open: ffprobe finds the first audio stream, ffmpeg decodes it to float32
    at its own rate and channels, and the same downmix and soxr resampling as for libsndfile follow
    (ffmpeg's own `-ac 1` would sum stereo at -3 dB each instead of averaging).

    The input goes through a temporary file, not a pipe: some containers (MP4/M4A with the index at the
    end) can only be read with seeking. Raises "unsupported_format" when neither libsndfile nor ffprobe
    recognises the bytes, "corrupt_audio" when the format is recognised but does not decode.
    """
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    if ffmpeg is None or ffprobe is None:
        raise AudioDecodeError(
            "unsupported_format",
            f"{label}: libsndfile cannot read it ({reader_error}); ffmpeg is not installed",
        )
    with tempfile.NamedTemporaryFile(prefix="decode-") as source, tempfile.TemporaryFile() as errors:
        source.write(data)
        source.flush()
        probe = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
             "stream=sample_rate,channels:format=duration", "-of", "json", source.name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        found = json.loads(probe.stdout) if probe.returncode == 0 else {}
        if not found.get("streams"):
            detail = probe.stderr.replace(source.name, label).strip() or "no audio stream"
            raise AudioDecodeError(
                "corrupt_audio" if recognised else "unsupported_format",
                f"{label}: neither libsndfile ({reader_error}) nor ffmpeg can read it: {detail}",
            )
        rate, channels = int(found["streams"][0]["sample_rate"]), int(found["streams"][0]["channels"])
        try:  # only sizes the output buffer; some containers do not know their duration ("N/A")
            expected_frames = round(float(found["format"]["duration"]) * rate)
        except (KeyError, ValueError):
            expected_frames = 0
        process = subprocess.Popen(
            [ffmpeg, "-nostdin", "-v", "error", "-threads", "1", "-i", source.name, "-map", "0:a:0",
             "-ac", str(channels), "-ar", str(rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
        )  # fmt: skip
        pipe = cast(IO[bytes], process.stdout)  # stdout=PIPE always gives a pipe
        with pipe:
            samples = _downmix_resample(_pipe_blocks(pipe, channels), rate, expected_frames)
        returncode = process.wait()
        errors.seek(0)
        detail = errors.read().decode("utf-8", "replace").replace(source.name, label).strip()
    if returncode != 0:
        last_line = detail.splitlines()[-1] if detail else f"ffmpeg exit code {returncode}"
        raise AudioDecodeError("corrupt_audio", f"{label}: ffmpeg cannot decode it: {last_line}")
    return samples


def cut(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The samples of [start_s, end_s) as a copy; a region that does not fit raises AudioRegionError.

    A region may overrun either end by up to REGION_TOLERANCE_S and is clamped there: a region drawn in the
    browser ends a few milliseconds past the decoded length (float rounding, MP3 encoder padding decoded
    differently). A region further outside would pair a transcript with audio that is not there.
    """
    if not end_s > start_s:  # also catches NaN
        raise AudioRegionError("empty_region", f"region {start_s:.3f}-{end_s:.3f} s has no length")
    duration = len(samples) / SAMPLE_RATE
    if start_s < -REGION_TOLERANCE_S or end_s > duration + REGION_TOLERANCE_S:
        raise AudioRegionError(
            "region_outside_audio",
            f"region {start_s:.3f}-{end_s:.3f} s lies outside the audio (0-{duration:.3f} s)",
        )
    begin = max(0, round(start_s * SAMPLE_RATE))
    stop = min(len(samples), round(end_s * SAMPLE_RATE))
    if stop <= begin:
        raise AudioRegionError(
            "empty_region", f"region {start_s:.3f}-{end_s:.3f} s holds no samples of the audio"
        )
    return samples[begin:stop].copy()
