"""The prepare summary's wording."""

from whisper_pipeline.prepare.report import _whole_recordings


def test_the_long_form_line_says_none_one_or_many_recordings():
    assert _whole_recordings(0).startswith("none (no validation recording over 30 s")
    assert _whole_recordings(1) == "1 validation recording kept whole (transcribed at the end of training)"
    assert _whole_recordings(3).startswith("3 validation recordings kept whole")
