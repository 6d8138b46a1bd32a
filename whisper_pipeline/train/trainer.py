"""The Trainer this pipeline runs: compact cache batches in, the padding to 30 s on the device, training
batches made ahead in a thread, generation under autocast and exact distributed evaluation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Seq2SeqTrainer

from whisper_pipeline.constants import (
    MAX_PROMPT_TOKENS,
    MAX_TARGET_POSITIONS,
    N_FRAMES,
    TIMESTAMP_TOKENS,
)
from whisper_pipeline.errors import ModelError
from whisper_pipeline.train.batches import BackgroundBatches, CacheRow, feature_batch, model_inputs
from whisper_pipeline.train.metrics import IGNORE_INDEX

BACKGROUND_STEPS = 2  # optimizer steps of batches the training thread may make ahead


@dataclass(frozen=True)
class DecoderTokens:
    """The special tokens a batch is built with, looked up by their text in the model's tokenizer."""

    start_of_transcript: int
    end_of_text: int  # also the padding of decoder inputs
    no_timestamps: int
    start_of_previous: int
    timestamps: frozenset[int]  # <|0.00|> ... <|30.00|>

    @classmethod
    def from_tokenizer(cls, tokenizer) -> DecoderTokens:
        vocabulary = tokenizer.get_vocab()
        names = [
            "<|startoftranscript|>",
            "<|endoftext|>",
            "<|notimestamps|>",
            "<|startofprev|>",
            *TIMESTAMP_TOKENS,
        ]
        if missing := [name for name in names if name not in vocabulary]:
            raise ModelError(f"the tokenizer has no {missing[0]} token: not a multilingual Whisper tokenizer")
        return cls(
            start_of_transcript=vocabulary["<|startoftranscript|>"],
            end_of_text=vocabulary["<|endoftext|>"],
            no_timestamps=vocabulary["<|notimestamps|>"],
            start_of_previous=vocabulary["<|startofprev|>"],
            timestamps=frozenset(vocabulary[token] for token in TIMESTAMP_TOKENS),
        )


@dataclass
class WhisperDataCollator:
    """Cache rows -> a compact Whisper batch (see batches.py): features padded to the batch's longest row,
    their frame counts and pad values, and the decoder's targets; WhisperTrainer pads the features to 30 s
    on the device.

    The cache's labels carry timestamps (<|sot|><|lang|><|task|> (<|t|> text <|t|>)... <|eot|>). Each
    example keeps them with `timestamp_probability`, else gets the <|notimestamps|> form; with
    `prompt_probability` it is conditioned on the recording's previous window: <|startofprev|> and that
    text before <|startoftranscript|>, never a target of the loss (an unmasked prompt teaches the model to
    hallucinate it). The draws come from one generator seeded by `seed`: the same batches in the same
    order give the same examples.

    Without prompts the targets are the labels after <|startoftranscript|> and the model shifts them into
    its decoder inputs itself; with one, the decoder inputs are given.
    """

    tokens: DecoderTokens
    timestamp_probability: float = 0.0
    prompt_probability: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def __call__(self, rows: Sequence[CacheRow]) -> dict[str, torch.Tensor]:
        sequences = [self._sequence(row) for row in rows]
        batch = feature_batch(rows)
        if not any(masked for _, masked in sequences):
            batch["labels"] = _padded([ids[1:] for ids, _ in sequences], IGNORE_INDEX)
            return batch
        batch["decoder_input_ids"] = _padded([ids[:-1] for ids, _ in sequences], self.tokens.end_of_text)
        targets = [[IGNORE_INDEX] * masked + ids[1 + masked :] for ids, masked in sequences]
        batch["labels"] = _padded(targets, IGNORE_INDEX)
        return batch

    def _sequence(self, row: CacheRow) -> tuple[list[int], int]:
        """The row's decoder tokens from <|startofprev|> or <|startoftranscript|> on, and how many targets
        at the start (the prompt's, and <|startoftranscript|> after it) the loss ignores."""
        labels = row.labels.tolist()
        if self._random.random() >= self.timestamp_probability:
            labels = self.without_timestamps(labels)
        if not len(row.previous_tokens) or self._random.random() >= self.prompt_probability:
            return labels, 0
        room = min(MAX_PROMPT_TOKENS, MAX_TARGET_POSITIONS - len(labels))
        prompt = row.previous_tokens[len(row.previous_tokens) - room :].tolist() if room > 0 else []
        if not prompt:
            return labels, 0
        return [self.tokens.start_of_previous, *prompt, *labels], len(prompt) + 1

    def without_timestamps(self, labels: list[int]) -> list[int]:
        """<|sot|><|lang|><|task|><|notimestamps|> and the text tokens; a no-speech target is kept as is."""
        if not any(token in self.tokens.timestamps for token in labels):
            return labels
        text = [token for token in labels[3:] if token not in self.tokens.timestamps]
        return [*labels[:3], self.tokens.no_timestamps, *text]


