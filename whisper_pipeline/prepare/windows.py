"""Regions -> windows of at most 30 s (what the model sees), and the train/validation split.

A window is cut at region boundaries: its text is its speech regions' texts in time order; excluded
(noise) regions between them keep their audio and add no text; a window never reaches over an
untranscribed region, whose speech would teach the model to drop words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from whisper_pipeline.cache import TRAIN, VALIDATION
from whisper_pipeline.constants import CHUNK_SECONDS, MAX_TARGET_POSITIONS
from whisper_pipeline.prepare.annotations import Region, RegionKind, Skip, Task


@dataclass(frozen=True)
class Window:
    """One training example's audio span and target: `labels` are token ids, prefix and eos included."""

    window_id: str
    task_id: str
    audio_uri: str
    start: float
    end: float
    text: str
    labels: tuple[int, ...]

    @property
    def duration(self) -> float:
        return self.end - self.start


def pack_windows(
    task: Task,
    encode: Callable[[str], Sequence[int]],
    *,
    max_seconds: float = CHUNK_SECONDS,
    max_tokens: int = MAX_TARGET_POSITIONS,
) -> tuple[list[Window], list[Skip]]:
    """Greedily pack a task's speech regions, in time order, into windows within both limits."""
    speech = [region for region in task.regions if region.kind is RegionKind.SPEECH]
    untranscribed = [region for region in task.regions if region.kind is RegionKind.UNTRANSCRIBED]
    windows: list[Window] = []
    skips: list[Skip] = []

    def close(group: list[Region], known_labels: tuple[int, ...] | None) -> None:
        text = " ".join(region.text for region in group)
        labels = tuple(encode(text)) if known_labels is None else known_labels
        if len(labels) > max_tokens:
            detail = f"region {group[0].region_id}: {len(labels)} tokens > {max_tokens}"
            skips.append(Skip("labels_too_long", task.task_id, task.audio_uri, detail))
            return
        index = len(windows)
        windows.append(
            Window(
                window_id=f"{task.task_id}/{index:04d}",
                task_id=task.task_id,
                audio_uri=task.audio_uri,
                start=group[0].start,
                end=max(region.end for region in group),
                text=text,
                labels=labels,
            )
        )

    group: list[Region] = []
    labels: tuple[int, ...] | None = None  # the group's, once an extension has encoded them
    for region in speech:
        if region.end - region.start > max_seconds:
            detail = f"region {region.region_id}: {region.end - region.start:.1f} s > {max_seconds:g} s"
            skips.append(Skip("region_over_30s", task.task_id, task.audio_uri, detail))
            continue
        if group:
            extended = _extended_labels(group, region, untranscribed, encode, max_seconds, max_tokens)
            if extended is not None:
                group.append(region)
                labels = extended
                continue
            close(group, labels)
        group, labels = [region], None
    if group:
        close(group, labels)
    return windows, skips


def _extended_labels(
    group: list[Region],
    region: Region,
    untranscribed: Iterable[Region],
    encode: Callable[[str], Sequence[int]],
    max_seconds: float,
    max_tokens: int,
) -> tuple[int, ...] | None:
    """The labels of the group with `region` added, or None when that window would break a limit."""
    start = group[0].start
    end = max(region.end, *(member.end for member in group))
    if end - start > max_seconds:
        return None
    if any(other.start < end and other.end > start for other in untranscribed):
        return None
    labels = tuple(encode(" ".join(member.text for member in [*group, region])))
    return labels if len(labels) <= max_tokens else None


def split_score(audio_uri: str, seed: int) -> float:
    """A stable number in [0, 1) per (recording, seed): independent of every other recording."""
    digest = hashlib.sha256(f"{seed}\0{audio_uri}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(audio_uris: Iterable[str], *, seed: int, val_fraction: float) -> dict[str, str]:
    """Recording -> split, grouped by recording so no audio is shared between train and validation.

    Adding recordings never moves existing ones. When the hash leaves validation empty (a handful of
    recordings), the recording with the lowest score goes there so that evaluation is possible.
    """
    scores = {uri: split_score(uri, seed) for uri in sorted(set(audio_uris))}
    splits = {uri: VALIDATION if score < val_fraction else TRAIN for uri, score in scores.items()}
    if val_fraction > 0 and len(scores) > 1 and VALIDATION not in splits.values():
        splits[min(scores, key=scores.__getitem__)] = VALIDATION
    return splits
