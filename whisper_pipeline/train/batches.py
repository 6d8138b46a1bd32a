"""Cache rows -> compact batches on the host -> the model's padded input on its device.

The cache keeps only the log-mel frames that hold audio (float16, time-major) and each row's pad value
(see features.py). Batches stay that compact on the host: padded only to their longest row, float16, so
loader workers build, share and copy at most half the bytes of Whisper's float32 80 x 3000 input (far
less for short utterances).
`model_inputs` restores that input on the device, exactly as `pad_features` does on the host.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeVar

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from whisper_pipeline.constants import N_FRAMES

T = TypeVar("T")
COMPACT_KEYS = ("num_frames", "pad_values")  # consumed by model_inputs, never given to the model


@dataclass(frozen=True)
class CacheRow:
    """One cache row as read-only views of its Arrow buffers (no copy, no float32 conversion)."""

    frames: np.ndarray  # float16 [num_frames, n_mels]
    pad_value: float
    labels: np.ndarray  # int32 token ids
    previous_tokens: np.ndarray  # int32 text tokens of the recording's previous window


class CacheRows(Dataset[CacheRow]):
    """A cache split as a map-style torch dataset of `CacheRow`s.

    Every row's frames and labels are cut once, as numpy views of the memory-mapped Arrow buffers, so that
    a batch costs list lookups, not Arrow calls: a gather through datasets, and its numpy formatting
    (which converts each row to a new float32 array), would cost more than the step's data needs.
    Rows are not dicts, so the Trainer's column removal leaves them whole. Pickled (for loader processes)
    as the datasets.Dataset, which refers to the cache's files; the views are cut again there.
    """

    def __init__(self, rows: datasets.Dataset) -> None:
        self._rows = rows
        self._cut()

    def _cut(self) -> None:
        # [:] is zero-copy: the table's own batches, or one slice per row under a select()'s indices.
        columns = ["input_features", "pad_value", "labels", "previous_tokens"]
        table = self._rows.with_format("arrow", columns=columns)[:]
        self._frames = [row for chunk in table.column("input_features").chunks for row in _frames(chunk)]
        self._labels = [row for chunk in table.column("labels").chunks for row in _lists(chunk)]
        self._previous = [row for chunk in table.column("previous_tokens").chunks for row in _lists(chunk)]
        self._pad_values = table.column("pad_value").to_numpy().tolist()

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": self._rows}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._rows = state["rows"]
        self._cut()

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> CacheRow:
        return CacheRow(
            self._frames[index], self._pad_values[index], self._labels[index], self._previous[index]
        )

    def __getitems__(self, indices: Sequence[int]) -> list[CacheRow]:
        return self.take(indices)

    def take(self, indices: Iterable[int]) -> list[CacheRow]:
        """The rows at `indices`, in that order."""
        return [self[index] for index in indices]


def _lists(array: pa.ListArray) -> list[np.ndarray]:
    """Each row of a list array as a view of its values."""
    return _split(array.offsets, array.flatten().to_numpy(zero_copy_only=True))


def _frames(chunk: pa.ExtensionArray) -> list[np.ndarray]:
    """Each row of an Array2D(None, n_mels) chunk as a [frames, n_mels] view."""
    storage, n_mels = chunk.storage, chunk.type.shape[1]
    return _split(
        storage.offsets, storage.flatten().flatten().to_numpy(zero_copy_only=True).reshape(-1, n_mels)
    )


def _split(offsets: pa.Array, values: np.ndarray) -> list[np.ndarray]:
    """`values` cut at a list array's offsets (a slice's start past 0, where its `flatten` starts)."""
    bounds = offsets.to_numpy()
    return [values[start:end] for start, end in pairwise(bounds - bounds[0])]


def feature_batch(rows: Sequence[CacheRow]) -> dict[str, torch.Tensor]:
    """Rows -> input_features float16 [batch, longest, n_mels] (time-major: one copy per row, no transpose),
    num_frames int64 [batch] and pad_values float32 [batch]; `model_inputs` pads on the device."""
    longest, n_mels = max(len(row.frames) for row in rows), rows[0].frames.shape[1]
    # The same allocation for every batch of this size, whatever its longest row: the C allocator then reuses
    # its memory. Fresh memory per batch size (mapped, faulted in, unmapped when the batch is dropped)
    # stalled the training thread now and then (benchmarks/train_input.py).
    capacity = np.empty(len(rows) * N_FRAMES * n_mels, dtype=np.float16)
    features = capacity[: len(rows) * longest * n_mels].reshape(len(rows), longest, n_mels)
    for index, row in enumerate(rows):
        features[index, : len(row.frames)] = row.frames
        features[index, len(row.frames) :] = 0
    return {
        "input_features": torch.from_numpy(features),
        "num_frames": torch.tensor([len(row.frames) for row in rows], dtype=torch.int64),
        "pad_values": torch.tensor([row.pad_value for row in rows], dtype=torch.float32),
    }


def model_inputs(
    batch: Mapping[str, torch.Tensor], *, dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """A compact batch -> the model's inputs on `device`: input_features [batch, n_mels, 3000] in `dtype`,
    every frame past a row's audio set to its pad value (equal to `pad_features`, cast to `dtype`), and
    an attention mask of ones: Whisper's encoder attends to all 3000 frames (the padding is what it was
    trained to see), which `generate` cannot infer from features and warns about; with it SpecAugment draws
    its time masks as without one. The other keys (labels) moved unchanged, the compact keys dropped.

    The one place features are padded, for training, evaluation and generation alike: on a GPU it is a few
    kernels instead of twice the bytes of float32 built by the loader and copied to the device per batch.
    """
    inputs = {key: value.to(device) for key, value in batch.items() if key not in COMPACT_KEYS}
    features = inputs["input_features"]
    rows, frames, n_mels = features.shape
    pad = batch["pad_values"].to(device=device, dtype=dtype)[:, None, None]
    audio = torch.arange(frames, device=device) < batch["num_frames"].to(device)[:, None]
    values = torch.where(audio[:, None, :], features.transpose(1, 2).to(dtype), pad)
    inputs["input_features"] = torch.cat([values, pad.expand(rows, n_mels, N_FRAMES - frames)], dim=2)
    inputs["attention_mask"] = torch.ones(rows, N_FRAMES, dtype=torch.long, device=device)
    return inputs


class BackgroundBatches(Iterator[T]):
    """The items of `source` in order, made ahead by one thread of this process, at most `depth` at a time.

    With the rows read in the training process (no loader workers), a thread is all it takes to have the
    next batch ready while the accelerator computes: building one costs a fraction of a millisecond,
    less than loader workers spend handing one over through shared memory (benchmarks/train_input.py).
    The training thread's side is two C-level queue calls (about 15 us; queue.Queue's Python-level
    locking took 50 us). An exception of `source` is raised where its item would have been; `close` lets
    the thread end.
    """

    _POLL_S = 0.1  # how soon a thread waiting for room notices `close`

    def __init__(self, source: Iterator[T], depth: int) -> None:
        self.source = source
        self._ready: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._room: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token per item that may be made
        for _ in range(max(1, depth)):
            self._room.put(None)
        self._closed = threading.Event()
        self._ended = False
        threading.Thread(target=self._produce, name="background-batches", daemon=True).start()

    def _produce(self) -> None:
        try:
            while self._has_room():
                try:
                    item = next(self.source)
                except StopIteration:
                    self._ready.put(("end", None))
                    return
                self._ready.put(("item", item))
        except BaseException as error:  # raised again in the consumer's thread
            self._ready.put(("error", error))

    def _has_room(self) -> bool:
        while not self._closed.is_set():
            try:
                self._room.get(timeout=self._POLL_S)
                return True
            except queue.Empty:
                continue
        return False

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        kind, value = self._ready.get()
        if kind == "item":
            self._room.put(None)
            return value
        self._ended = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._closed.set()
