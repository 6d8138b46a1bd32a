"""Long-form evaluation: whole recordings transcribed the way users deploy the model (Whisper's sequential
30 s windows with timestamps, in transformers or faster-whisper), scored against their annotations.

Short utterances scored one by one say nothing of what breaks on a whole recording: a model fine-tuned
without timestamps loses them, and the long-form algorithm, which moves from window to window by the last
timestamp, then drops speech or repeats itself. These scores show it:

- WER and CER of each recording's transcript against its annotated regions' texts joined, and deletions
  (reference words the transcript lost, as a share of the reference's words);
- coverage: the share of annotated utterances at least half under predicted segments;
- timing error: the mean absolute difference between an utterance's start and end and those of the
  predicted segment that overlaps it most;
- hallucination: words written on noise-only recordings, and the share of transcripts with a loop (a word
  3-gram written three times in a row: see `has_loop`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import jiwer
import numpy as np

from whisper_pipeline.constants import HOP_LENGTH, MAX_TARGET_POSITIONS, N_FRAMES, SAMPLE_RATE
from whisper_pipeline.errors import ConfigError
from whisper_pipeline.prepare.features import pad_features
from whisper_pipeline.prepare.windows import Utterance, is_long_form
from whisper_pipeline.train.metrics import normalize_for_scoring, score

if TYPE_CHECKING:
    import datasets
    import torch

# OpenAI's rule for a window without speech, applied by both runtimes (faster-whisper's defaults): its
# no-speech probability is over 0.6 and its text averages a log-probability under -1. The no-speech
# examples of training raise that probability on noise; without the rule a fine-tuned model still writes
# a confident "Cái gì không?" over a noise burst (the demo's noise clips, before this rule).
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


@dataclass
class LongFormArguments:
    """The long-form section of evaluate and of the end of training (flags of both)."""

    long_form: bool = field(
        default=True,
        metadata={
            "help": "Transcribe the recordings kept whole (longer than 30 s, several utterances, or noise "
            "only) with Whisper's long-form algorithm, as users deploy the model, and score them."
        },
    )
    long_form_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens written per 30 s window in long-form decoding (default: Whisper's 448)."
        },
    )


COVERED_SHARE = 0.5  # an utterance counts as covered when at least this share of it is under segments
LOOP_NGRAM, LOOP_REPEATS = 3, 3
SegmentT = TypeVar("SegmentT")  # a dataclass with start, end and text: Span, transcribe.Segment


@dataclass(frozen=True)
class Span:
    """A predicted segment (with `scored` generation: its mean token log-probability, its token count)."""

    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    tokens: int = 0


@dataclass(frozen=True)
class LongRecording:
    """A held-out recording, whole: its annotated speech, or none (noise only)."""

    uri: str
    duration: float
    utterances: tuple[Utterance, ...]

    @property
    def noise_only(self) -> bool:
        return not self.utterances

    @property
    def long_form(self) -> bool:
        return is_long_form(self.duration, self.utterances)

    @property
    def reference(self) -> str:
        return " ".join(utterance.text for utterance in self.utterances)


def generate_segments(
    model,
    input_features: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    tokenizer,
    language: str | None,
    task: str,
    num_beams: int = 1,
    prompt_ids: torch.Tensor | None = None,
    scored: bool = False,
) -> list[list[Span]]:
    """transformers' own Whisper long-form generation (inputs over 3000 frames: window after window, each
    from the last timestamp of the one before), each input's segments with their times in seconds. The
    length of a window's text is the model's to set (modeling.limit_new_tokens).

    `scored`: each segment also gets its mean token log-probability, as faster-whisper gives it: `generate`
    keeps the scores of each window's steps (output_scores: the logits after its processors, per input, in
    the segment's `result`), and each step's log-softmax is read at the token it chose. Greedy only: under
    beam search the scores are beams' running sums, not one token's log-probability."""
    import torch

    if scored and num_beams != 1:
        raise ConfigError("scored segments need greedy decoding (--beam-size 1)")
    options = {} if prompt_ids is None else {"prompt_ids": prompt_ids}
    if scored:
        options.update(return_dict_in_generate=True, output_scores=True)
    with torch.inference_mode(), _without_scored_generation_notices() if scored else nullcontext():
        generated = model.generate(
            input_features,
            attention_mask=attention_mask,
            language=language,  # None: detected per input
            task=task,
            num_beams=num_beams,
            return_timestamps=True,
            return_segments=True,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            logprob_threshold=LOG_PROB_THRESHOLD,
            temperature=0.0,  # the threshold needs it set (transformers 5 compares None otherwise)
            **options,
        )
    return [[_span(segment, tokenizer, scored) for segment in segments] for segments in generated["segments"]]


def _span(segment: dict, tokenizer, scored: bool) -> Span:
    tokens = segment["tokens"].cpu()
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    average = None
    if scored:
        import torch

        result = segment["result"]
        prompt = len(result["sequences"]) - len(result["scores"])  # idxs count the decoder prompt
        first, last = (index - prompt for index in segment["idxs"])
        if last > first:
            steps = torch.log_softmax(torch.stack(result["scores"][first:last]).float(), dim=-1)
            average = float(steps.gather(-1, tokens[:, None]).mean())
    return Span(float(segment["start"]), float(segment["end"]), text, average, len(tokens))


# What transformers (5.x) logs of the scoring flags in Whisper's long-form generation, untrue here: the
# scores are kept (the segments' `result`), and return_segments is asked for. Dropped from these two
# loggers, during that call only.
_SCORED_GENERATION_NOTICES = {
    "transformers.generation.configuration_utils": "generation flags are not valid and may be ignored",
    "transformers.models.whisper.generation_whisper": "this automatically sets `return_segments=True`",
}


@contextmanager
def _without_scored_generation_notices() -> Iterator[None]:
    filters = [
        (logging.getLogger(name), lambda record, text=text: text not in record.getMessage())
        for name, text in _SCORED_GENERATION_NOTICES.items()
    ]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


def cached_recordings(rows: datasets.Dataset) -> list[LongRecording]:
    """The WHOLE_RECORDING rows of a cache split as recordings."""
    return [
        LongRecording(
            uri,
            end,
            tuple(Utterance(u["start"], u["end"], u["text"]) for u in utterances),
        )
        for uri, end, utterances in zip(rows["audio_uri"], rows["end"], rows["utterances"], strict=True)
    ]


def transcribe_cached(
    model,
    rows: datasets.Dataset,
    *,
    tokenizer,
    language: str,
    task: str,
    max_new_tokens: int | None,
    label: str,
) -> list[list[Span]]:
    """Each WHOLE_RECORDING row transcribed from its cached log-mel, as `transcribe` would transcribe the
    recording's audio with this model (one at a time: no padding between recordings). `max_new_tokens`:
    the longest text of one 30 s window (None: Whisper's limit)."""
    import torch
    from tqdm.auto import tqdm

    from whisper_pipeline.train.modeling import limit_new_tokens

    limit_new_tokens(model, max_new_tokens or MAX_TARGET_POSITIONS)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    outputs = []
    for row in tqdm(rows, desc=f"long-form {label}", unit="recording", leave=False):
        frames = np.asarray(row["input_features"])
        features = pad_features(frames, row["pad_value"], max(N_FRAMES, len(frames)))
        mask = np.zeros(features.shape[1], dtype=np.int64)
        mask[: -(-round(row["end"] * SAMPLE_RATE) // HOP_LENGTH)] = 1  # the frames the audio's samples start
        (segments,) = generate_segments(
            model,
            torch.from_numpy(features)[None].to(device=device, dtype=dtype),
            torch.from_numpy(mask)[None].to(device),
            tokenizer=tokenizer,
            language=language,
            task=task,
        )
        outputs.append(within_recording(segments, row["end"]))
    return outputs


def within_recording(segments: Sequence[SegmentT], duration: float) -> list[SegmentT]:
    """Segments with text, their times within the recording (see `clamp_time`), all else kept (scores,
    words): transcribe's segments and long-form evaluation's spans alike."""
    return [
        replace(
            s,
            start=clamp_time(s.start, duration),
            end=clamp_time(max(s.end, s.start), duration),
            text=s.text.strip(),
        )
        for s in segments
        if s.text.strip()
    ]


def clamp_time(seconds: float, duration: float) -> float:
    """A predicted time within the recording: a model's last timestamp may name the end of its 30 s
    window, past the end of a shorter file. Rounded to Whisper's 0.02 s grid's hundredths first, so that
    rounding never moves it past the end."""
    return min(max(round(seconds, 2), 0.0), duration)


def score_long_form(recordings: Sequence[LongRecording], outputs: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """The scores above over `recordings` (speech and noise-only ones) and their predicted segments."""
    speech = [(r, segments) for r, segments in zip(recordings, outputs, strict=True) if not r.noise_only]
    noise = [segments for r, segments in zip(recordings, outputs, strict=True) if r.noise_only]
    texts = [" ".join(segment.text for segment in segments) for _, segments in speech]
    scores: dict[str, Any] = {"recordings": len(speech), "noise_recordings": len(noise)}
    if speech:
        references = [recording.reference for recording, _ in speech]
        scores.update(score(references, texts))
        aligned = jiwer.process_words(
            [normalize_for_scoring(text) for text in references],
            [normalize_for_scoring(text) for text in texts],
        )
        reference_words = sum(len(normalize_for_scoring(text).split()) for text in references)
        scores["deletions"] = aligned.deletions / max(reference_words, 1)
        utterances = [(u, segments) for recording, segments in speech for u in recording.utterances]
        scores["coverage"] = sum(_covered(u, segments) for u, segments in utterances) / len(utterances)
        errors = [error for u, segments in utterances if (error := _boundary_error(u, segments)) is not None]
        scores["timestamp_error"] = float(np.mean(errors)) if errors else None
    written = texts + [" ".join(segment.text for segment in segments) for segments in noise]
    scores["noise_words"] = sum(
        len(normalize_for_scoring(s.text).split()) for segments in noise for s in segments
    )
    scores["loops"] = sum(map(has_loop, written)) / max(len(written), 1)
    return scores


def _covered(utterance: Utterance, segments: Sequence[Span]) -> bool:
    """At least COVERED_SHARE of the utterance under the union of the segments."""
    under = 0.0
    reached = utterance.start
    for segment in sorted(segments, key=lambda s: s.start):
        start, end = max(segment.start, reached), min(segment.end, utterance.end)
        if end > start:
            under += end - start
            reached = end
    return under >= COVERED_SHARE * (utterance.end - utterance.start)


def _boundary_error(utterance: Utterance, segments: Sequence[Span]) -> float | None:
    """Mean |start - start'| and |end - end'| against the segment that overlaps the utterance most."""
    overlaps = [(min(s.end, utterance.end) - max(s.start, utterance.start), s) for s in segments]
    overlap, best = max(overlaps, key=lambda pair: pair[0], default=(0.0, None))
    if best is None or overlap <= 0:
        return None
    return (abs(best.start - utterance.start) + abs(best.end - utterance.end)) / 2


def has_loop(text: str) -> bool:
    """A word 3-gram written three times in a row, each copy the same number of words after the last with
    the same words between (`cái gì không cái gì không cái gì không`, or one word five times): the
    repetition a looping decoder writes. Counting repeated 3-grams anywhere would also count phrases the
    speakers repeat and a phrase the model mishears the same way each time."""
    words = normalize_for_scoring(text).split()
    for period in range(1, len(words) // 2):
        stretch = (LOOP_REPEATS - 1) * period + LOOP_NGRAM  # the three copies of the 3-gram, end to end
        run = 0  # words so far that equal the word `period` before them
        for index in range(period, len(words)):
            run = run + 1 if words[index] == words[index - period] else 0
            if run + period >= stretch:
                return True
    return False


def score_adapter_and_base(
    model, rows: datasets.Dataset, *, tokenizer, language: str, task: str, max_new_tokens: int | None
) -> dict[str, dict[str, Any]] | None:
    """A PEFT model's long-form scores on the WHOLE_RECORDING rows of `rows`, beside those of its base (the
    adapter disabled); None when there are none. The end of training's view of what users deploy."""
    from whisper_pipeline.cache import whole_recordings

    whole = whole_recordings(rows)
    if not len(whole):
        return None
    recordings = cached_recordings(whole)
    options = {"tokenizer": tokenizer, "language": language, "task": task, "max_new_tokens": max_new_tokens}
    model.eval()
    with model.disable_adapter():
        base = transcribe_cached(model, whole, **options, label="base")
    adapter = transcribe_cached(model, whole, **options, label="adapter")
    return {"base": score_long_form(recordings, base), "adapter": score_long_form(recordings, adapter)}
