"""Stage 2: the feature cache -> a LoRA adapter for Whisper, chosen by word error rate on generated text.

Reads only the cache (never redoes stage 1), evaluates the starting model before the first step (the
baseline), then after each epoch with `generate` in the cache's language, keeps the best checkpoint by
WER and writes its outputs under --output-dir (see outputs.py).

Runs unchanged on one process, under `torchrun --nproc-per-node N` and under `accelerate launch`: every
process trains and evaluates its share; only the first writes outputs and prints the summary.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, TrainerState, WhisperProcessor, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from whisper_pipeline.cache import SOURCE_COLUMNS, PreparedCache, clean_rows, open_cache
from whisper_pipeline.errors import ConfigError, exit_on_user_error
from whisper_pipeline.inference.longform import score_adapter_and_base
from whisper_pipeline.train.arguments import (
    RESUME_AUTO,
    DataArguments,
    LoraArguments,
    ModelArguments,
    PipelineTrainingArguments,
    parse_arguments,
)
from whisper_pipeline.train.batches import CacheRows
from whisper_pipeline.train.console import use_console_progress
from whisper_pipeline.train.device import check_cuda, cuda_state
from whisper_pipeline.train.metrics import SCORES, ComputeMetrics
from whisper_pipeline.train.modeling import (
    adapter_trains_conv,
    check_quantization,
    configure_generation,
    configure_spec_augment,
    continue_adapter,
    load_base_model,
    new_adapter,
    prepare_for_training,
    resolve_model_dir,
    training_precision,
)
from whisper_pipeline.train.outputs import (
    TrainingReport,
    format_summary,
    metrics_record,
    read_config,
    run_settings,
    write_config,
    write_results,
)
from whisper_pipeline.train.stopping import StopOnSignal, TrainingStopped
from whisper_pipeline.train.trainer import DecoderTokens, WhisperDataCollator, WhisperTrainer
from whisper_pipeline.writable import check_writable


@dataclass(frozen=True)
class Splits:
    """The rows the Trainer sees and where each validation row comes from."""

    train: CacheRows
    validation: CacheRows
    validation_sources: list[dict[str, Any]]  # segment_id, audio_uri, start, end; in validation order


def build_model(
    data_args: DataArguments,
    model_args: ModelArguments,
    lora_args: LoraArguments,
    *,
    language: str,
    task: str,
    precision: str,
    quantization: str | None = None,
    gradient_checkpointing: bool = False,
):
    """The base model ready to train: generation set for language and task, SpecAugment as set, and a new
    LoRA adapter or the one to continue (what train_model.py trains and benchmarks/train_input.py times)."""
    model = load_base_model(
        resolve_model_dir(model_args.model),
        precision=precision,
        allow_pickle=model_args.allow_pickle,
        quantization=quantization,
    )
    configure_generation(model, language=language, task=task)
    configure_spec_augment(
        model,
        enabled=data_args.spec_augment,
        mask_time_prob=data_args.mask_time_prob,
        mask_feature_prob=data_args.mask_feature_prob,
    )
    prepare_for_training(model, gradient_checkpointing=gradient_checkpointing)
    if model_args.adapter:
        return continue_adapter(
            model,
            Path(model_args.adapter),
            unfreeze_conv=model_args.unfreeze_conv,
            allow_pickle=model_args.allow_pickle,
        )
    return new_adapter(
        model,
        r=lora_args.lora_r,
        alpha=lora_args.lora_alpha,
        dropout=lora_args.lora_dropout,
        target_modules=lora_args.lora_target_modules,
        unfreeze_conv=model_args.unfreeze_conv,
    )


def run_training(
    data_args: DataArguments,
    model_args: ModelArguments,
    lora_args: LoraArguments,
    training_args: PipelineTrainingArguments,
) -> TrainingReport:
    """Train, select by WER, write the outputs (first process only); raises PipelineError for user errors."""
    check_writable(training_args.output_dir, "--output-dir")
    if not training_args.use_cpu:
        check_cuda(cuda_state())
    precision, precision_reason = _precision(model_args, training_args)
    quantization = check_quantization(model_args.load_in_8bit, model_args.load_in_4bit)
    resume = _resume_checkpoint(training_args)
    requested_args = training_args  # what train_config.yaml records: fed back, it repeats this run
    training_args = _finalize_training_args(training_args, precision, resume)
    model_dir = resolve_model_dir(model_args.model)
    cache = open_cache(Path(data_args.data_dir), model_dir=model_dir)
    resumed = TrainerState.load_from_json(str(Path(resume) / TRAINER_STATE_NAME)) if resume else None
    finished = resumed is not None and _finished(resumed, training_args)
    if resume:
        _check_resumed_cache(Path(resume), cache.fingerprint)
    language, task = _language_and_task(model_args, cache.report)
    splits = _splits(cache)

    processor = WhisperProcessor.from_pretrained(str(model_dir))
    set_seed(training_args.seed)  # before the adapter exists: its random LoRA A matrices depend on it
    model = build_model(
        data_args,
        dataclasses.replace(model_args, model=str(model_dir)),
        lora_args,
        language=language,
        task=task,
        precision=precision,
        quantization=quantization,
        gradient_checkpointing=bool(training_args.activation_checkpointing),
    )

    output_dir = Path(training_args.output_dir)
    trainable, total = model.get_nb_trainable_parameters()
    settings = run_settings(
        cache=cache,
        examples={"train": len(splits.train), "validation": len(splits.validation)},
        resolved={
            "precision": precision,
            "precision_reason": precision_reason,
            "quantization": quantization,
            "language": language,
            "task": task,
            "unfreeze_conv": adapter_trains_conv(model),
            "model_dir": str(model_dir),
            "resume_from_checkpoint": resume,
            "resumed_at_step": resumed.global_step if resumed else None,
            "finished_before": finished,
            "world_size": training_args.world_size,
            "effective_batch_size": training_args.train_batch_size
            * training_args.gradient_accumulation_steps
            * training_args.world_size,
            "trainable_parameters": trainable,
            "total_parameters": total,
        },
        arguments=(data_args, model_args, lora_args),
        training_args=requested_args,
    )
    if training_args.process_index == 0:
        write_config(output_dir, settings)

    tokens = DecoderTokens.from_tokenizer(processor.tokenizer)
    trainer = WhisperTrainer(
        model=model,
        args=training_args,
        data_collator=WhisperDataCollator(
            tokens,
            timestamp_probability=data_args.timestamp_probability,
            prompt_probability=data_args.prompt_probability,
            seed=training_args.seed,
        ),
        eval_data_collator=WhisperDataCollator(tokens),
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        processing_class=processor,
        compute_metrics=ComputeMetrics(processor.tokenizer),
    )
    use_console_progress(trainer)
    if training_args.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(training_args.early_stopping_patience))
    if resumed and training_args.process_index == 0:
        print(f"resumed from {resume} at step {resumed.global_step}", flush=True)
    if finished:
        # The Trainer would take one more step before it checks the limit: the run is only completed.
        print(f"{resume} is the end of this run: nothing left to train", flush=True)
        train_metrics = _restore_finished(trainer, resumed, Path(resume))
    else:
        stop = StopOnSignal()
        trainer.add_callback(stop)
        with stop.installed():
            train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
        if stop.stopped_at is not None:
            raise TrainingStopped(
                f"stopped by SIGTERM: checkpoint-{stop.stopped_at} saved in {output_dir}; continue with "
                "--resume-from-checkpoint auto"
            )
    best = trainer.predict(splits.validation, metric_key_prefix="eval")

    metrics = metrics_record(trainer.state, training_args.metric_for_best_model, train_metrics, best.metrics)
    if trainer.is_world_process_zero() and data_args.long_form:
        metrics["long_form"] = score_adapter_and_base(
            trainer.model,
            cache.validation,
            tokenizer=processor.tokenizer,
            language=language,
            task=task,
            max_new_tokens=data_args.long_form_max_new_tokens,
        )
    if trainer.is_world_process_zero():
        write_results(output_dir, trainer.model, processor, metrics, splits.validation_sources, best)
    # No barrier here: the other processes have nothing left to do, and one would time out (ddp_timeout,
    # 30 min by default) while the first transcribes many long validation recordings.
    return TrainingReport(output_dir, metrics, settings, trainer.is_world_process_zero())


def _language_and_task(model_args: ModelArguments, report: Mapping[str, Any]) -> tuple[str, str]:
    """The cache's language and task; a different one asked for is refused (the labels carry the cache's)."""
    cached = report.get("settings", {})
    chosen = {}
    for name in ("language", "task"):
        asked, in_cache = getattr(model_args, name), cached.get(name)
        if asked and in_cache and asked != in_cache:
            raise ConfigError(
                f"--{name} {asked} but the cache's labels are for {in_cache}: rerun prepare_data.py "
                f"--{name} {asked}, or drop --{name}"
            )
        chosen[name] = asked or in_cache
        if not chosen[name]:
            raise ConfigError(f"the cache report does not say its {name}: pass --{name}")
    return chosen["language"], chosen["task"]


def _splits(cache: PreparedCache) -> Splits:
    """Training rows (augmented copies included) and clean validation rows, as CacheRows."""
    if not len(cache.train):
        raise ConfigError(f"the cache in {cache.root} has no training examples")
    validation = clean_rows(cache.validation)
    if not len(validation):
        raise ConfigError(
            f"the cache in {cache.root} has no validation examples, needed for the baseline, checkpoint "
            "selection and predictions: rerun prepare_data.py with --val-fraction > 0"
        )
    return Splits(
        train=CacheRows(cache.train),
        validation=CacheRows(validation),
        validation_sources=validation.select_columns(list(SOURCE_COLUMNS)).to_list(),
    )


def _precision(model_args: ModelArguments, training_args: PipelineTrainingArguments) -> tuple[str, str]:
    """--precision, or the Trainer's own --bf16/--fp16 when given with --precision auto; and why."""
    trainer_flag = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None
    if trainer_flag and model_args.precision not in ("auto", trainer_flag):
        raise ConfigError(
            f"--{trainer_flag} contradicts --precision {model_args.precision}: give one of them"
        )
    return training_precision(trainer_flag or model_args.precision)


