"""Error rates on generated text, with diacritics kept."""

import unicodedata

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.models.whisper.english_normalizer import BasicTextNormalizer
from transformers.trainer_utils import EvalPrediction

from whisper_pipeline.cache import open_cache
from whisper_pipeline.train.arguments import PipelineTrainingArguments
from whisper_pipeline.train.batches import CacheRows, model_inputs
from whisper_pipeline.train.metrics import ComputeMetrics, normalize_for_scoring, score, utterance_wers
from whisper_pipeline.train.modeling import configure_generation
from whisper_pipeline.train.trainer import DecoderTokens, WhisperDataCollator, WhisperTrainer


def test_normalization_keeps_diacritics_and_drops_case_punctuation_and_spacing():
    nfd = unicodedata.normalize("NFD", "Tiếng  Việt, rất HAY!… “đúng” – (vâng)")
    assert normalize_for_scoring(nfd) == "tiếng việt rất hay đúng vâng"
    assert normalize_for_scoring(nfd) == unicodedata.normalize("NFC", normalize_for_scoring(nfd))


def test_missing_diacritics_are_errors_unlike_whispers_basic_normalizer():
    # Whisper's normalizer with diacritics removal (the usual multilingual WER recipe) would call this a
    # perfect transcription: the reason it is not used.
    strip = BasicTextNormalizer(remove_diacritics=True)
    assert strip("Tiếng Việt") == strip("Tieng Viet")
    scores = score(["Tiếng Việt"], ["Tieng Viet"])
    assert scores["wer"] == scores["normalized_wer"] == 1.0
    assert scores["normalized_cer"] == pytest.approx(2 / 10)  # ế -> e, ệ -> e over 10 characters


def test_raw_scores_count_case_and_punctuation_normalized_ones_do_not():
    scores = score(["Xin chào, các bạn."], ["xin chào các bạn"])
    assert scores["wer"] == pytest.approx(3 / 4)  # "Xin", "chào,", "bạn." differ as written
    assert scores["normalized_wer"] == scores["normalized_cer"] == 0.0


def test_unicode_forms_and_spacing_are_not_raw_errors():
    text = "Hà Nội mùa thu"
    scores = score([unicodedata.normalize("NFD", text)], [f"  {text}   "])
    assert scores == {"wer": 0.0, "cer": 0.0, "normalized_wer": 0.0, "normalized_cer": 0.0}


def test_corpus_rates_weigh_utterances_by_length():
    references = ["một hai ba bốn", "năm"]
    hypotheses = ["một hai ba bốn", "sáu"]
    assert score(references, hypotheses)["wer"] == pytest.approx(1 / 5)
    assert [u["wer"] for u in utterance_wers(references, hypotheses)] == [0.0, 1.0]


def test_empty_references_count_insertions_and_never_divide_by_zero():
    assert score([""], [""])["wer"] == 0.0
    assert utterance_wers(["", ""], ["", "thêm hai"]) == [
        {"wer": 0.0, "normalized_wer": 0.0},
        {"wer": 2.0, "normalized_wer": 2.0},
    ]
    # Punctuation-only references are empty once normalized.
    assert score(["..."], ["vâng"])["normalized_wer"] == 1.0
    assert score(["một hai", ""], ["một hai", "ba"])["wer"] == pytest.approx(1 / 2)


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="nothing to score"):
        utterance_wers([], [])


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return WhisperProcessor.from_pretrained(str(tiny_model_dir))


def test_compute_metrics_decodes_padded_ids_and_refuses_logits(processor):
    tokenizer = processor.tokenizer
    prefix = tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|notimestamps|>"]
    )

    def ids(text: str, width: int, pad: int) -> list[int]:
        row = prefix + tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return row + [pad] * (width - len(row))

    labels = np.array([ids(" Tiếng Việt", 16, -100), ids(" xin chào", 16, -100)])
    generated = np.array(
        [ids(" Tiếng Việt", 20, tokenizer.pad_token_id), ids(" xin", 20, tokenizer.pad_token_id)]
    )
    metrics = ComputeMetrics(tokenizer)
    assert metrics.decode(labels) == ["Tiếng Việt", "xin chào"]
    assert metrics(EvalPrediction(predictions=generated, label_ids=labels))["wer"] == pytest.approx(1 / 4)
    logits = np.zeros((2, 16, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="predict_with_generate"):
        metrics(EvalPrediction(predictions=logits, label_ids=labels))


def test_trainer_evaluation_scores_generated_text_not_teacher_forced_argmax(
    tiny_model_dir, prepared_cache, processor, tmp_path
):
    """The Trainer's eval WER equals a manual generate + score, and differs from scoring logits' argmax."""
    validation = open_cache(prepared_cache, model_dir=tiny_model_dir).validation
    rows = CacheRows(validation)
    model = WhisperForConditionalGeneration.from_pretrained(str(tiny_model_dir)).eval()
    configure_generation(model, language="vi", task="transcribe")
    collator = WhisperDataCollator(DecoderTokens.from_tokenizer(processor.tokenizer))
    metrics = ComputeMetrics(processor.tokenizer)
    args = PipelineTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], generation_max_length=24, eval_on_start=False
    )
    trainer = WhisperTrainer(
        model=model,
        args=args,
        data_collator=collator,
        eval_dataset=rows,
        processing_class=processor,
        compute_metrics=metrics,
    )
    evaluated = trainer.evaluate()

    batch = model_inputs(collator(rows.take(range(len(rows)))), dtype=torch.float32, device="cpu")
    references = metrics.decode(batch["labels"].numpy())
    with torch.no_grad():
        generated = model.generate(batch["input_features"], max_length=24)
        argmax = model(**batch).logits.argmax(-1)
    by_generation = score(references, metrics.decode(generated.numpy()))
    by_argmax = score(references, metrics.decode(argmax.numpy()))
    assert evaluated["eval_wer"] == pytest.approx(by_generation["wer"])
    assert evaluated["eval_cer"] == pytest.approx(by_generation["cer"])
    assert by_argmax["cer"] != pytest.approx(by_generation["cer"])
