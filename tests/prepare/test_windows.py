"""Packing regions into <= 30 s windows, and the grouped, stable split."""

from whisper_pipeline.cache import TRAIN, VALIDATION
from whisper_pipeline.prepare.annotations import Region, RegionKind, Task
from whisper_pipeline.prepare.windows import assign_splits, pack_windows


def words(text: str) -> list[int]:
    """A stand-in tokenizer: one id per word plus the 4 prefix tokens and eos, like Whisper's labels."""
    return [0, 1, 2, 3, *range(10, 10 + len(text.split())), 4]


def region(region_id: str, start: float, end: float, text: str = "", kind=RegionKind.SPEECH) -> Region:
    return Region(region_id, start, end, text, ("speech",), kind)


def task(*regions: Region) -> Task:
    return Task("7", "s3://bucket/a.flac", tuple(regions))


def test_regions_are_packed_in_time_order_up_to_30_s():
    windows, skips = pack_windows(
        task(
            region("a", 0.0, 10.0, "một"),
            region("b", 11.0, 20.0, "hai"),
            region("c", 21.0, 29.5, "ba"),
            region("d", 31.0, 40.0, "bốn"),
        ),
        words,
    )
    assert skips == []
    assert [(w.start, w.end, w.text) for w in windows] == [(0.0, 29.5, "một hai ba"), (31.0, 40.0, "bốn")]
    assert [w.window_id for w in windows] == ["7/0000", "7/0001"]
    assert windows[0].labels == tuple(words("một hai ba"))


def test_noise_inside_a_window_keeps_audio_and_adds_no_text():
    windows, _ = pack_windows(
        task(
            region("a", 0.0, 2.0, "xin chào"),
            region("n", 2.2, 3.0, kind=RegionKind.EXCLUDED),
            region("b", 3.5, 5.0, "các bạn"),
        ),
        words,
    )
    assert [(w.start, w.end, w.text) for w in windows] == [(0.0, 5.0, "xin chào các bạn")]


def test_a_window_never_covers_untranscribed_speech():
    windows, _ = pack_windows(
        task(
            region("a", 0.0, 2.0, "một"),
            region("u", 2.5, 3.0, kind=RegionKind.UNTRANSCRIBED),
            region("b", 3.5, 5.0, "hai"),
        ),
        words,
    )
    assert [(w.start, w.end) for w in windows] == [(0.0, 2.0), (3.5, 5.0)]


def test_a_region_over_30_s_is_skipped_and_counted():
    windows, skips = pack_windows(task(region("a", 0.0, 31.0, "dài"), region("b", 32.0, 33.0, "ngắn")), words)
    assert [w.text for w in windows] == ["ngắn"]
    assert [(s.reason, s.task_id) for s in skips] == [("region_over_30s", "7")]


def test_token_budget_splits_at_region_boundaries_and_skips_a_single_overlong_region():
    five_words = "a b c d e"
    windows, skips = pack_windows(
        task(
            region("a", 0.0, 1.0, five_words), region("b", 1.0, 2.0, five_words), region("c", 3, 4, "x " * 20)
        ),
        words,
        max_tokens=12,
    )
    assert [(w.start, w.end) for w in windows] == [(0.0, 1.0), (1.0, 2.0)]
    assert all(len(w.labels) <= 12 for w in windows)
    assert [s.reason for s in skips] == ["labels_too_long"]


def test_split_is_grouped_stable_and_unmoved_by_new_recordings():
    uris = [f"s3://bucket/rec_{index:03d}.flac" for index in range(200)]
    first = assign_splits(uris, seed=42, val_fraction=0.2)
    assert first == assign_splits(list(reversed(uris)), seed=42, val_fraction=0.2)
    assert 20 <= sum(split == VALIDATION for split in first.values()) <= 60
    more = assign_splits(
        [*uris, *(f"s3://bucket/new_{index}.flac" for index in range(50))], seed=42, val_fraction=0.2
    )
    assert all(more[uri] == first[uri] for uri in uris)
    assert assign_splits(uris, seed=7, val_fraction=0.2) != first


def test_a_tiny_corpus_still_gets_one_validation_recording():
    splits = assign_splits(["a", "b"], seed=1, val_fraction=0.01)
    assert sorted(splits.values()) == [TRAIN, VALIDATION]
    assert assign_splits(["a", "b"], seed=1, val_fraction=0.0) == {"a": TRAIN, "b": TRAIN}
