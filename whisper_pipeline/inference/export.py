"""From adapter to the models people deploy: a merged Hugging Face Whisper, and CTranslate2 (faster-whisper).

    python -m whisper_pipeline.inference.export merge --model ./model --adapter outputs/adapter \\
        --output outputs/merged [--language vi] [--task transcribe]
    python -m whisper_pipeline.inference.export ctranslate2 --model outputs/merged --output outputs/ct2 \\
        [--quantization int8_float16|int8|float16|int8_float32|float32]

`merge` folds LoRA (and the trained convolutions of `modules_to_save`) into plain weights: a safetensors model
any Whisper runtime loads without peft, with the tokenizer, feature extractor and a generation config that
forces the language and task the adapter was trained for (read from train_config.yaml beside the adapter).

`ctranslate2` runs CTranslate2's own converter. The default int8_float16 suits GPUs and still loads on a CPU:
CTranslate2 converts weights at load time to what the device supports (int8_float16 runs as int8_float32 on
CPU), so one export serves both; float32 reproduces the merged model's transcripts exactly.

Both build the model in a temporary sibling folder and rename it into place: an interrupted export never
leaves a half-written model where a runtime would load it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from whisper_pipeline.atomic import write_directory_atomically
from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.errors import ConfigError, ModelError, exit_on_user_error
from whisper_pipeline.prepare.features import PREPROCESSOR_CONFIG, feature_extractor_settings
from whisper_pipeline.train.modeling import configure_generation, load_trained, without_progress_bars
from whisper_pipeline.train.outputs import trained_language_and_task
from whisper_pipeline.writable import check_writable

QUANTIZATIONS = ("int8_float16", "int8", "float16", "int8_float32", "float32")
# What faster-whisper reads beside model.bin: the tokenizer, copied, and the feature extractor's settings
# (its mel-bin count), written as preprocessor_config.json wherever the merged model holds them.
CT2_TOKENIZER = "tokenizer.json"
# Not read by faster-whisper: kept so `transcribe` knows the language the model was exported for.
CT2_OPTIONAL_FILES = ("generation_config.json",)


@dataclass
class MergeArguments:
    """`export merge`: the LoRA adapter (and any trained convolutions) folded into the base model, a plain
    Whisper in safetensors that runs without peft."""

    model: str = field(default="./model", metadata={"help": "Base Whisper directory."})
    adapter: str = field(default="outputs/adapter", metadata={"help": "Trained LoRA adapter."})
    output: str = field(default="outputs/merged", metadata={"help": "Where the merged model goes."})
    language: str | None = field(
        default=None,
        metadata={"help": "Language the generation config forces (default: the adapter's training's)."},
    )
    task: str | None = field(
        default=None, metadata={"help": "transcribe or translate (default: the training's, else transcribe)."}
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Accept pickle checkpoints (trusted only)."})


@dataclass
class CTranslate2Arguments:
    """`export ctranslate2`: a merged model converted to CTranslate2, for faster-whisper."""

    model: str = field(default="outputs/merged", metadata={"help": "A merged (plain) Whisper directory."})
    output: str = field(default="outputs/ct2", metadata={"help": "Where the CTranslate2 model goes."})
    quantization: str = field(
        default="int8_float16",
        metadata={
            "help": "Weight type: int8_float16 (GPU; loads as int8_float32 on CPU), int8, float16, "
            "int8_float32 or float32 (exact).",
            "choices": list(QUANTIZATIONS),
        },
    )


def _check_output(output: Path, inputs: Sequence[Path]) -> None:
    """Replacing `output` must not destroy an input, or a folder that is not a model export; and it must
    be writable."""
    check_writable(output, "--output")
    resolved = output.resolve()
    for source in inputs:
        if resolved == source.resolve() or resolved in source.resolve().parents:
            raise ConfigError(f"--output {output} would replace its own input {source}")
    is_export = (output / "config.json").is_file()
    if output.exists() and not is_export and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not a model folder: remove it or choose another")


def merge(args: MergeArguments) -> Path:
    """Base + adapter folded into plain fp32 weights (convolutions included), with processor files in the
    base model's layout and a generation config forcing the training's language and task."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    model_dir, adapter_dir, output = Path(args.model), Path(args.adapter), Path(args.output)
    trained_language, trained_task = trained_language_and_task(adapter_dir)
    language = args.language or trained_language
    task = args.task or trained_task or "transcribe"
    if args.task and not language:
        raise ConfigError("--task needs a language: pass --language (the adapter's training is unknown)")
    _check_output(output, [model_dir, adapter_dir])
    model = load_trained(model_dir, adapter_dir, precision="fp32", merge=True, allow_pickle=args.allow_pickle)
    if language:
        configure_generation(model, language=language, task=task)
    # The adapter's own copy of the processor is the one it was trained with (save_adapter writes it).
    processor_dir = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else model_dir

    def write(folder: Path) -> None:
        with without_progress_bars():
            model.save_pretrained(str(folder), safe_serialization=True)
        WhisperTokenizerFast.from_pretrained(str(processor_dir)).save_pretrained(str(folder))
        WhisperFeatureExtractor.from_pretrained(str(processor_dir)).save_pretrained(str(folder))

    write_directory_atomically(output, write)
    return output


