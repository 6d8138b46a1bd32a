"""Regions -> windows of at most 30 s (what the model sees), and the train/validation split.

A window is cut at region boundaries: each of its speech regions is a timestamped segment of its labels;
excluded (noise) regions between them keep their audio and add no segment; a window never reaches over an
untranscribed region, whose speech would teach the model to drop words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

from whisper_pipeline.cache import TRAIN, VALIDATION
from whisper_pipeline.constants import CHUNK_SECONDS, MAX_PROMPT_TOKENS, MAX_TARGET_POSITIONS
from whisper_pipeline.prepare.annotations import Region, RegionKind, Skip, Task
from whisper_pipeline.prepare.features import timestamp_token

if TYPE_CHECKING:
    from whisper_pipeline.prepare.features import LabelEncoder


@dataclass(frozen=True)
class Window:
    """One training example's audio span and target.

    `labels`: token ids in Whisper's timestamped form (see LabelEncoder), or the no-speech target for a
    window that holds only excluded (noise) audio. `previous_tokens`: the text tokens of the recording's
    window before this one (at most MAX_PROMPT_TOKENS, its last ones), what training may condition on.
    `whole_file`: a whole-file transcription, whose end (here the longest it may be) and end timestamp
    become the decoded duration's in the worker (`fitted_to`)."""

    window_id: str
    task_id: str
    audio_uri: str
    start: float
    end: float
    text: str
    labels: tuple[int, ...]
    previous_tokens: tuple[int, ...] = ()
    whole_file: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


class Utterance(NamedTuple):
    """An annotated speech region of a recording, what a long-form transcript is scored against."""

    start: float
    end: float
    text: str


def is_long_form(seconds: float, utterances: Sequence[Utterance]) -> bool:
    """A recording whose whole transcript says what single windows cannot: longer than one window, or
    several utterances in one (the long-form algorithm's seeking and segmenting), or none at all (noise
    only: whatever is written there is hallucinated)."""
    return seconds > CHUNK_SECONDS or len(utterances) != 1


class _Span(NamedTuple):
    """A window before its id and previous text are known (sorted by time)."""

    start: float
    end: float
    text: str
    labels: tuple[int, ...]
    text_tokens: tuple[int, ...]  # its segments' text tokens, without the timestamps


def pack_windows(
    task: Task,
    encoder: LabelEncoder,
    *,
    max_seconds: float = CHUNK_SECONDS,
    max_tokens: int = MAX_TARGET_POSITIONS,
    max_regions: int | None = None,
    no_speech: bool = True,
) -> tuple[list[Window], list[Skip]]:
    """A task's windows, in time order: its speech regions greedily packed within both limits (a segment
    each), and, with `no_speech`, each excluded region that overlaps no other region as a no-speech window.

    Gaps between regions are never no-speech windows: they may hold speech nobody transcribed.
    A whole-file transcription is the task's one window (see `_whole_file_window`)."""
    speech = [region for region in task.regions if region.kind is RegionKind.SPEECH]
    if any(region.whole_file for region in speech):
        return _whole_file_window(task, speech, encoder, max_seconds, max_tokens)
    untranscribed = [region for region in task.regions if region.kind is RegionKind.UNTRANSCRIBED]
    tokens = {region.region_id: encoder.text_tokens(region.text) for region in speech}
    spans: list[_Span] = []
    skips: list[Skip] = []

    def fits(group: list[Region]) -> bool:
        start, end = group[0].start, max(member.end for member in group)
        return (
            end - start <= max_seconds
            and (max_regions is None or len(group) <= max_regions)
            and not any(other.start < end and other.end > start for other in untranscribed)
            and encoder.label_length([len(tokens[member.region_id]) for member in group]) <= max_tokens
        )

    def close(group: list[Region]) -> None:
        start = group[0].start
        segments = [(m.start - start, m.end - start, tokens[m.region_id]) for m in group]
        length = encoder.label_length([len(segment) for _, _, segment in segments])
        if length > max_tokens:  # a lone region over the token limit
            detail = f"region {group[0].region_id}: {length} tokens > {max_tokens}"
            skips.append(Skip("labels_too_long", task.task_id, task.audio_uri, detail))
            return
        text_tokens = tuple(token for _, _, segment in segments for token in segment)
        text = " ".join(member.text for member in group)
        end = max(member.end for member in group)
        spans.append(_Span(start, end, text, tuple(encoder.labels(segments)), text_tokens))

    group: list[Region] = []
    for region in speech:
        if region.end - region.start > max_seconds:
            skips.append(_too_long(task, region, max_seconds))
            continue
        if group and fits([*group, region]):
            group.append(region)
            continue
        if group:
            close(group)
        group = [region]
    if group:
        close(group)
    if no_speech:
        spans += _no_speech_spans(task, encoder, max_seconds, skips)
    windows: list[Window] = []
    previous: tuple[int, ...] = ()
    for index, (start, end, text, labels, text_tokens) in enumerate(sorted(spans, key=lambda span: span[:2])):
        window_id = f"{task.task_id}/{index:04d}"
        windows.append(Window(window_id, task.task_id, task.audio_uri, start, end, text, labels, previous))
        if text_tokens:
            previous = text_tokens[-MAX_PROMPT_TOKENS:]
    return windows, skips