def _resume_checkpoint(training_args: PipelineTrainingArguments) -> str | None:
    """--resume-from-checkpoint: a checkpoint folder, or `auto` for the newest in output_dir (none: start)."""
    requested = training_args.resume_from_checkpoint
    if requested is None:
        return None
    if requested == RESUME_AUTO:
        output_dir = Path(training_args.output_dir)
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None and training_args.process_index == 0:
            print(
                f"no checkpoint in {output_dir} to resume from: starting from the beginning", file=sys.stderr
            )
        return last
    if not (Path(requested) / "trainer_state.json").is_file():
        raise ConfigError(
            f"--resume-from-checkpoint {requested} is not a checkpoint folder (no trainer_state.json)"
        )
    return requested


def _finished(state: TrainerState, training_args: PipelineTrainingArguments) -> bool:
    """Whether a checkpoint's run has nothing left to train: it reached --max-steps (or the epochs), or it
    stopped early before its own last step."""
    if training_args.max_steps > 0:
        if state.global_step >= training_args.max_steps:
            return True
    elif (state.epoch or 0) >= training_args.num_train_epochs:
        return True
    # stopped early: EarlyStoppingCallback's patience spent (a stop by SIGTERM is not an end: it resumes)
    early = (state.stateful_callbacks or {}).get("EarlyStoppingCallback") or {}
    if isinstance(early, list):  # one entry per instance
        early = early[-1]
    patience = early.get("args", {}).get("early_stopping_patience")
    counter = early.get("attributes", {}).get("early_stopping_patience_counter", 0)
    return bool(patience) and counter >= patience and state.global_step < state.max_steps


