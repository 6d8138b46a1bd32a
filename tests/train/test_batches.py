"""The training input path: cache rows as views, batches made ahead by a thread."""

import pickle
import threading
import time

import numpy as np
import pytest

from whisper_pipeline.cache import open_cache
from whisper_pipeline.train.batches import BackgroundBatches, CacheRows


@pytest.fixture(scope="module")
def train_split(prepared_cache, tiny_model_dir):
    return open_cache(prepared_cache, model_dir=tiny_model_dir).train


def _assert_rows_equal(rows: CacheRows, dataset) -> None:
    expected = dataset.with_format("numpy", columns=["input_features", "pad_value", "labels"])
    assert len(rows) == len(dataset)
    for index in range(len(dataset)):
        row, reference = rows[index], expected[index]
        assert row.frames.dtype == np.float16  # as stored: no float32 conversion
        assert np.array_equal(row.frames, reference["input_features"])
        assert np.array_equal(row.labels, reference["labels"])
        assert row.pad_value == float(reference["pad_value"])


def test_cache_rows_are_the_splits_rows_whole_selected_and_after_pickling(train_split):
    rows = CacheRows(train_split)
    _assert_rows_equal(rows, train_split)
    assert not rows[0].frames.flags.owndata  # a view of the memory-mapped Arrow buffer, not a copy
    picked = [len(train_split) - 1, 0, 2, 0]  # reordered, repeated: a select() under an indices mapping
    _assert_rows_equal(CacheRows(train_split.select(picked)), train_split.select(picked))
    assert [row.frames.tobytes() for row in rows.take(picked)] == [
        rows[index].frames.tobytes() for index in picked
    ]
    payload = pickle.dumps(rows)
    assert len(payload) < 100_000  # the dataset's file reference, not its rows (loader workers unpickle it)
    _assert_rows_equal(pickle.loads(payload), train_split)


def test_background_batches_keep_the_order_and_end_like_their_source():
    batches = BackgroundBatches(iter(range(50)), depth=3)
    assert list(batches) == list(range(50))
    with pytest.raises(StopIteration):
        next(batches)


def test_an_error_of_the_source_is_raised_where_its_batch_would_have_been():
    def source():
        yield from range(3)
        raise ValueError("row 3 is unreadable")

    batches = BackgroundBatches(source(), depth=8)
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="row 3"):
        next(batches)
    with pytest.raises(StopIteration):
        next(batches)


def test_batches_are_made_ahead_at_most_depth_and_close_ends_the_thread():
    made: list[int] = []

    def source():
        for index in range(100):
            made.append(index)
            yield index

    batches = BackgroundBatches(source(), depth=2)
    assert next(batches) == 0
    deadline = time.monotonic() + 5
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(made) == 3  # one taken, two made ahead: no further
    assert next(batches) == 1
    deadline = time.monotonic() + 5
    while len(made) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(made) == 4  # taking one makes room for one more
    batches.close()
    deadline = time.monotonic() + 5
    while any(t.name == "background-batches" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "background-batches" for t in threading.enumerate())
