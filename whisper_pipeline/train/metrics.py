"""Word and character error rates on generated text, with a normalisation that keeps Vietnamese diacritics.

Two views of every score: raw (case and punctuation count) and normalised (`normalize_for_scoring`).
Whisper's own `BasicTextNormalizer` is deliberately not used: it strips diacritics, which would score
"Tieng Viet" as a perfect transcription of "Tiếng Việt".
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

IGNORE_INDEX = -100  # label positions the loss ignores (padding); never a token id
SCORES = ("wer", "cer", "normalized_wer", "normalized_cer")  # what `score` returns, in report order


def normalize_for_scoring(text: str) -> str:
    """NFC, lowercase, punctuation (Unicode P*) as spaces, whitespace collapsed; letters and marks kept."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text)
    return " ".join(text.split())


def percent(rate: float | None) -> str:
    """An error rate as the console and the summary show it (metrics.json keeps the ratio)."""
    return "n/a" if rate is None or not math.isfinite(rate) else f"{100 * rate:.1f}%"


def _raw(text: str) -> str:
    """Raw scoring still unifies NFC/NFD and whitespace: neither is a transcription difference."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True)
class _Edits:
    """Edit counts of one utterance or a whole set against its reference length."""

    errors: int
    reference_length: int

    @property
    def rate(self) -> float:
        # An empty reference counts its inserted words as errors over a length of 1 (jiwer's convention for
        # an all-empty corpus: WER = insertions), never a division by zero.
        return self.errors / max(self.reference_length, 1)


def _edits(references: Sequence[str], hypotheses: Sequence[str], *, characters: bool) -> list[_Edits]:
    """Per-utterance edit counts (one jiwer call for the whole set)."""
    process = jiwer.process_characters if characters else jiwer.process_words
    output = process(list(references), list(hypotheses))
    return [
        _Edits(
            errors=sum(
                (chunk.ref_end_idx - chunk.ref_start_idx)
                if chunk.type in ("substitute", "delete")
                else (chunk.hyp_end_idx - chunk.hyp_start_idx)
                for chunk in alignment
                if chunk.type != "equal"
            ),
            reference_length=len(reference),
        )
        for alignment, reference in zip(output.alignments, output.references, strict=True)
    ]


def _corpus_rate(edits: Sequence[_Edits]) -> float:
    return _Edits(sum(e.errors for e in edits), sum(e.reference_length for e in edits)).rate


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("nothing to score: no references")


def score(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level wer, cer, normalized_wer, normalized_cer (errors over all reference words/chars)."""
    _check_pairs(references, hypotheses)
    raw_refs, raw_hyps = [_raw(t) for t in references], [_raw(t) for t in hypotheses]
    norm_refs = [normalize_for_scoring(t) for t in references]
    norm_hyps = [normalize_for_scoring(t) for t in hypotheses]
    return {
        "wer": _corpus_rate(_edits(raw_refs, raw_hyps, characters=False)),
        "cer": _corpus_rate(_edits(raw_refs, raw_hyps, characters=True)),
        "normalized_wer": _corpus_rate(_edits(norm_refs, norm_hyps, characters=False)),
        "normalized_cer": _corpus_rate(_edits(norm_refs, norm_hyps, characters=True)),
    }


def utterance_wers(references: Sequence[str], hypotheses: Sequence[str]) -> list[dict[str, float]]:
    """Per-utterance wer and normalized_wer, for the predictions file."""
    _check_pairs(references, hypotheses)
    raw = _edits([_raw(t) for t in references], [_raw(t) for t in hypotheses], characters=False)
    normalized = _edits(
        [normalize_for_scoring(t) for t in references],
        [normalize_for_scoring(t) for t in hypotheses],
        characters=False,
    )
    return [{"wer": r.rate, "normalized_wer": n.rate} for r, n in zip(raw, normalized, strict=True)]


class ComputeMetrics:
    """`compute_metrics` for Seq2SeqTrainer with `predict_with_generate=True`: scores generated text.

    Holds its tokenizer (no globals). Refuses logits: WER on teacher-forced argmax is not what the model
    transcribes (transformers #26334).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def decode(self, ids: np.ndarray) -> list[str]:
        """Token ids (padded with -100 or pad) -> text without special tokens."""
        ids = np.where(ids == IGNORE_INDEX, self.tokenizer.pad_token_id, ids)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, prediction) -> dict[str, float]:
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
            raise ValueError(
                f"ComputeMetrics needs generated token ids (predict_with_generate=True), got an array of "
                f"shape {predictions.shape} and dtype {predictions.dtype} (logits?)"
            )
        return score(self.decode(prediction.label_ids), self.decode(predictions))
