"""The Trainer this pipeline runs: compact cache batches in, the padding to 30 s on the device, training
batches made ahead in a thread, generation under autocast and exact distributed evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Seq2SeqTrainer

from whisper_pipeline.constants import N_FRAMES
from whisper_pipeline.train.batches import BackgroundBatches, CacheRow, feature_batch, model_inputs
from whisper_pipeline.train.metrics import IGNORE_INDEX

BACKGROUND_STEPS = 2  # optimizer steps of batches the training thread may make ahead


@dataclass(frozen=True)
class WhisperDataCollator:
    """Cache rows -> a compact Whisper batch (see batches.py): features padded to the batch's longest row,
    their frame counts and pad values, labels padded with -100; WhisperTrainer pads the features to 30 s
    on the device.

    Holds the one token id it needs (no globals). The cache's labels start with <|startoftranscript|>,
    which the model prepends itself when it shifts labels into decoder inputs: it is stripped here, or
    the decoder would learn from a doubled start token.
    """

    decoder_start_token_id: int

    def __call__(self, rows: Sequence[CacheRow]) -> dict[str, torch.Tensor]:
        labels = [row.labels for row in rows]
        labels = [ids[1:] if len(ids) and ids[0] == self.decoder_start_token_id else ids for ids in labels]
        padded = np.full((len(labels), max(len(ids) for ids in labels)), IGNORE_INDEX, dtype=np.int64)
        for row, ids in enumerate(labels):
            padded[row, : len(ids)] = ids
        return {**feature_batch(rows), "labels": torch.from_numpy(padded)}


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with training batches made ahead in a thread, device-side feature padding, generation
    under autocast and exact distributed evaluation."""

    _background: BackgroundBatches | None = None

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
