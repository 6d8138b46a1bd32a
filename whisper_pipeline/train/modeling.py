"""Whisper + LoRA: load the base model safely, attach a new or continued adapter, save what restores it.

Only the adapter is trained and saved: LoRA matrices on the attention projections and, with
`unfreeze_conv`, full copies of the encoder's two input convolutions (peft `modules_to_save`, without
which unfrozen non-LoRA weights would silently be missing from the adapter: peft #380).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from transformers import WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    is_bitsandbytes_available,
)
from transformers.utils import logging as hf_logging

from whisper_pipeline.constants import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_SAFETENSORS, PRECISIONS
from whisper_pipeline.errors import ConfigError, ModelError

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISION_LABELS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with a grad scaler", "fp32": "fp32"}
# torch.cpu.get_capabilities() keys of native bf16 matrix multiplication, and their names
NATIVE_BF16 = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}
NO_NATIVE_BF16 = "no native bf16 (AMX or AVX512-BF16)"
CONV_MODULES = ("conv1", "conv2")  # the encoder's input convolutions (the decoder has none)
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
PEFT_PREFIX = "base_model.model."  # peft's prefix of every saved key, before the base model's own path
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, e.g. openai/whisper-small
# What a Whisper repository on the hub needs here: config, processor files and safetensors weights (not
# the pickle, TensorFlow and Flax copies beside them).
HUB_FILES = ["*.json", "*.txt", "*.safetensors"]


def resolve_model_dir(model: str | Path, *, flag: str = "--model") -> Path:
    """The local folder of `model`: a folder as given, or a Hugging Face Hub id (owner/name) fetched into the
    hub's cache where a hub is reachable. Checked before the cache is opened, so that a folder that does not
    exist is reported as such, not as a cache made with another tokenizer."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{flag} {model} is a file, not a model folder")
    if not HUB_ID.fullmatch(str(model)) or str(model).startswith("."):
        raise ModelError(f"{flag} {model}: the folder does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), allow_patterns=HUB_FILES))
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"{flag} {model}: no such folder, and not downloadable as a Hugging Face Hub model ({first_line})"
        ) from None


def resolve_precision(requested: str, *, cuda: bool | None = None) -> str:
    """auto -> bf16 on a GPU that has it, fp16 (with a grad scaler) on an older GPU, fp32 on CPU: inference's
    choice (training's, training_precision, also takes bf16 on CPUs with native bf16)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if requested == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16" and not cuda:
        raise ConfigError("--precision fp16 needs a CUDA GPU (its grad scaler); use fp32 or bf16 on CPU")
    return requested


def native_bf16(capabilities: Mapping[str, Any]) -> str | None:
    """The feature that multiplies bf16 natively (AMX, AVX512-BF16) among a CPU's capabilities (the keys of
    torch.cpu.get_capabilities()), or None: without one, bf16 matrix products go through conversions to
    fp32 and are slower than fp32 (benchmarks/cpu_precision.py)."""
    return next((name for key, name in NATIVE_BF16.items() if capabilities.get(key)), None)


def training_precision(
    requested: str, *, cuda: bool | None = None, capabilities: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """Training's precision, and why (the summary says it). On CPU, auto is bf16 autocast (base weights in
    bf16, trained weights fp32) only where the CPU multiplies bf16 natively: a whisper-base step was reported
    twice as fast as fp32 there, while without it bf16 is 13 times slower (2 AVX2 cores) for the same
    transcripts. `capabilities`: those of torch.cpu.get_capabilities(), this CPU's by default."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    precision = resolve_precision(requested, cuda=cuda)
    native = (
        None if cuda else native_bf16(torch.cpu.get_capabilities() if capabilities is None else capabilities)
    )
    if requested != "auto":
        why = f"--precision {requested}"
        if precision == "bf16" and not cuda and not native:
            why += f"; this CPU has {NO_NATIVE_BF16}, so it is slower than fp32"
    elif cuda:
        why = "this GPU supports bf16" if precision == "bf16" else "this GPU has no bf16"
    else:
        precision = "bf16" if native else "fp32"
        why = f"this CPU has {native or NO_NATIVE_BF16}"
    return precision, f"{PRECISION_LABELS[precision]}: {why}"


def check_quantization(load_in_8bit: bool, load_in_4bit: bool, *, cuda: bool | None = None) -> str | None:
    """'8bit', '4bit' or None; bitsandbytes quantization runs only on CUDA GPUs."""
    if load_in_8bit and load_in_4bit:
        raise ConfigError("--load-in-8bit and --load-in-4bit are exclusive: choose one")
    if not (load_in_8bit or load_in_4bit):
        return None
    flag = "--load-in-8bit" if load_in_8bit else "--load-in-4bit"
    if not (torch.cuda.is_available() if cuda is None else cuda):
        raise ConfigError(f"{flag} needs a CUDA GPU (bitsandbytes); on CPU train without it (fp32)")
    if not is_bitsandbytes_available():
        raise ConfigError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes")
    return "8bit" if load_in_8bit else "4bit"


