"""Cache rows -> compact batches on the host -> the model's padded input on its device.

The cache keeps only the log-mel frames that hold audio (float16, time-major) and each row's pad value
(see features.py). Batches stay that compact on the host: padded only to their longest row, float16, so
loader workers build, share and copy at most half the bytes of Whisper's float32 80 x 3000 input (a
twelfth for 5 s utterances).
`model_inputs` restores that input on the device, exactly as `pad_features` does on the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from whisper_pipeline.constants import N_FRAMES

COMPACT_KEYS = ("num_frames", "pad_values")  # consumed by model_inputs, never given to the model


@dataclass(frozen=True)
class CacheRow:
    """One cache row as read-only views of its Arrow buffers (no copy, no float32 conversion)."""

    frames: np.ndarray  # float16 [num_frames, n_mels]
    pad_value: float
    labels: np.ndarray  # int32 token ids


class CacheRows(Dataset[CacheRow]):
    """A cache split as a map-style torch dataset of `CacheRow`s.

    datasets' numpy formatting converts every row's frames to a new float32 array (about 5 ms per batch of
    8 measured, against under 1 ms here); these rows are views of the memory-mapped Arrow data.
    `__getitems__` reads a DataLoader's whole batch in one gather. Rows are not dicts, so the Trainer's
    column removal leaves them whole.
    """

    def __init__(self, rows: datasets.Dataset) -> None:
        self._rows = rows.with_format("arrow", columns=["input_features", "pad_value", "labels"])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> CacheRow:
        return self.take([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[CacheRow]:
        return self.take(indices)

    def take(self, indices: Iterable[int]) -> list[CacheRow]:
        """The rows at `indices`, in that order."""
        table = self._rows[list(indices)]
        frames = [row for chunk in table.column("input_features").chunks for row in _frames(chunk)]
        labels = [row for chunk in table.column("labels").chunks for row in _lists(chunk)]
        pad_values = table.column("pad_value").to_numpy()
        return [
            CacheRow(frames=row_frames, pad_value=float(pad), labels=ids)
            for row_frames, pad, ids in zip(frames, pad_values, labels, strict=True)
        ]


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
    features = np.zeros((len(rows), longest, n_mels), dtype=np.float16)
    for index, row in enumerate(rows):
        features[index, : len(row.frames)] = row.frames
    return {
        "input_features": torch.from_numpy(features),
        "num_frames": torch.tensor([len(row.frames) for row in rows], dtype=torch.int64),
        "pad_values": torch.tensor([row.pad_value for row in rows], dtype=torch.float32),
    }


def model_inputs(
    batch: Mapping[str, torch.Tensor], *, dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """A compact batch -> the model's inputs on `device`: input_features [batch, n_mels, 3000] in `dtype`,
    every frame past a row's audio set to its pad value (equal to `pad_features`, cast to `dtype`); the
    other keys (labels) moved unchanged, the compact keys dropped.

    The one place features are padded, for training, evaluation and generation alike: on a GPU it is a few
    kernels over 4 MB instead of 8 MB of float32 built by the loader and copied to the device per batch.
    """
    inputs = {key: value.to(device) for key, value in batch.items() if key not in COMPACT_KEYS}
    features = inputs["input_features"]
    rows, frames, n_mels = features.shape
    pad = batch["pad_values"].to(device=device, dtype=dtype)[:, None, None]
    audio = torch.arange(frames, device=device) < batch["num_frames"].to(device)[:, None]
    values = torch.where(audio[:, None, :], features.transpose(1, 2).to(dtype), pad)
    inputs["input_features"] = torch.cat([values, pad.expand(rows, n_mels, N_FRAMES - frames)], dim=2)
    return inputs
