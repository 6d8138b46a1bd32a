"""From adapter to the models people deploy: a merged Hugging Face Whisper, and CTranslate2 (faster-whisper).

    python -m whisper_pipeline.export merge --model ./model --adapter outputs/adapter --output outputs/merged
    python -m whisper_pipeline.export ctranslate2 --model outputs/merged --output outputs/ct2 \\
        [--quantization int8_float16|int8|float16|float32]

Both write into a temporary sibling folder and rename it into place: an interrupted export never leaves a
half-written model where a runtime would load it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from whisper_pipeline.config import parse_config
from whisper_pipeline.errors import ConfigError, ModelError, exit_on_user_error
from whisper_pipeline.modeling import configure_generation, load_trained

QUANTIZATIONS = ("int8_float16", "int8", "float16", "int8_float32", "float32")
# What faster-whisper reads beside model.bin: the tokenizer and the mel-bin count of the feature extractor.
CT2_COPIED_FILES = ("tokenizer.json", "preprocessor_config.json")


@dataclass
class MergeArguments:
    """Settings of `export merge`."""

    model: str = field(default="./model", metadata={"help": "Base Whisper directory."})
    adapter: str = field(default="outputs/adapter", metadata={"help": "Trained LoRA adapter."})
    output: str = field(default="outputs/merged", metadata={"help": "Where the merged model goes."})
    language: str | None = field(
        default=None, metadata={"help": "Language forced by generation_config (default: the training's)."}
    )
    task: str | None = field(
        default=None, metadata={"help": "transcribe or translate (default: the training's)."}
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Accept pickle checkpoints (trusted only)."})


@dataclass
class CTranslate2Arguments:
    """Settings of `export ctranslate2`."""

    model: str = field(default="outputs/merged", metadata={"help": "A merged (plain) Whisper directory."})
    output: str = field(default="outputs/ct2", metadata={"help": "Where the CTranslate2 model goes."})
    quantization: str = field(
        default="int8_float16",
        metadata={
            "help": "Weight type: int8_float16 (GPU default; CTranslate2 runs it as int8 on CPU), int8, "
            "float16, int8_float32 or float32 (exact).",
            "choices": list(QUANTIZATIONS),
        },
    )


def write_atomically(output: Path, write: Callable[[Path], None]) -> None:
    """`write(folder)` into a temporary sibling, then swap it in for `output` (any old one is replaced)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write(temporary)
        retired = output.with_name(f".{output.name}.old-{os.getpid()}")
        if output.exists():
            os.replace(output, retired)
        os.replace(temporary, output)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def training_language_and_task(adapter_dir: Path) -> tuple[str | None, str | None]:
    """The language and task the adapter was trained for, from train_config.yaml beside it (if any)."""
    config_path = adapter_dir.parent / "train_config.yaml"
    try:
        resolved = yaml.safe_load(config_path.read_text(encoding="utf-8"))["resolved"]
        return resolved.get("language"), resolved.get("task")
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None, None


def merge(args: MergeArguments) -> Path:
    """Base + adapter folded into plain weights (convolutions included), with processor and generation
    config: a directory any Whisper runtime loads without peft."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    adapter_dir = Path(args.adapter)
    model = load_trained(
        Path(args.model), adapter_dir, precision="fp32", merge=True, allow_pickle=args.allow_pickle
    )
    trained_language, trained_task = training_language_and_task(adapter_dir)
    language = args.language or trained_language
    task = args.task or trained_task or "transcribe"
    if language:
        configure_generation(model, language=language, task=task)
    processor_dir = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else Path(args.model)

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder), safe_serialization=True)
        WhisperTokenizerFast.from_pretrained(str(processor_dir)).save_pretrained(str(folder))
        WhisperFeatureExtractor.from_pretrained(str(processor_dir)).save_pretrained(str(folder))

    write_atomically(Path(args.output), write)
    return Path(args.output)


def to_ctranslate2(args: CTranslate2Arguments) -> Path:
    """CTranslate2's own Transformers converter: the format faster-whisper loads."""
    import ctranslate2

    model_dir = Path(args.model)
    if (model_dir / "adapter_config.json").is_file():
        raise ModelError(f"--model {model_dir} is an adapter: merge it first (`export merge`)")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"--model {model_dir} is not a Whisper model directory (no config.json)")
    missing = [name for name in CT2_COPIED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ModelError(f"--model {model_dir} lacks {', '.join(missing)} (faster-whisper needs them)")
    if args.quantization not in QUANTIZATIONS:
        raise ConfigError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}")

    def write(folder: Path) -> None:
        converter = ctranslate2.converters.TransformersConverter(
            str(model_dir), copy_files=list(CT2_COPIED_FILES)
        )
        converter.convert(str(folder), quantization=args.quantization, force=True)

    write_atomically(Path(args.output), write)
    return Path(args.output)


COMMANDS = {"merge": (MergeArguments, merge), "ctranslate2": (CTranslate2Arguments, to_ctranslate2)}


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(f"usage: python -m whisper_pipeline.export {{{'|'.join(COMMANDS)}}} [--flags]")
    arguments_type, command = COMMANDS[argv[0]]
    (args,) = parse_config((arguments_type,), argv[1:])
    output = command(args)
    print(f"{argv[0]}: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
