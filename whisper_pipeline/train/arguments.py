"""train_model.py's settings: our data, model and LoRA arguments, and Seq2SeqTrainingArguments with this
pipeline's defaults; `--help` lists ours first in groups, the Trainer's own fields after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import Seq2SeqTrainingArguments
from transformers.training_args import IntervalStrategy, SaveStrategy

from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import MAX_TARGET_POSITIONS, PRECISIONS
from whisper_pipeline.errors import ConfigError
from whisper_pipeline.inference.longform import LongFormArguments
from whisper_pipeline.train.metrics import SCORES
from whisper_pipeline.train.modeling import DEFAULT_TARGET_MODULES

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
DEFAULT_SAVE_STEPS = 500  # the Trainer's, when checkpoints do not follow evaluations
# --help: the Trainer's fields this pipeline sets or relies on, shown with ours before the Trainer's others.
HELP_GROUPS = {
    "data": (),
    "model": (),
    "LoRA": (),
    "training": (
        "learning_rate",
        "warmup_steps",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "seed",
        "dataloader_num_workers",
    ),
    "evaluation": (
        "eval_strategy",
        "eval_steps",
        "per_device_eval_batch_size",
        "eval_on_start",
        "metric_for_best_model",
        "greater_is_better",
        "load_best_model_at_end",
        "early_stopping_patience",
        "generation_max_length",
        "predict_with_generate",
        "long_form",
        "long_form_max_new_tokens",
    ),
    "outputs": (
        "output_dir",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "resume_from_checkpoint",
        "logging_steps",
        "logging_first_step",
        "report_to",
    ),
}


@dataclass
class DataArguments(LongFormArguments):
    """Where the cache is and how training batches are augmented."""

    _argument_group_name = "data"

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

    _argument_group_name = "model"

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
            "help": "auto: bf16 on GPUs that support it, else fp16 (grad scaler); on CPU bf16 autocast "
            "where it has AMX or AVX512-BF16, else fp32. Frozen base weights are loaded in it, trained "
            "weights stay fp32.",
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

    _argument_group_name = "LoRA"

    lora_r: int = field(default=32, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(
        default=64, metadata={"help": "LoRA scale numerator: updates are scaled by alpha/r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Linear layers given LoRA (every attention projection of encoder and decoder)."},
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
        metadata={
            "help": "Peak LoRA learning rate (the seed's 5e-6 is a full fine-tuning rate: an adapter barely "
            "moves)."
        },
    )
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warmup: steps, or a share of all steps if < 1."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training split."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch per device."})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate (steps: every --eval-steps)."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many evaluations in a row without a better --metric-for-best-model "
            "(default: never; the best checkpoint is still the one kept)."
        },
    )
    save_strategy: SaveStrategy | None = field(
        default=None,
        metadata={
            "help": "When to save a checkpoint (default: with every evaluation, where the best is chosen)."
        },
    )
    save_steps: float | None = field(
        default=None,
        metadata={
            "help": "Save every N steps (default: --eval-steps when saves follow evaluations, else 500)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": f"A checkpoint folder to resume, or {RESUME_AUTO}: the newest checkpoint in --output-dir "
            "(none there: start from the beginning; a finished run is not trained further)."
        },
    )
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
        evaluating = IntervalStrategy(self.eval_strategy)
        if self.save_strategy is None:  # checkpoints where the evaluations are: the best is always saved
            self.save_strategy = evaluating.value
        if self.save_steps is None:
            steps = SaveStrategy(self.save_strategy).value == evaluating.value == "steps"
            self.save_steps = (self.eval_steps or self.logging_steps) if steps else DEFAULT_SAVE_STEPS
        patience = self.early_stopping_patience
        if patience is not None and patience < 1:
            raise ConfigError(f"--early-stopping-patience must be 1 or more, got {patience}")
        if patience is not None and evaluating == IntervalStrategy.NO:
            raise ConfigError("--early-stopping-patience needs evaluations: --eval-strategy steps or epoch")
        if not self.dataloader_num_workers:
            self.dataloader_persistent_workers = False  # the DataLoader refuses it without workers
        super().__post_init__()


def parse_arguments(
    argv: Sequence[str],
) -> tuple[DataArguments, ModelArguments, LoraArguments, PipelineTrainingArguments]:
    """Optional YAML/JSON file (a run's train_config.yaml too) + flags; invalid Trainer combinations become
    one-line ConfigErrors with the library's whole message."""
    types = (DataArguments, ModelArguments, LoraArguments, PipelineTrainingArguments)
    parser = PipelineArgumentParser(
        types,
        prog=as_typed("whisper-train", "train_model.py"),
        description="Stage 2: the feature cache -> a LoRA adapter for Whisper, chosen by WER. "
        f"{CONFIG_NOTE} A run's outputs/train_config.yaml repeats that run.",
        groups=HELP_GROUPS,
        other_title="Trainer settings (the other Seq2SeqTrainingArguments fields, transformers 5)",
    )
    try:
        return parse_config(types, argv, parser=parser)
    except ValueError as error:  # from the Trainer's own checks, e.g. mismatched eval/save strategies
        raise ConfigError(f"invalid training settings: {' '.join(str(error).split())}") from None