def _whole_file_window(
    task: Task, speech: list[Region], encoder: LabelEncoder, max_seconds: float, max_tokens: int
) -> tuple[list[Window], list[Skip]]:
    """One window over the whole file, its end the longest the recording may be (the worker fits it to the
    decoded duration, or skips a longer recording). Its transcription already says what the regions drawn
    beside it say: they are counted skips, not windows of their own (their text would be trained twice)."""
    whole = [region for region in speech if region.whole_file]
    skips = [
        Skip("region_beside_whole_file_text", task.task_id, task.audio_uri, f"region {region.region_id}")
        for region in speech
        if not region.whole_file
    ]
    text = " ".join(region.text for region in whole)
    tokens = encoder.text_tokens(text)
    if (length := encoder.label_length([len(tokens)])) > max_tokens:
        detail = f"whole-file transcription: {length} tokens > {max_tokens}"
        return [], [*skips, Skip("labels_too_long", task.task_id, task.audio_uri, detail)]
    labels = tuple(encoder.labels([(0.0, max_seconds, tokens)]))
    window_id = f"{task.task_id}/0000"
    window = Window(window_id, task.task_id, task.audio_uri, 0.0, max_seconds, text, labels, whole_file=True)
    return [window], skips


def fitted_to(window: Window, duration: float, timestamp_ids: tuple[int, ...]) -> Window:
    """A whole-file window ending at the decoded `duration` (at most its planned end), its end timestamp
    with it: the labels end with <|end|><|endoftext|> (LabelEncoder.labels)."""
    end_token = timestamp_token(timestamp_ids, duration)
    labels = (*window.labels[:-2], end_token, window.labels[-1])
    return replace(window, end=duration, labels=labels, whole_file=False)


def _no_speech_spans(task: Task, encoder: LabelEncoder, max_seconds: float, skips: list[Skip]) -> list[_Span]:
    """Excluded regions that overlap no speech or untranscribed region: windows whose audio holds only
    what the model must not transcribe."""
    others = [region for region in task.regions if region.kind is not RegionKind.EXCLUDED]
    spans = []
    for region in task.regions:
        if region.kind is not RegionKind.EXCLUDED:
            continue
        if any(other.start < region.end and other.end > region.start for other in others):
            continue
        if region.end - region.start > max_seconds:
            skips.append(_too_long(task, region, max_seconds))
            continue
        spans.append(_Span(region.start, region.end, "", tuple(encoder.no_speech_labels()), ()))
    return spans


def _too_long(task: Task, region: Region, max_seconds: float) -> Skip:
    detail = f"region {region.region_id}: {region.end - region.start:.1f} s > {max_seconds:g} s"
    return Skip("region_over_30s", task.task_id, task.audio_uri, detail)


def split_score(audio_uri: str, seed: int) -> float:
    """A stable number in [0, 1) per (recording, seed): independent of every other recording."""
    digest = hashlib.sha256(f"{seed}\0{audio_uri}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(audio_uris: Iterable[str], *, seed: int, val_fraction: float) -> dict[str, str]:
    """Recording -> split, grouped by recording so no audio is shared between train and validation.

    Adding recordings never moves existing ones. When the hash leaves a split empty (a handful of
    recordings), the recording with the lowest score goes to validation, or the one with the highest to
    train, so that both training and evaluation are possible.
    """
    scores = {uri: split_score(uri, seed) for uri in sorted(set(audio_uris))}
    splits = {uri: VALIDATION if score < val_fraction else TRAIN for uri, score in scores.items()}
    if val_fraction > 0 and len(scores) > 1 and VALIDATION not in splits.values():
        splits[min(scores, key=scores.__getitem__)] = VALIDATION
    if val_fraction < 1 and len(scores) > 1 and TRAIN not in splits.values():
        splits[max(scores, key=scores.__getitem__)] = TRAIN
    return splits
