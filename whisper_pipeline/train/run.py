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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainingArguments, WhisperProcessor, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.training_args import IntervalStrategy, SaveStrategy

from whisper_pipeline.cache import SOURCE_COLUMNS, PreparedCache, clean_rows, open_cache
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import MAX_TARGET_POSITIONS
from whisper_pipeline.errors import ConfigError, exit_on_user_error
from whisper_pipeline.train.batches import CacheRows
from whisper_pipeline.train.device import check_cuda, cuda_state
from whisper_pipeline.train.metrics import SCORES, ComputeMetrics
from whisper_pipeline.train.modeling import (
    DEFAULT_TARGET_MODULES,
    PRECISIONS,
    adapter_trains_conv,
    check_quantization,
    configure_generation,
    configure_spec_augment,
    continue_adapter,
    load_base_model,
    new_adapter,
    prepare_for_training,
    resolve_precision,
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

RESUME_AUTO = "auto"
# LoRA moves only a low-rank update B·A with B starting at zero, scaled by alpha/r: to change the model
# as much as full fine-tuning does at 1e-5..5e-6 (the seed's 5e-6), its few weights need steps 100x larger.
# 1e-3 is the rate of peft's Whisper LoRA recipe with these same r=32/alpha=64 (the int8 whisper-large
# notebook); warmup (10% of the steps) keeps the first steps of the fresh adapter from overshooting.
DEFAULT_LEARNING_RATE = 1e-3
# Share of examples with timestamps, and conditioned on the previous window's text: see the README's
# "Long-form" section for the demo's figures behind them.
DEFAULT_TIMESTAMP_PROBABILITY = 0.5
DEFAULT_PROMPT_PROBABILITY = 0.2


@dataclass
class DataArguments:
    """Where the cache is and how training batches are augmented."""

    data_dir: str = field(
        default="processed_data", metadata={"help": "Feature cache written by prepare_data.py."}
    )
    spec_augment: bool = field(
        default=True,
        metadata={
            "help": "SpecAugment on training batches (Whisper's own apply_spec_augment: masks time steps "
            "and mel bins in training mode only, never in evaluation)."
        },
    )
    mask_time_prob: float | None = field(
        default=None,
        metadata={"help": "Share of time steps masked by SpecAugment (default: the model config's, 0.05)."},
    )
    mask_feature_prob: float | None = field(
        default=0.05,
        metadata={
            "help": "Share of mel bins masked by SpecAugment (Whisper's config says 0.0, which would leave "
            "frequency masking off)."
        },
    )
    timestamp_probability: float = field(
        default=DEFAULT_TIMESTAMP_PROBABILITY,
        metadata={
            "help": "Share of training examples that keep their timestamps (the rest are trained with "
            "<|notimestamps|>): what long-form transcription (faster-whisper, subtitles) relies on."
        },
    )
    prompt_probability: float = field(
        default=DEFAULT_PROMPT_PROBABILITY,
        metadata={
            "help": "Share of training examples conditioned on their recording's previous window "
            "(<|startofprev|> + its text, at most 224 tokens, not scored), as long-form decoding does."
        },
    )

    def __post_init__(self) -> None:
        for name in ("timestamp_probability", "prompt_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class ModelArguments:
    """The starting model: base weights, optional adapter to continue, precision."""

    model: str = field(
        default="./model", metadata={"help": "Whisper directory (weights, config, processor files)."}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "Continue training this saved LoRA adapter instead of a new one."}
    )
    unfreeze_conv: bool = field(
        default=False,
        metadata={
            "help": "Also train the encoder's conv1/conv2, saved with the adapter (peft modules_to_save) and "
            "restored when it is loaded; an adapter saved with them keeps training them."
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 on GPUs that support it, else fp16 (grad scaler); fp32 on CPU. Frozen base "
            "weights are loaded in it, trained weights stay fp32.",
            "choices": list(PRECISIONS),
        },
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit base weights (bitsandbytes, GPU)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit base weights (bitsandbytes, GPU)."})
    allow_pickle: bool = field(
        default=False,
        metadata={"help": "Accept pickle checkpoints (pytorch_model.bin, adapter_model.bin): trusted only."},
    )
    language: str | None = field(
        default=None,
        metadata={
            "help": "Language code forced in generation (default: the cache's, which its labels carry)."
        },
    )
    task: str | None = field(
        default=None, metadata={"help": "transcribe or translate (default: the cache's)."}
    )


@dataclass
class LoraArguments:
    """A new adapter's shape (a continued adapter keeps its own).

    r 32 / alpha 64 / dropout 0.05 are peft's Whisper LoRA recipe; placed on all four attention projections
    of encoder and decoder (self and cross attention), so the encoder adapts to the acoustics and the
    decoder to the language: 2.4 M weights, 3% of whisper-base.
    """

    lora_r: int = field(default=32, metadata={"help": "LoRA rank (default 32)."})
    lora_alpha: int = field(
        default=64, metadata={"help": "LoRA scale numerator: updates are scaled by alpha/r (default 64)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input (default 0.05)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={
            "help": "Linear layers given LoRA (default q_proj k_proj v_proj out_proj: every attention "
            "projection of encoder and decoder)."
        },
    )


def _default_pin_memory() -> bool:
    """Pinned host memory speeds up copies to a GPU; without one it only costs memory."""
    return torch.cuda.is_available()


@dataclass
class PipelineTrainingArguments(Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments with this pipeline's defaults (every Trainer setting still works)."""

    output_dir: str | None = field(
        default="outputs",
        metadata={"help": "Adapter, metrics, predictions, checkpoints and TensorBoard logs."},
    )
    learning_rate: float = field(
        default=DEFAULT_LEARNING_RATE,
        metadata={"help": "Peak LoRA learning rate (see DEFAULT_LEARNING_RATE: why not the seed's 5e-6)."},
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warmup: steps, or a share of all steps if < 1."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training split."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch per device."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "no, steps or epoch."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "no, steps, epoch or best."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept (the best one is always among them)."}
    )
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Finish with the best checkpoint."})
    metric_for_best_model: str | None = field(
        default="wer", metadata={"help": f"Checkpoint selection metric: loss or one of {', '.join(SCORES)}."}
    )
    greater_is_better: bool | None = field(default=False, metadata={"help": "False: lower WER is better."})
    eval_on_start: bool = field(
        default=True, metadata={"help": "Baseline evaluation of the starting model before the first step."}
    )
    predict_with_generate: bool = field(
        default=True, metadata={"help": "Score generated text (required: WER on logits is meaningless)."}
    )
    generation_max_length: int | None = field(
        default=MAX_TARGET_POSITIONS,
        metadata={"help": "Longest generated sequence, special tokens included (Whisper's maximum: 448)."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    logging_first_step: bool = field(default=True, metadata={"help": "Log the first step's loss too."})
    report_to: None | str | list[str] = field(  # noqa: RUF036 (the order HfArgumentParser parses)
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Loggers (TensorBoard: <output_dir>/runs)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Nothing to remove: the collator builds the model's inputs from whole cache rows."},
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keep: a peft model's forward() hides it."}
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={
            "help": "Loader processes. Default 0: a thread of the training process makes the next batches "
            "(a batch costs a fraction of a millisecond; workers spend more handing one over)."
        },
    )
    dataloader_pin_memory: bool = field(
        default_factory=_default_pin_memory,
        metadata={"help": "Pinned host memory for copies to the GPU (default: with CUDA only)."},
    )
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={"help": "Keep loader workers, if any, across epochs and evaluations."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every adapter weight gets a gradient every step: no search needed."}
    )

    def __post_init__(self) -> None:
        if not self.dataloader_num_workers:
            self.dataloader_persistent_workers = False  # the DataLoader refuses it without workers
        super().__post_init__()


@dataclass(frozen=True)
class Splits:
    """The rows the Trainer sees and where each validation row comes from."""

    train: CacheRows
    validation: CacheRows
    validation_sources: list[dict[str, Any]]  # segment_id, audio_uri, start, end; in validation order


def parse_arguments(
    argv: Sequence[str],
) -> tuple[DataArguments, ModelArguments, LoraArguments, PipelineTrainingArguments]:
    """Optional YAML/JSON file + flags; invalid Trainer combinations become one-line ConfigErrors."""
    try:
        return parse_config((DataArguments, ModelArguments, LoraArguments, PipelineTrainingArguments), argv)
    except ValueError as error:  # from the Trainer's own checks, e.g. mismatched eval/save strategies
        raise ConfigError(f"invalid training settings: {str(error).strip().splitlines()[0]}") from None


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
        Path(model_args.model),
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
    if not training_args.use_cpu:
        check_cuda(cuda_state())
    precision = _precision(model_args, training_args)
    quantization = check_quantization(model_args.load_in_8bit, model_args.load_in_4bit)
    resume = _resume_checkpoint(training_args)
    training_args = _finalize_training_args(training_args, precision, resume)
    model_dir = Path(model_args.model)
    cache = open_cache(Path(data_args.data_dir), model_dir=model_dir)
    if resume:
        _check_resumed_cache(Path(resume), cache.fingerprint)
    language, task = _language_and_task(model_args, cache.report)
    splits = _splits(cache)

    processor = WhisperProcessor.from_pretrained(str(model_dir))
    set_seed(training_args.seed)  # before the adapter exists: its random LoRA A matrices depend on it
    model = build_model(
        data_args,
        model_args,
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
            "quantization": quantization,
            "language": language,
            "task": task,
            "unfreeze_conv": adapter_trains_conv(model),
            "resume_from_checkpoint": resume,
            "world_size": training_args.world_size,
            "effective_batch_size": training_args.train_batch_size
            * training_args.gradient_accumulation_steps
            * training_args.world_size,
            "trainable_parameters": trainable,
            "total_parameters": total,
        },
        arguments=(data_args, model_args, lora_args),
        training_args=training_args,
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
    stop = StopOnSignal()
    trainer.add_callback(stop)
    with stop.installed():
        train_output = trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        raise TrainingStopped(
            f"stopped by SIGTERM: checkpoint-{stop.stopped_at} saved in {output_dir}; continue with "
            "--resume-from-checkpoint auto"
        )
    best = trainer.predict(splits.validation, metric_key_prefix="eval")

    metrics = metrics_record(
        trainer.state, training_args.metric_for_best_model, train_output.metrics, best.metrics
    )
    if trainer.is_world_process_zero():
        write_results(output_dir, trainer.model, processor, metrics, splits.validation_sources, best)
    trainer.accelerator.wait_for_everyone()
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


def _precision(model_args: ModelArguments, training_args: PipelineTrainingArguments) -> str:
    """--precision, or the Trainer's own --bf16/--fp16 when given with --precision auto."""
    trainer_flag = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None
    if trainer_flag and model_args.precision not in ("auto", trainer_flag):
        raise ConfigError(
            f"--{trainer_flag} contradicts --precision {model_args.precision}: give one of them"
        )
    return resolve_precision(trainer_flag or model_args.precision)


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