def to_ctranslate2(args: CTranslate2Arguments) -> Path:
    """CTranslate2's Transformers converter, plus the files faster-whisper reads beside model.bin."""
    import ctranslate2

    model_dir, output = Path(args.model), Path(args.output)
    if args.quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}")
    if (model_dir / "adapter_config.json").is_file():
        raise ModelError(f"--model {model_dir} is an adapter: merge it first (`export merge`)")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"--model {model_dir} is not a Whisper model directory (no config.json)")
    if not any(model_dir.glob("model*.safetensors")):
        raise ModelError(
            f"--model {model_dir} has no safetensors weights (a merged model has model.safetensors)"
        )
    if not (model_dir / CT2_TOKENIZER).is_file():
        raise ModelError(f"--model {model_dir} lacks {CT2_TOKENIZER} (faster-whisper needs it)")
    _, feature_extractor = feature_extractor_settings(model_dir)  # faster-whisper needs them too
    _check_output(output, [model_dir])
    copied = [CT2_TOKENIZER, *(name for name in CT2_OPTIONAL_FILES if (model_dir / name).is_file())]

    def write(folder: Path) -> None:
        converter = ctranslate2.converters.TransformersConverter(str(model_dir), copy_files=copied)
        with without_progress_bars():  # the converter loads the model with transformers' from_pretrained
            converter.convert(str(folder), quantization=args.quantization, force=True)
        # faster-whisper reads only this file, flat: a transformers 5 processor_config.json is not read
        (folder / PREPROCESSOR_CONFIG).write_text(json.dumps(feature_extractor, indent=2), encoding="utf-8")

    write_directory_atomically(output, write)
    return output


COMMANDS = {"merge": (MergeArguments, merge), "ctranslate2": (CTranslate2Arguments, to_ctranslate2)}
HELP_GROUPS = {
    "merge": {"inputs": ("model", "adapter", "allow_pickle"), "outputs": ("output", "language", "task")},
    "ctranslate2": {"inputs": ("model",), "outputs": ("output", "quantization")},
}
PROG = as_typed("whisper-export", f"python -m {__spec__.name}")
USAGE = f"usage: {PROG} {{{'|'.join(COMMANDS)}}} [--flags]"
HELP = f"""{USAGE}

From a trained adapter to the models people deploy.

commands:
  merge        fold the LoRA adapter (and any trained convolutions) into the base model: a plain Hugging
               Face Whisper in safetensors, with the processor files and a generation config forcing the
               training's language and task; runs without peft
  ctranslate2  convert a merged model to CTranslate2 for faster-whisper (--quantization int8_float16 by
               default: int8 weights, float16 on GPU, float32 on CPU; float32 is exact)

`COMMAND --help` lists a command's flags."""


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"{USAGE} (--help describes the commands)")
    arguments_type, command = COMMANDS[argv[0]]
    parser = PipelineArgumentParser(
        (arguments_type,),
        prog=f"{PROG} {argv[0]}",
        description=f"{' '.join(arguments_type.__doc__.split())} {CONFIG_NOTE}",
        groups=HELP_GROUPS[argv[0]],
    )
    (args,) = parse_config((arguments_type,), argv[1:], parser=parser)
    output = command(args)
    print(f"{argv[0]}: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
