"""Long-form evaluation: whole recordings transcribed the way users deploy the model (Whisper's sequential
30 s windows with timestamps, in transformers or faster-whisper), scored against their annotations.

Short utterances scored one by one say nothing of what breaks on a whole recording: a model fine-tuned
without timestamps loses them, and the long-form algorithm, which moves from window to window by the last
timestamp, then drops speech or repeats itself. These scores show it:

- WER and CER of each recording's transcript against its annotated regions' texts joined, and deletions
  (reference words the transcript lost, as a share of the reference's words);
- coverage: the share of annotated utterances at least half under predicted segments;
- timing error: the mean absolute difference between an utterance's start and end and those of the
  predicted segment that overlaps it most;
- hallucination: words written on noise-only recordings, and the share of transcripts with a loop (a word
  3-gram three times or more).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from whisper_pipeline.constants import CHUNK_SECONDS, SAMPLE_RATE
from whisper_pipeline.errors import PipelineError
from whisper_pipeline.prepare.annotations import AnnotationSettings, RegionKind, load_export, parse_export
from whisper_pipeline.prepare.audio import AudioDecodeError, decode_audio
from whisper_pipeline.prepare.sources import (
    AudioSourceError,
    S3Access,
    read_bytes,
    resolve_audio_uri,
)
from whisper_pipeline.train.metrics import normalize_for_scoring, score

COVERED_SHARE = 0.5  # an utterance counts as covered when at least this share of it is under segments
LOOP_NGRAM, LOOP_REPEATS = 3, 3


@dataclass(frozen=True)
class Span:
    start: float
    end: float
    text: str


@dataclass(frozen=True, eq=False)  # samples: an array has no single truth value to compare by
class LongRecording:
    """A recording of the held-out export, whole: its annotated speech, or none (noise only)."""

    uri: str
    samples: np.ndarray
    utterances: tuple[Span, ...]

    @property
    def noise_only(self) -> bool:
        return not self.utterances

    @property
    def reference(self) -> str:
        return " ".join(utterance.text for utterance in self.utterances)


def is_long_form(recording: LongRecording) -> bool:
    """What the short-form score cannot show: over one window, or several utterances in one."""
    return len(recording.samples) > CHUNK_SECONDS * SAMPLE_RATE or len(recording.utterances) > 1


def read_recordings(
    raw_export: bytes,
    settings: AnnotationSettings,
    *,
    local_files_root: str | None,
    s3: S3Access,
) -> list[LongRecording]:
    """Every task of the export with transcribed speech or only excluded (noise) regions, decoded whole."""
    parsed = parse_export(load_export(raw_export), settings)
    root = Path(local_files_root) if local_files_root else None
    recordings = []
    for task in parsed.tasks:
        kinds = {region.kind for region in task.regions}
        if RegionKind.UNTRANSCRIBED in kinds or not kinds & {RegionKind.SPEECH, RegionKind.EXCLUDED}:
            continue  # speech without text cannot be scored
        try:
            ref = resolve_audio_uri(
                task.audio_uri, default_bucket=s3.settings.bucket_name, local_files_root=root
            )
            samples = decode_audio(read_bytes(ref, s3.client() if ref.kind == "s3" else None, s3.stats))
        except (AudioSourceError, AudioDecodeError) as error:
            raise PipelineError(f"long-form evaluation cannot read {task.audio_uri}: {error}") from None
        utterances = tuple(
            Span(region.start, region.end, region.text)
            for region in task.regions
            if region.kind is RegionKind.SPEECH
        )
        recordings.append(LongRecording(task.audio_uri, samples, utterances))
    return recordings


def score_long_form(recordings: Sequence[LongRecording], outputs: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """The scores above over `recordings` (speech and noise-only ones) and their predicted segments."""
    speech = [(r, segments) for r, segments in zip(recordings, outputs, strict=True) if not r.noise_only]
    noise = [segments for r, segments in zip(recordings, outputs, strict=True) if r.noise_only]
    texts = [" ".join(segment.text for segment in segments) for _, segments in speech]
    scores: dict[str, Any] = {"recordings": len(speech), "noise_recordings": len(noise)}
    if speech:
        references = [recording.reference for recording, _ in speech]
        scores.update(score(references, texts))
        aligned = jiwer.process_words(
            [normalize_for_scoring(text) for text in references],
            [normalize_for_scoring(text) for text in texts],
        )
        reference_words = sum(len(normalize_for_scoring(text).split()) for text in references)
        scores["deletions"] = aligned.deletions / max(reference_words, 1)
        utterances = [(u, segments) for recording, segments in speech for u in recording.utterances]
        scores["coverage"] = sum(_covered(u, segments) for u, segments in utterances) / len(utterances)
        errors = [error for u, segments in utterances if (error := _boundary_error(u, segments)) is not None]
        scores["timestamp_error"] = float(np.mean(errors)) if errors else None
    all_texts = texts + [" ".join(segment.text for segment in segments) for segments in noise]
    scores["noise_words"] = sum(
        len(normalize_for_scoring(s.text).split()) for segments in noise for s in segments
    )
    scores["loops"] = sum(has_loop(text) for text in all_texts) / max(len(all_texts), 1)
    return scores


def _covered(utterance: Span, segments: Sequence[Span]) -> bool:
    """At least COVERED_SHARE of the utterance under the union of the segments."""
    under = 0.0
    reached = utterance.start
    for segment in sorted(segments, key=lambda s: s.start):
        start, end = max(segment.start, reached), min(segment.end, utterance.end)
        if end > start:
            under += end - start
            reached = end
    return under >= COVERED_SHARE * (utterance.end - utterance.start)


def _boundary_error(utterance: Span, segments: Sequence[Span]) -> float | None:
    """Mean |start - start'| and |end - end'| against the segment that overlaps the utterance most."""
    overlaps = [(min(s.end, utterance.end) - max(s.start, utterance.start), s) for s in segments]
    overlap, best = max(overlaps, key=lambda pair: pair[0], default=(0.0, None))
    if best is None or overlap <= 0:
        return None
    return (abs(best.start - utterance.start) + abs(best.end - utterance.end)) / 2


def has_loop(text: str) -> bool:
    """A word 3-gram written three times or more: the repetition long-form decoding falls into."""
    words = normalize_for_scoring(text).split()
    grams = Counter(tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1))
    return any(count >= LOOP_REPEATS for count in grams.values())
