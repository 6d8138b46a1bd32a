"""The demo corpus: synthesised once, reused while its recipe holds (a second `make demo` starts at once)."""

from whisper_pipeline.demo.corpus import build_corpus
from whisper_pipeline.demo.run import DemoArguments


def test_a_second_build_reuses_the_audio_and_a_changed_recipe_rebuilds(tmp_path):
    args = DemoArguments(recordings=2, heldout_sentences=2, long_recordings=1, long_seconds=4.0)
    first = build_corpus(tmp_path, args)
    written = {path: path.stat().st_mtime_ns for path in first.audio}
    again = build_corpus(tmp_path, args)
    assert again == first and {path: path.stat().st_mtime_ns for path in again.audio} == written
    changed = build_corpus(tmp_path, DemoArguments(recordings=3, heldout_sentences=2, long_recordings=1,
                                                   long_seconds=4.0))  # fmt: skip
    assert len(changed.audio) == len(first.audio) + 1
