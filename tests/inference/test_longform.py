"""Long-form scores on known segments: WER and deletions of joined transcripts, coverage, timing error,
words on noise-only recordings, loops."""

from __future__ import annotations

import pytest

from whisper_pipeline.inference.longform import LongRecording, Span, clamp_time, has_loop, score_long_form
from whisper_pipeline.prepare.windows import Utterance


def recording(*utterances: tuple[float, float, str], seconds: float = 40.0) -> LongRecording:
    return LongRecording("s3://b/a.flac", seconds, tuple(Utterance(*u) for u in utterances))


SPEECH = recording((1.0, 3.0, "xin chào các bạn"), (5.0, 7.0, "hôm nay trời đẹp"), (31.0, 33.0, "cảm ơn"))


def test_a_perfect_transcript_scores_perfectly():
    scores = score_long_form([SPEECH], [[Span(*u) for u in SPEECH.utterances]])
    assert (scores["wer"], scores["deletions"], scores["coverage"], scores["timestamp_error"]) == (0, 0, 1, 0)
    assert (scores["noise_words"], scores["loops"], scores["recordings"]) == (0, 0, 1)


def test_a_dropped_utterance_is_deletions_and_lost_coverage_and_shifted_times_are_timing_error():
    segments = [Span(1.2, 3.4, "xin chào các bạn"), Span(31.0, 33.0, "cảm ơn")]  # the second one lost
    scores = score_long_form([SPEECH], [segments])
    assert scores["deletions"] == pytest.approx(4 / 10)  # 4 of the 10 reference words
    assert scores["coverage"] == pytest.approx(2 / 3)
    # matched: (|1.2 - 1.0| + |3.4 - 3.0|) / 2 = 0.3 and 0 for the third; the second has no segment
    assert scores["timestamp_error"] == pytest.approx((0.3 + 0.0) / 2)


def test_one_segment_over_two_utterances_covers_both_and_its_boundaries_are_far_from_each():
    scores = score_long_form([SPEECH], [[Span(1.0, 7.0, "xin chào các bạn hôm nay trời đẹp cảm ơn")]])
    assert scores["wer"] == 0 and scores["coverage"] == pytest.approx(2 / 3)
    assert scores["timestamp_error"] == pytest.approx((4.0 + 4.0) / 2 / 2)  # both at (0 + 4) / 2


def test_words_on_noise_only_recordings_and_loops_are_counted():
    noise = recording(seconds=5.0)
    looping = [Span(1.0, 3.0, "xin chào các bạn xin chào các bạn xin chào các bạn"), Span(5, 7, "hôm nay")]
    scores = score_long_form([SPEECH, noise], [looping, [Span(0.0, 2.0, "Cảm ơn, các bạn!")]])
    assert scores["noise_recordings"] == 1 and scores["noise_words"] == 4
    assert scores["loops"] == pytest.approx(1 / 2)
    assert has_loop("a b c a b c a b c") and not has_loop("a b c a b c d")


def test_a_loop_is_a_3_gram_three_times_in_a_row_not_a_phrase_said_again_later():
    assert has_loop("vâng cái gì không? Cái gì không, cái gì không") and has_loop("ừ ừ ừ ừ ừ")
    assert has_loop("xin chào các bạn hôm nay xin chào các bạn hôm nay xin chào các bạn hôm nay nhé")
    assert not has_loop("ừ ừ ừ ừ") and not has_loop("a b a b a b") and has_loop("a b a b a b a")
    # a repeated phrase with other words between, as speakers repeat it or a model mishears it each time
    assert not has_loop("cảm ơn các bạn. vâng, cảm ơn các bạn. và cảm ơn các bạn nhiều")
    chorus = recording((1.0, 9.0, "cảm ơn các bạn. vâng, cảm ơn các bạn. và cảm ơn các bạn nhiều"))
    assert score_long_form([chorus], [[Span(1.0, 9.0, chorus.reference)]])["loops"] == 0


def test_long_form_is_over_one_window_or_several_utterances_or_noise_only():
    assert SPEECH.long_form
    assert recording((0.0, 1.0, "một"), (2.0, 3.0, "hai"), seconds=5.0).long_form
    assert recording(seconds=5.0).long_form  # whatever is written on it is hallucinated
    assert not recording((0.0, 1.0, "một"), seconds=5.0).long_form


def test_generation_is_in_the_language_asked_for_never_a_detected_one(tiny_model_dir):
    """A random model detects any language on noise: the decoder's first prompt must carry the given one."""
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    from whisper_pipeline.inference.longform import generate_segments

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    tokenizer = WhisperTokenizerFast.from_pretrained(tiny_model_dir)
    model.generation_config.max_new_tokens = 4
    prompts = []
    model.model.decoder.register_forward_pre_hook(
        lambda _, args, kwargs: prompts.append((kwargs.get("input_ids"), *args)[0][0].tolist()),
        with_kwargs=True,
    )
    features = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 80, 3000), dtype=np.float32))
    for language in ("vi", "de"):
        prompts.clear()
        generate_segments(model, features, torch.ones(1, 3000, dtype=torch.long), tokenizer=tokenizer,
                          language=language, task="transcribe")  # fmt: skip
        language_id = tokenizer.convert_tokens_to_ids(f"<|{language}|>")
        assert language_id in prompts[0][:3], prompts[0]


def test_predicted_times_stay_within_the_recording_after_rounding():
    assert (
        clamp_time(3.0, 2.556) == 2.556
        and clamp_time(-0.2, 2.556) == 0.0
        and clamp_time(1.234, 2.556) == 1.23
    )
