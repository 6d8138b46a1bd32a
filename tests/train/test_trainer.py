"""The training collator: timestamped or <|notimestamps|> labels, previous-text prompts kept out of the loss,
and the shares of each over many batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

from whisper_pipeline.train.batches import CacheRow
from whisper_pipeline.train.metrics import IGNORE_INDEX
from whisper_pipeline.train.trainer import DecoderTokens, WhisperDataCollator


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir) -> WhisperTokenizerFast:
    return WhisperTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tokens(tokenizer) -> DecoderTokens:
    return DecoderTokens.from_tokenizer(tokenizer)


def _row(tokenizer, text: str, previous: str = "") -> CacheRow:
    ids = tokenizer.convert_tokens_to_ids
    labels = [
        *ids(["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|0.00|>"]),
        *tokenizer(f" {text}", add_special_tokens=False).input_ids,
        *ids(["<|1.24|>", "<|endoftext|>"]),
    ]
    previous_tokens = tokenizer(f" {previous}", add_special_tokens=False).input_ids if previous else []
    return CacheRow(
        np.zeros((10, 80), dtype=np.float16),
        -1.5,
        np.array(labels, dtype=np.int32),
        np.array(previous_tokens, dtype=np.int32),
    )


def test_labels_keep_their_timestamps_or_get_the_notimestamps_form(tokenizer, tokens):
    row = _row(tokenizer, "xin chào")
    kept = WhisperDataCollator(tokens, timestamp_probability=1.0)([row])["labels"][0].tolist()
    assert kept == row.labels[1:].tolist()  # the model shifts <|startoftranscript|> in front itself
    stripped = WhisperDataCollator(tokens, timestamp_probability=0.0)([row])["labels"][0].tolist()
    assert tokenizer.convert_ids_to_tokens(stripped[:3]) == ["<|vi|>", "<|transcribe|>", "<|notimestamps|>"]
    assert not set(stripped) & tokens.timestamps
    assert tokenizer.decode(stripped, skip_special_tokens=True) == " xin chào"


def test_a_prompt_is_fed_to_the_decoder_and_never_scored(tokenizer, tokens, tiny_model_dir):
    rows = [_row(tokenizer, "các bạn", previous="xin chào"), _row(tokenizer, "một")]  # the second: no prompt
    batch = WhisperDataCollator(tokens, timestamp_probability=1.0, prompt_probability=1.0)(rows)
    inputs, labels = batch["decoder_input_ids"], batch["labels"]
    assert inputs.shape == labels.shape
    prompt = rows[0].previous_tokens.tolist()
    first = inputs[0].tolist()
    assert first[: len(prompt) + 2] == [tokens.start_of_previous, *prompt, tokens.start_of_transcript]
    # targets of the prompt's positions and of <|startoftranscript|> are ignored; then the labels follow
    assert (labels[0, : len(prompt) + 1] == IGNORE_INDEX).all()
    assert labels[0, len(prompt) + 1 :][: len(rows[0].labels) - 1].tolist() == rows[0].labels[1:].tolist()
    # each scored target is the decoder's next input: the inputs are the sequence, the targets it shifted
    scored = range(len(prompt) + 1, len(prompt) + len(rows[0].labels) - 1)
    assert [labels[0, i].item() for i in scored] == [inputs[0, i + 1].item() for i in scored]
    # a row without previous text in the same batch is as without prompts, padded with <|endoftext|>
    assert inputs[1, 0] == tokens.start_of_transcript
    assert labels[1, : len(rows[1].labels) - 1].tolist() == rows[1].labels[1:].tolist()
    # the model takes the batch: the loss covers only the scored targets
    model = WhisperForConditionalGeneration.from_pretrained(str(tiny_model_dir))
    features = torch.zeros(2, 80, 3000)
    loss = model(input_features=features, decoder_input_ids=inputs, labels=labels).loss
    assert torch.isfinite(loss)


def test_realised_shares_follow_the_probabilities_over_many_batches(tokenizer, tokens):
    """A share that silently ends at 0 (a flag overriding another) is a known failure elsewhere: count it.
    Over 4,000 draws a binomial share's standard deviation is at most 0.008: 0.04 is five of them."""
    rows = [_row(tokenizer, "xin chào", previous="một hai") for _ in range(8)]
    for timestamps, prompts in ((0.5, 0.2), (0.2, 0.5), (1.0, 0.0), (0.0, 1.0)):
        collate = WhisperDataCollator(
            tokens, timestamp_probability=timestamps, prompt_probability=prompts, seed=3
        )
        with_timestamps = with_prompt = 0
        for _ in range(500):
            batch = collate(rows)
            inputs = batch.get("decoder_input_ids")
            for index in range(len(rows)):
                targets = batch["labels"][index].tolist()
                with_timestamps += bool(set(targets) & tokens.timestamps)
                with_prompt += inputs is not None and inputs[index, 0].item() == tokens.start_of_previous
        assert abs(with_timestamps / 4000 - timestamps) <= 0.04
        assert abs(with_prompt / 4000 - prompts) <= 0.04


def test_the_same_seed_draws_the_same_examples(tokenizer, tokens):
    rows = [_row(tokenizer, "xin chào", previous="một hai") for _ in range(8)]

    def draws(seed: int) -> list[list[int]]:
        collate = WhisperDataCollator(tokens, timestamp_probability=0.5, prompt_probability=0.5, seed=seed)
        return [collate(rows)["labels"].flatten().tolist() for _ in range(5)]

    assert draws(1) == draws(1) != draws(2)


def test_the_prompt_is_cut_to_fit_the_decoders_positions(tokenizer, tokens):
    long_previous = " ".join(["xin chào"] * 300)
    row = _row(tokenizer, "một", previous=long_previous)
    batch = WhisperDataCollator(tokens, timestamp_probability=1.0, prompt_probability=1.0)([row])
    prompt_length = int((batch["labels"][0] == IGNORE_INDEX).sum()) - 1
    assert prompt_length == 224  # at most half the decoder's 448 positions, the end of the previous text
    assert (
        batch["decoder_input_ids"][0, 1 : 1 + prompt_length].tolist() == row.previous_tokens[-224:].tolist()
    )
    assert batch["decoder_input_ids"].shape[1] <= 448