def _restore_finished(trainer: WhisperTrainer, state: TrainerState, checkpoint: Path) -> dict[str, Any]:
    """A finished run's state and model, as train() would end it: the best checkpoint's weights with
    load_best_model_at_end, else the last one's (the folder may have moved since the state was saved)."""
    best = state.best_model_checkpoint
    if best and not Path(best).is_dir():
        best = str(checkpoint.parent / Path(best).name)
    state.best_model_checkpoint = best if best and Path(best).is_dir() else None
    trainer.state = state
    load_best = trainer.args.load_best_model_at_end and state.best_model_checkpoint
    trainer._load_from_checkpoint(state.best_model_checkpoint if load_best else str(checkpoint))
    return {}


def _check_resumed_cache(checkpoint: Path, fingerprint: str) -> None:
    """A checkpoint resumes only on the cache it was trained on: its data order and position would not fit
    another. Checkpoints without our train_config.yaml beside them cannot be checked."""
    previous = ((read_config(checkpoint.parent) or {}).get("cache") or {}).get("fingerprint")
    if previous and previous != fingerprint:
        raise ConfigError(
            f"the checkpoint was trained on another cache (fingerprint {previous[:12]}, now "
            f"{fingerprint[:12]}): resume only on the same data, or start a new run in another --output-dir"
        )


def _finalize_training_args(
    training_args: PipelineTrainingArguments, precision: str, resume: str | None
) -> PipelineTrainingArguments:
    """Checks what this pipeline needs, then the Trainer's precision flags (mixed precision is derived from
    them when the arguments are built, hence a rebuilt copy rather than attribute assignment)."""
    if not training_args.predict_with_generate:
        raise ConfigError("--predict-with-generate false: WER must be computed on generated text")
    best = (training_args.metric_for_best_model or "loss").removeprefix("eval_")
    if best not in ("loss", *SCORES):
        raise ConfigError(f"--metric-for-best-model {best}: use loss or one of {', '.join(SCORES)}")
    changes: dict[str, Any] = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if not torch.cuda.is_available():
        # Without it the Trainer neither makes torchrun's CPU processes one (gloo) group nor allows bf16.
        changes["use_cpu"] = True
    if resume:
        changes["eval_on_start"] = False  # the checkpoint's log history already holds the baseline
    return dataclasses.replace(training_args, **changes)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    report = run_training(*parse_arguments(sys.argv[1:] if argv is None else argv))
    if report.first_process:
        print(format_summary(report))
    return 0
