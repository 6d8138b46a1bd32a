"""Packing regions into <= 30 s windows with timestamped labels, no-speech windows, and the split."""

import pytest
from transformers import WhisperTokenizerFast

from whisper_pipeline.cache import TRAIN, VALIDATION
from whisper_pipeline.prepare.annotations import Region, RegionKind, Task
from whisper_pipeline.prepare.features import LabelEncoder
from whisper_pipeline.prepare.windows import assign_splits, pack_windows


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> LabelEncoder:
    return LabelEncoder.from_pretrained(tiny_model_dir, "vi", "transcribe")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir) -> WhisperTokenizerFast:
    return WhisperTokenizerFast.from_pretrained(tiny_model_dir)


def region(region_id: str, start: float, end: float, text: str = "", kind=RegionKind.SPEECH) -> Region:
    return Region(region_id, start, end, text, ("speech",), kind)


def task(*regions: Region) -> Task:
    return Task("7", "s3://bucket/a.flac", tuple(regions))


def test_a_window_of_three_regions_with_noise_between_is_three_timestamped_segments(encoder, tokenizer):
    """The exact labels, every id from the real tokenizer by its text: times from the window's start on
    the 0.02 s grid, the noise region adds no segment (its audio stays inside the window)."""
    windows, skips = pack_windows(
        task(
            region("a", 10.0, 11.5, "xin chào"),
            region("n", 11.6, 12.4, kind=RegionKind.EXCLUDED),
            region("b", 12.5, 14.0, "các bạn"),
            region("c", 14.2, 16.0, "hôm nay"),
        ),
        encoder,
        no_speech=False,
    )
    assert skips == []
    [window] = windows
    ids = tokenizer.convert_tokens_to_ids

    def text(words: str) -> list[int]:
        return tokenizer(f" {words}", add_special_tokens=False).input_ids

    assert list(window.labels) == [
        *ids(["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|0.00|>"]),
        *text("xin chào"),
        *ids(["<|1.50|>", "<|2.50|>"]),
        *text("các bạn"),
        *ids(["<|4.00|>", "<|4.20|>"]),
        *text("hôm nay"),
        *ids(["<|6.00|>", "<|endoftext|>"]),
    ]
    assert (window.start, window.end, window.text) == (10.0, 16.0, "xin chào các bạn hôm nay")
    decoded = tokenizer.decode(window.labels, skip_special_tokens=True)
    assert decoded.strip() == "xin chào các bạn hôm nay"


def test_regions_are_packed_in_time_order_up_to_30_s(encoder):
    windows, skips = pack_windows(
        task(
            region("a", 0.0, 10.0, "một"),
            region("b", 11.0, 20.0, "hai"),
            region("c", 21.0, 29.5, "ba"),
            region("d", 31.0, 40.0, "bốn"),
        ),
        encoder,
    )
    assert skips == []
    assert [(w.start, w.end, w.text) for w in windows] == [(0.0, 29.5, "một hai ba"), (31.0, 40.0, "bốn")]
    assert [w.window_id for w in windows] == ["7/0000", "7/0001"]


def test_each_window_knows_the_text_of_the_one_before_it(encoder):
    windows, _ = pack_windows(
        task(region("a", 0.0, 20.0, "một"), region("b", 21.0, 40.0, "hai"), region("c", 41.0, 60.0, "ba")),
        encoder,
    )
    assert [w.previous_tokens for w in windows] == [
        (),
        encoder.text_tokens("một"),
        encoder.text_tokens("hai"),
    ]


def test_noise_alone_is_a_no_speech_window_and_gaps_are_never_one(encoder, tokenizer):
    windows, _ = pack_windows(
        task(
            region("a", 0.0, 2.0, "xin chào"),
            region("n", 2.2, 3.0, kind=RegionKind.EXCLUDED),
            region("b", 3.5, 5.0, "các bạn"),
            region("m", 8.0, 9.0, kind=RegionKind.EXCLUDED),
            region("o", 9.5, 10.0, kind=RegionKind.EXCLUDED),
            region("u", 9.8, 10.5, kind=RegionKind.UNTRANSCRIBED),  # speech beside noise: not "no speech"
        ),
        encoder,
    )
    no_speech = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|nocaptions|>", "<|endoftext|>"])
    assert [(w.start, w.end, w.text, list(w.labels) == no_speech) for w in windows] == [
        (0.0, 5.0, "xin chào các bạn", False),
        (2.2, 3.0, "", True),
        (8.0, 9.0, "", True),
    ]
    # the noise window follows the speech window in time: it may be conditioned on that text
    assert windows[2].previous_tokens == encoder.text_tokens("xin chào") + encoder.text_tokens("các bạn")
    assert pack_windows(task(region("n", 0.0, 1.0, kind=RegionKind.EXCLUDED)), encoder, no_speech=False) == (
        [],
        [],
    )


def test_a_window_never_covers_untranscribed_speech(encoder):
    windows, _ = pack_windows(
        task(
            region("a", 0.0, 2.0, "một"),
            region("u", 2.5, 3.0, kind=RegionKind.UNTRANSCRIBED),
            region("b", 3.5, 5.0, "hai"),
        ),
        encoder,
    )
    assert [(w.start, w.end) for w in windows] == [(0.0, 2.0), (3.5, 5.0)]


def test_a_region_over_30_s_is_skipped_and_counted(encoder):
    windows, skips = pack_windows(
        task(region("a", 0.0, 31.0, "dài"), region("b", 32.0, 33.0, "ngắn")), encoder
    )
    assert [w.text for w in windows] == ["ngắn"]
    assert [(s.reason, s.task_id) for s in skips] == [("region_over_30s", "7")]


def test_token_budget_splits_at_region_boundaries_and_skips_a_single_overlong_region(encoder):
    """The budget counts the timestamped labels: 3 prefix tokens, 2 timestamps a segment, eos."""
    five_words = "a b c d e"
    budget = encoder.label_length([len(encoder.text_tokens(five_words))])
    windows, skips = pack_windows(
        task(
            region("a", 0.0, 1.0, five_words), region("b", 1.0, 2.0, five_words), region("c", 3, 4, "x " * 40)
        ),
        encoder,
        max_tokens=budget,
    )
    assert [(w.start, w.end) for w in windows] == [(0.0, 1.0), (1.0, 2.0)]
    assert all(len(w.labels) <= budget for w in windows)
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


def test_a_tiny_corpus_keeps_one_training_recording():
    uris = [f"rec_{index}" for index in range(4)]
    for seed in range(64):  # a 0.99 fraction sends every recording to validation by hash alone
        splits = assign_splits(uris, seed=seed, val_fraction=0.99)
        assert list(splits.values()).count(TRAIN) == 1
    assert set(assign_splits(uris, seed=1, val_fraction=1.0).values()) == {VALIDATION}