def _padded(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    padded = np.full((len(sequences), max(len(ids) for ids in sequences)), value, dtype=np.int64)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = ids
    return torch.from_numpy(padded)


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with training batches made ahead in a thread, device-side feature padding, generation
    under autocast and exact distributed evaluation."""

    _background: BackgroundBatches | None = None

    def __init__(self, *args, eval_data_collator: WhisperDataCollator | None = None, **kwargs) -> None:
        """`eval_data_collator`: the batches of evaluation and prediction (scored without timestamps or
        prompts, as the short-form score); training batches come from `data_collator`."""
        super().__init__(*args, **kwargs)
        self._eval_data_collator = eval_data_collator or self.data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        with self._collating_for_evaluation():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._collating_for_evaluation():
            return super().get_test_dataloader(test_dataset)

    @contextmanager
    def _collating_for_evaluation(self) -> Iterator[None]:
        training_collator, self.data_collator = self.data_collator, self._eval_data_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Without loader workers the next batches are made by a thread while this step computes. The loop
        # passes the same iterator for a whole epoch; the thread takes each batch in the loader's order,
        # so the batches, their order and every sampler state are those of the plain loop.
        if not self.args.dataloader_num_workers:
            if self._background is None or self._background.source is not epoch_iterator:
                self._stop_background()
                depth = BACKGROUND_STEPS * self.args.gradient_accumulation_steps
                self._background = BackgroundBatches(epoch_iterator, depth)
            epoch_iterator = self._background
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _stop_background(self) -> None:
        if self._background is not None:
            self._background.close()
            self._background = None

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # max_steps may end training in the middle of an epoch
            self._stop_background()

    def _prepare_inputs(self, inputs: dict[str, torch.Tensor | Any]) -> dict[str, torch.Tensor | Any]:
        # training_step and both prediction_steps (loss only, and generate) take their inputs from here.
        # Features in the compute dtype: autocast casts them to it for conv1 anyway, so the values are equal.
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
        return model_inputs(super()._prepare_inputs(inputs), dtype=dtype, device=self.args.device)

    def floating_point_ops(self, inputs: dict[str, torch.Tensor | Any]) -> int:
        # The Trainer's estimate counts the model input's elements: those of the padded input, as before.
        rows, _, n_mels = inputs["input_features"].shape
        padded = torch.empty(rows, n_mels, N_FRAMES, device="meta")
        return super().floating_point_ops({"input_features": padded})

    def evaluation_loop(self, *args, **kwargs):
        # Seq2SeqTrainer gathers with plain `gather` for num_return_sequences > 1 (transformers #27025), which
        # keeps the samples DDP repeats to even out the last batch and skews WER; one sequence per input here.
        self.gather_function = self.accelerator.gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        # accelerate autocasts forward() only; generate() would otherwise feed fp32 features to half weights.
        with self.accelerator.autocast():
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