def _weights_format(directory: Path, safe_names: Sequence[str], pickle_names: Sequence[str]) -> str | None:
    if any((directory / name).is_file() for name in safe_names):
        return "safetensors"
    if any((directory / name).is_file() for name in pickle_names):
        return "pickle"
    return None


def _refuse_pickle(what: str, directory: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise ModelError(
            f"{what} {directory} holds only a pickle checkpoint, which can run arbitrary code when loaded: "
            "convert it to safetensors, or pass --allow-pickle if you trust its source"
        )


def load_base_model(
    model_dir: Path, *, precision: str, allow_pickle: bool = False, quantization: str | None = None
) -> WhisperForConditionalGeneration:
    """The pretrained Whisper from a local directory, frozen weights in the compute dtype."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"--model {model_dir} is not a Whisper model directory (no config.json); build the demo's with "
            "`python -m whisper_pipeline.demo.pretrained --output model` or point --model at yours"
        )
    model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != "whisper":
        raise ModelError(f"--model {model_dir} holds a {model_type} model, not Whisper")
    weights = _weights_format(
        model_dir, (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    )
    if weights is None:
        raise ModelError(f"--model {model_dir} has no weights ({SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME})")
    if weights == "pickle":
        _refuse_pickle("--model", model_dir, allow_pickle)
    kwargs: dict = {"dtype": TORCH_DTYPES[precision]}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantization == "8bit",
            load_in_4bit=quantization == "4bit",
            bnb_4bit_compute_dtype=TORCH_DTYPES[precision],
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        with without_progress_bars():
            model = WhisperForConditionalGeneration.from_pretrained(
                str(model_dir), use_safetensors=weights == "safetensors", local_files_only=True, **kwargs
            )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot load --model {model_dir}: {first_line}") from None
    return model


def limit_new_tokens(model: WhisperForConditionalGeneration, max_new_tokens: int | None) -> None:
    """Generate at most `max_new_tokens` per 30 s window (None: Whisper's own limit, from its
    generation_config.json), set as the config's max_length: Whisper's generate counts that from after the
    decoder's initial tokens (start, language, task, any prompt), capped at the 448 positions. A
    max_new_tokens argument instead would be a second limit next to the max_length every config ends up
    with (Whisper's 448, or generate's default 20), which generate warns about on every call."""
    if max_new_tokens is not None:
        model.generation_config.max_length = max_new_tokens
        model.generation_config.max_new_tokens = None


@contextmanager
def without_progress_bars() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar for every model it loads (and "Writing model shards" for
    every one it saves), a fraction of a second here, in the middle of the commands' own output: its
    progress bars off for the load or save, as they were after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# transformers 5.23 to 5.25 (generation_whisper.py, "See PR #48108"): Whisper's own generate passes
# suppress_tokens and begin_suppress_tokens next to the generation_config it built, and generate() then calls
# that deprecated, once per process, whatever the caller did (no argument of ours avoids it). Only that
# exact notice is dropped.
_UPSTREAM_SUPPRESS_NOTICE = re.compile(
    r"Passing `generation_config` together with generation-related arguments="
    r"\(\{'(begin_)?suppress_tokens', '(begin_)?suppress_tokens'\}\) is deprecated"
)


def _not_upstream_suppress_notice(record: logging.LogRecord) -> bool:
    return not _UPSTREAM_SUPPRESS_NOTICE.match(record.getMessage())


# every command that generates loads its model through this module
logging.getLogger("transformers.generation.utils").addFilter(_not_upstream_suppress_notice)


def configure_generation(model: WhisperForConditionalGeneration, *, language: str, task: str) -> None:
    """Force language and task in the generation config, so evaluation transcribes as the labels read.

    transformers 5 takes them as `generate(language=..., task=...)` settings of the generation config;
    `forced_decoder_ids` is deprecated and would be ignored next to them, so it is cleared.
    """
    config = model.generation_config
    missing = [
        name for name in ("lang_to_id", "task_to_id", "no_timestamps_token_id") if not hasattr(config, name)
    ]
    if missing:
        raise ModelError(
            f"the model's generation_config.json lacks {', '.join(missing)}: not a multilingual Whisper "
            "generation config (language and task cannot be forced)"
        )
    if f"<|{language}|>" not in config.lang_to_id:
        raise ConfigError(f"--language {language!r} is not a language of this model (<|{language}|>)")
    if task not in config.task_to_id:
        raise ConfigError(f"--task must be one of {', '.join(sorted(config.task_to_id))}, got {task!r}")
    config.language = language
    config.task = task
    config.forced_decoder_ids = None
    config.use_cache = True  # the Trainer turns the model's cache off for training; generation keeps it


def configure_spec_augment(
    model: WhisperForConditionalGeneration,
    *,
    enabled: bool,
    mask_time_prob: float | None,
    mask_feature_prob: float | None,
) -> None:
    """Whisper's own SpecAugment (`apply_spec_augment`): masks time steps and mel bins, in training only."""
    model.config.apply_spec_augment = enabled
    if mask_time_prob is not None:
        model.config.mask_time_prob = mask_time_prob
    if mask_feature_prob is not None:
        model.config.mask_feature_prob = mask_feature_prob


def prepare_for_training(model: WhisperForConditionalGeneration, *, gradient_checkpointing: bool) -> None:
    """Quantized: peft's k-bit preparation. Otherwise only what checkpointing needs (never the k-bit one,
    which would upcast a non-quantized model to fp32: peft #951).

    With frozen inputs, reentrant checkpointing gives LoRA layers no gradient (peft #810): the hooks of
    `enable_input_require_grads` (conv1 output and token embeddings) make it work whatever the
    checkpointing kwargs; transformers 5 also defaults to non-reentrant checkpointing.

    Whisper's forward() takes **kwargs but averages its loss per batch, ignoring `num_items_in_batch`: left
    to its signature, the Trainer would assume a loss summed over the whole accumulated, all-process batch
    and skip its own averaging, so logged losses and gradients would grow with accumulation steps and
    processes (transformers #37766). `accepts_loss_kwargs = False` tells it the truth.
    """
    model.accepts_loss_kwargs = False
    if getattr(model, "is_quantized", False):
        prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.enable_input_require_grads()


def new_adapter(
    model: WhisperForConditionalGeneration,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    unfreeze_conv: bool,
) -> PeftModel:
    """A fresh LoRA adapter (B = 0: the model starts out exactly as the base model)."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(CONV_MODULES) if unfreeze_conv else None,
        bias="none",
    )
    return _upcast_trainable(get_peft_model(model, config))


def continue_adapter(
    model: WhisperForConditionalGeneration,
    adapter_dir: Path,
    *,
    unfreeze_conv: bool,
    allow_pickle: bool = False,
    is_trainable: bool = True,
) -> PeftModel:
    """A saved adapter on `model`, trainable by default; refused when it was made for another model.

    Its saved convolutions (if any) are restored and stay trainable; `unfreeze_conv` adds them to an
    adapter saved without them. An adapter saved with task_type SEQ_2_SEQ_LM (common in tutorials) is loaded
    as a plain PeftModel: PeftModelForSeq2SeqLM passes `input_ids` to forward(), which Whisper rejects.
    """
    adapter_dir = Path(adapter_dir)
    config = check_adapter_matches(model, adapter_dir, allow_pickle=allow_pickle)
    config.task_type = None
    if unfreeze_conv:
        config.modules_to_save = sorted({*(config.modules_to_save or ()), *CONV_MODULES})
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable, config=config)
    return _upcast_trainable(peft_model) if is_trainable else peft_model


def adapter_trains_conv(model: PeftModel) -> bool:
    """Whether the active adapter trains and saves the encoder convolutions."""
    return set(CONV_MODULES) <= set(model.peft_config[model.active_adapter].modules_to_save or ())


def _upcast_trainable(model: PeftModel) -> PeftModel:
    """Trainable weights in fp32 whatever the base dtype: fp16 gradients cannot be unscaled, and bf16
    weights lose small optimizer updates. peft does it for LoRA matrices, not for `modules_to_save`."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def check_adapter_matches(
    model: WhisperForConditionalGeneration, adapter_dir: Path, *, allow_pickle: bool = False
) -> LoraConfig:
    """The adapter's LoRA config, after checking it was made for this architecture and vocabulary.

    Every saved weight must name a module of `model` with the same shapes (d_model, layer count, vocabulary
    of any saved embedding), and a tokenizer saved with the adapter must have the model's vocabulary.
    """
    weights = check_adapter_files(adapter_dir)
    config = LoraConfig.from_pretrained(str(adapter_dir))
    base = config.base_model_name_or_path or "unknown"
    base_class = (config.auto_mapping or {}).get("base_model_class")
    if base_class and base_class != type(model).__name__:
        raise ModelError(f"--adapter {adapter_dir} was made for a {base_class} (base {base}), not Whisper")
    if weights == "pickle":
        _refuse_pickle("--adapter", adapter_dir, allow_pickle)
    else:
        _check_adapter_shapes(model, adapter_dir, base)
    _check_adapter_vocabulary(model, adapter_dir, base)
    return config


def check_adapter_files(adapter_dir: Path) -> str:
    """The adapter folder exists with a config and weights (their format: safetensors or pickle): what can
    be checked before any model is loaded."""
    if not adapter_dir.is_dir():
        raise ModelError(f"--adapter {adapter_dir}: no such directory")
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ModelError(f"--adapter {adapter_dir} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    weights = _weights_format(adapter_dir, (ADAPTER_SAFETENSORS,), (ADAPTER_PICKLE,))
    if weights is None:
        raise ModelError(f"--adapter {adapter_dir} has no weights ({ADAPTER_SAFETENSORS})")
    return weights


def _check_adapter_shapes(model: WhisperForConditionalGeneration, adapter_dir: Path, base: str) -> None:
    modules = dict(model.named_modules())
    mismatch = f"--adapter {adapter_dir} does not fit --model {model.name_or_path} (adapter base: {base})"
    with safe_open(str(adapter_dir / ADAPTER_SAFETENSORS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
            shape = tuple(weights.get_slice(key).get_shape())
            parts = key.removeprefix(PEFT_PREFIX).split(".")
            # `<module>.lora_A.weight` belongs to <module>; `<module>.weight` (modules_to_save) too.
            cut = next((i for i, part in enumerate(parts) if part.startswith("lora_")), len(parts) - 1)
            path, parameter = ".".join(parts[:cut]), parts[cut]
            module = modules.get(path)
            if module is None:
                raise ModelError(f"{mismatch}: the model has no module {path} (another size of Whisper?)")
            expected = _expected_shape(module, parameter, shape)
            if expected is not None and expected != shape:
                what = "vocabulary" if isinstance(module, torch.nn.Embedding) else "dimensions"
                raise ModelError(
                    f"{mismatch}: {what} differ at {key}, {shape} in the adapter, {expected} in the model"
                )


def _expected_shape(
    module: torch.nn.Module, parameter: str, shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The shape `module` implies for an adapter tensor (the rank dimension taken from the tensor)."""
    if parameter == "lora_A" and isinstance(module, torch.nn.Linear):
        return (shape[0], module.in_features)
    if parameter == "lora_B" and isinstance(module, torch.nn.Linear):
        return (module.out_features, shape[1])
    if parameter == "lora_embedding_A" and isinstance(module, torch.nn.Embedding):
        return (shape[0], module.num_embeddings)
    if parameter == "lora_embedding_B" and isinstance(module, torch.nn.Embedding):
        return (module.embedding_dim, shape[1])
    own = getattr(module, parameter, None)
    return tuple(own.shape) if isinstance(own, torch.Tensor) else None


def _check_adapter_vocabulary(model: WhisperForConditionalGeneration, adapter_dir: Path, base: str) -> None:
    """A tokenizer saved beside the adapter (ours always is) must be the model's: token ids must agree."""
    if not (adapter_dir / "tokenizer.json").is_file() or not Path(model.name_or_path).is_dir():
        return
    adapter_vocab = WhisperTokenizerFast.from_pretrained(str(adapter_dir)).get_vocab()
    model_vocab = WhisperTokenizerFast.from_pretrained(model.name_or_path).get_vocab()
    if adapter_vocab != model_vocab:
        raise ModelError(
            f"--adapter {adapter_dir} was trained with another vocabulary ({len(adapter_vocab)} tokens, base "
            f"{base}) than --model {model.name_or_path} ({len(model_vocab)} tokens)"
        )


def save_adapter(model: PeftModel, processor: WhisperProcessor, directory: Path) -> None:
    """Adapter weights (safetensors) + adapter config + processor files: all a later stage needs besides the
    base model. Deliberately not `Trainer.save_model`, which adds a pickled training_args.bin.

    Tokenizer and feature extractor are saved separately, in the base model directory's layout
    (preprocessor_config.json), which transformers 5's WhisperProcessor.save_pretrained would nest
    in processor_config.json: the adapter's processor files then fingerprint like the model's."""
    directory = Path(directory)
    model.save_pretrained(str(directory), safe_serialization=True)
    processor.tokenizer.save_pretrained(str(directory))
    processor.feature_extractor.save_pretrained(str(directory))


def load_trained(
    model_dir: Path,
    adapter_dir: Path,
    *,
    precision: str = "fp32",
    merge: bool = False,
    allow_pickle: bool = False,
) -> WhisperForConditionalGeneration | PeftModel:
    """Base + saved adapter for inference (convolutions restored); `merge` folds LoRA into plain weights."""
    model = load_base_model(Path(model_dir), precision=precision, allow_pickle=allow_pickle)
    peft_model = continue_adapter(
        model, Path(adapter_dir), unfreeze_conv=False, allow_pickle=allow_pickle, is_trainable=False
    )
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model
