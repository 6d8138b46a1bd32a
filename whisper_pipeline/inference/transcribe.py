"""Transcribe audio with a merged Whisper, base + adapter, or a CTranslate2 export (faster-whisper).

    python -m whisper_pipeline.inference.transcribe AUDIO... --model outputs/merged|outputs/ct2
        [--adapter DIR] [--language vi] [--format text|json|srt] [--output FILE]

AUDIO: local files, s3:// URIs (S3 settings from the environment or .env) or http(s) URLs (presigned ones
too: fetched as prepare fetches them, with AWS_CA_BUNDLE, retries and a size bound; shown without their
query string), in any format the pipeline decodes. --model is a CTranslate2 directory (model.bin: run by
faster-whisper) or a Hugging Face one (config.json + safetensors: run by transformers, with --adapter
applied if given).

Audio longer than 30 s is transcribed the way OpenAI's Whisper does it, in both runtimes: window after window
of 30 s, each starting where the last complete segment of the previous one ended, every segment with its
timestamps (transformers' own long-form generate, not the ASR pipeline's overlapping chunks, which it calls
experimental for Whisper). Both start greedy (--beam-size for beam search), without conditioning on the
previous window or a voice-activity filter, and drop a window judged without speech by OpenAI's rule
(longform.NO_SPEECH_THRESHOLD). faster-whisper keeps its own fallback, as deployed: a window whose text loops
is decoded again at rising temperatures, seeded so a run repeats (see FASTER_WHISPER_DECODING);
transformers stays at temperature 0. Their transcripts differ where the fallback runs, where the
CTranslate2 export is quantized, or where faster-whisper's zero-padded log-mel of a short last window tips
a near-tie.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import numpy as np
from tqdm.auto import tqdm

from whisper_pipeline.cli import PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import N_FRAMES, PRECISIONS, SAMPLE_RATE
from whisper_pipeline.errors import ConfigError, ModelError, PipelineError, exit_on_user_error
from whisper_pipeline.inference.longform import (
    LOG_PROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    generate_segments,
    within_recording,
)
from whisper_pipeline.prepare.audio import AudioDecodeError, decode_audio
from whisper_pipeline.prepare.http import HttpAccess, redact
from whisper_pipeline.prepare.sources import (
    LOCAL_FILES_PREFIX,
    AudioAccess,
    AudioRef,
    AudioSourceError,
    S3Access,
    S3Settings,
    http_settings,
    load_env_file,
    local_files_path,
)
from whisper_pipeline.train.outputs import trained_language_and_task
from whisper_pipeline.writable import check_writable

FORMATS = ("text", "json", "srt", "vtt")
EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}
TASKS = ("transcribe", "translate")
PROG = as_typed("whisper-transcribe", f"python -m {__spec__.name}")
USAGE = f"usage: {PROG} AUDIO... --model DIR [--flags]"


@dataclass
class TranscribeArguments:
    """Settings of `python -m whisper_pipeline.inference.transcribe` (the audio first, before any flag)."""

    model: str = field(
        default="outputs/merged", metadata={"help": "Merged or base Whisper, or a CTranslate2 export."}
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter on a Hugging Face --model."})
    language: str | None = field(
        default=None,
        metadata={
            "help": "Language code (default: the one the model/adapter was trained for, else detected)."
        },
    )
    task: str = field(default="transcribe", metadata={"help": "transcribe or translate."})
    format: str = field(
        default="text", metadata={"help": "text, json, srt or vtt (subtitles).", "choices": list(FORMATS)}
    )
    output: str | None = field(default=None, metadata={"help": "Write here instead of standard output."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Write one file per input here, named after it (call.mp3 -> call.srt)."},
    )
    initial_prompt: str | None = field(
        default=None, metadata={"help": "Text the first window is conditioned on (names, spellings)."}
    )
    vad_filter: bool = field(
        default=False,
        metadata={"help": "faster-whisper: skip stretches without speech (Silero VAD) before decoding."},
    )
    word_timestamps: bool = field(
        default=False, metadata={"help": "faster-whisper: each word's start and end (in --format json)."}
    )
    beam_size: int = field(default=1, metadata={"help": "1: greedy decoding."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest text of one 30 s window in tokens (default: Whisper's limit)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Files decoded at once (Hugging Face models)."})
    precision: str = field(
        default="auto",
        metadata={
            "help": "Hugging Face models: auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16, fp32.",
            "choices": PRECISIONS,
        },
    )
    local_files_root: str | None = field(
        default=None, metadata={"help": "Root of Label Studio /data/local-files/ paths."}
    )

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}")
        if self.beam_size < 1 or self.batch_size < 1:
            raise ConfigError("--beam-size and --batch-size must be positive")
        if self.output and self.output_dir:
            raise ConfigError("give --output (one file) or --output-dir (a file per input), not both")


HELP_GROUPS = {
    "model": ("model", "adapter", "precision", "batch_size"),
    "decoding": (
        "language",
        "task",
        "initial_prompt",
        "beam_size",
        "max_new_tokens",
        "vad_filter",
        "word_timestamps",
    ),
    "audio": ("local_files_root",),
    "outputs": ("format", "output", "output_dir"),
}


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] | None = None  # with --word-timestamps
    # the mean log-probability of its tokens (faster-whisper: of its 30 s window's) and how many there are;
    # transformers gives them where asked (preannotate's confidence: `scored`)
    avg_logprob: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class Transcript:
    audio: str
    duration: float
    language: (
        str | None
    )  # forced or detected; None where the runtime does not say (detection in transformers)
    text: str
    segments: list[Segment]


Transcriber = Callable[[list[tuple[str, np.ndarray]]], list[Transcript]]


def is_ctranslate2(model_dir: Path) -> bool:
    return (model_dir / "model.bin").is_file()


def exported_language(model_dir: Path, adapter_dir: Path | None) -> str | None:
    """The language the model was made for: the adapter's training, else the generation config's (a merged
    model's; `export ctranslate2` copies it beside model.bin)."""
    if adapter_dir is not None:
        return trained_language_and_task(adapter_dir)[0]
    try:
        return json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8")).get("language")
    except (OSError, ValueError, AttributeError):
        return None


def shown_uri(uri: str) -> str:
    """An input as transcripts and messages name it: a URL without its query string (presigned
    signatures, tokens) or credentials."""
    return redact(uri) if uri.startswith(("http://", "https://")) else uri


def resolve_inputs(uris: Sequence[str], local_files_root: Path | None) -> tuple[list[AudioRef], AudioAccess]:
    """The command's inputs: a relative path is a local file (not a bare S3 key, as in an export)."""
    settings = S3Settings.from_env(os.environ)
    access = AudioAccess(S3Access(settings), HttpAccess(http_settings(settings)), local_files_root)
    local = [os.path.abspath(uri) if "://" not in uri and not uri.startswith("/") else uri for uri in uris]
    return locate_inputs(local, access), access


def locate_inputs(locations: Sequence[str], access: AudioAccess) -> list[AudioRef]:
    """Every input located and checked before any model loads: a missing one is a one-line error."""
    refs = []
    for location in locations:
        try:
            ref = access.resolve(location)
            access.stat(ref)
        except AudioSourceError as error:
            raise PipelineError(f"cannot read {error}") from None
        refs.append(ref)
    return refs


def read_audio(
    uris: Sequence[str], refs: Sequence[AudioRef], access: AudioAccess
) -> Iterator[tuple[str, np.ndarray]]:
    """Decoded one at a time: many long recordings never sit in memory together. Each under its `uri` as
    given (the caller's key); messages name it as `shown_uri` does."""
    for uri, ref in zip(uris, refs, strict=True):
        try:
            yield uri, decode_audio(access.read(ref), name=shown_uri(uri))
        except (AudioSourceError, AudioDecodeError) as error:
            raise PipelineError(f"cannot read {error}") from None


# faster-whisper decoding as users deploy it: its defaults (greedy at temperature 0, then sampling at
# rising temperatures where a window's text loops, compression ratio over 2.4, or averages a log-probability
# under -1; OpenAI's no-speech rule), except two: no conditioning on the previous window's text (a loop
# would carry on into the next window) and no voice-activity filter unless asked. The fallback's sampling
# is seeded per file, so a run repeats. faster-whisper suppresses the no-speech token while decoding (as
# OpenAI's Whisper does): the rule is how it uses what the no-speech examples taught.
FASTER_WHISPER_DECODING = {
    "condition_on_previous_text": False,
    "vad_filter": False,
    "log_prob_threshold": LOG_PROB_THRESHOLD,
    "no_speech_threshold": NO_SPEECH_THRESHOLD,
}
FALLBACK_SEED = 0
CT2_TYPE_IDS = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # model.bin's, in order


def cpu_threads() -> int:
    """CTranslate2's threads on CPU: OMP_NUM_THREADS where set (as torch reads it), else every CPU this
    process may use (a container's limit, not the host's count)."""
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(requested) if requested.isdigit() and int(requested) > 0 else len(os.sched_getaffinity(0))


def saved_weight_type(model_bin: Path) -> str | None:
    """The weight type a CTranslate2 model was saved with (int8_float16, float32, ...), from the variable
    headers of its model.bin (ctranslate2.specs.model_spec writes: version, spec name, revision, then each
    variable's name, shape, type id and size); None where the file reads otherwise."""
    types: set[str] = set()
    try:
        with model_bin.open("rb") as model:

            def number(fmt: str) -> int:
                return struct.unpack(fmt, model.read(struct.calcsize(fmt)))[0]

            def string() -> str:
                return model.read(number("H"))[:-1].decode("utf-8")

            number("I")  # binary version
            string()  # spec name
            number("I")  # spec revision
            for _ in range(number("I")):
                name = string()
                for _ in range(number("B")):
                    number("I")
                type_id = number("B")
                model.seek(number("I"), os.SEEK_CUR)
                if not name.endswith("_scale"):  # int8 weights carry float32 scales whatever the type
                    types.add(CT2_TYPE_IDS[type_id])
    except (OSError, struct.error, UnicodeDecodeError, IndexError):
        return None
    floats = sorted(types & {"float32", "float16", "bfloat16"})
    if len(floats) != 1:
        return None
    return f"int8_{floats[0]}" if "int8" in types else floats[0]


def ctranslate2_compute_type(saved: str | None, cuda: bool, cpu_types: set[str]) -> str:
    """The export's own type where the device runs it; on a CPU without it the same weights with float32
    activations (int8_float16 -> int8_float32, float16 -> float32), as CTranslate2 converts them itself, minus
    the warning it prints each load."""
    if cuda or saved is None or saved in cpu_types:
        return "default"
    return "int8_float32" if saved.startswith("int8") else "float32"


def ctranslate2_transcriber(model_dir: Path, args: TranscribeArguments, language: str | None) -> Transcriber:
    """faster-whisper: the GPU when CTranslate2 sees one, the export's own weight type (float32 activations
    on a CPU without float16)."""
    import ctranslate2
    from faster_whisper import WhisperModel

    if not (model_dir / "tokenizer.json").is_file():
        raise ModelError(f"--model {model_dir} has no tokenizer.json (export it with `export ctranslate2`)")
    compute_type = ctranslate2_compute_type(
        saved_weight_type(model_dir / "model.bin"),
        cuda=ctranslate2.get_cuda_device_count() > 0,
        cpu_types=set(ctranslate2.get_supported_compute_types("cpu")),
    )
    try:
        model = WhisperModel(
            str(model_dir), device="auto", compute_type=compute_type, cpu_threads=cpu_threads()
        )
    except (RuntimeError, ValueError, OSError) as error:
        raise ModelError(f"cannot load --model {model_dir}: {_first_line(error)}") from None
    if language is not None and language not in model.supported_languages:
        raise ConfigError(f"--language {language!r} is not a language of this model")

    def transcribe(
        batch: list[tuple[str, np.ndarray]], max_new_tokens: int | None = args.max_new_tokens
    ) -> list[Transcript]:
        """`max_new_tokens`: of each window's text (evaluate caps utterances and whole recordings apart)."""
        transcripts = []
        for uri, samples in batch:
            options = {
                "language": language,
                "task": args.task,
                "beam_size": args.beam_size,
                "initial_prompt": args.initial_prompt,
                "word_timestamps": args.word_timestamps,
                "max_new_tokens": max_new_tokens,
            }
            decoding = {**FASTER_WHISPER_DECODING, "vad_filter": args.vad_filter}
            ctranslate2.set_random_seed(FALLBACK_SEED)
            segments, info = model.transcribe(samples, **options, **decoding)
            found = [
                Segment(
                    s.start,
                    s.end,
                    s.text,
                    [Word(w.start, w.end, w.word) for w in s.words] if s.words is not None else None,
                    s.avg_logprob,
                    len(s.tokens),
                )
                for s in segments
            ]
            transcripts.append(_transcript(uri, samples, info.language, found))
        return transcripts

    return transcribe


def transformers_transcriber(
    model_dir: Path, args: TranscribeArguments, language: str | None, *, scored: bool = False
) -> Transcriber:
    """transformers' own long-form Whisper generation: the files of a batch decoded together, each with its
    attention mask, short ones padded to one 30 s window; `scored`: each segment with its tokens' mean
    log-probability (see longform.generate_segments)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from whisper_pipeline.train.modeling import (
        TORCH_DTYPES,
        configure_generation,
        limit_new_tokens,
        load_base_model,
        load_trained,
        resolve_precision,
    )

    precision = resolve_precision(args.precision)
    adapter_dir = Path(args.adapter) if args.adapter else None
    model = (
        load_trained(model_dir, adapter_dir, precision=precision, merge=True)
        if adapter_dir
        else load_base_model(model_dir, precision=precision)
    )
    if language:  # checks the code against the model's languages, a one-line error otherwise
        configure_generation(model, language=language, task=args.task)
    limit_new_tokens(model, args.max_new_tokens)
    device, dtype = "cuda" if torch.cuda.is_available() else "cpu", TORCH_DTYPES[precision]
    model.to(device=device, dtype=dtype).eval()
    processor_dir = adapter_dir if adapter_dir and (adapter_dir / "tokenizer.json").is_file() else model_dir
    feature_extractor = WhisperFeatureExtractor.from_pretrained(str(processor_dir))
    tokenizer = WhisperTokenizerFast.from_pretrained(str(processor_dir))
    prompt_ids = (
        tokenizer.get_prompt_ids(args.initial_prompt, return_tensors="pt") if args.initial_prompt else None
    )

    def transcribe(batch: list[tuple[str, np.ndarray]]) -> list[Transcript]:
        audio = [samples for _, samples in batch]
        features = feature_extractor(
            audio,
            sampling_rate=SAMPLE_RATE,
            truncation=False,
            padding="longest",
            return_attention_mask=True,
            return_tensors="pt",
        )
        if features.input_features.shape[-1] < N_FRAMES:  # all short: one padded window each
            features = feature_extractor(
                audio, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt"
            )
        inputs = (features.input_features.to(device=device, dtype=dtype), features.attention_mask.to(device))
        options = {
            "tokenizer": tokenizer,
            "language": language,
            "task": args.task,
            "num_beams": args.beam_size,
            "prompt_ids": prompt_ids,
        }
        generated = [
            [Segment(s.start, s.end, s.text, avg_logprob=s.avg_logprob, tokens=s.tokens) for s in spans]
            for spans in generate_segments(model, *inputs, **options, scored=scored)
        ]
        return [
            _transcript(uri, samples, language, segments)
            for (uri, samples), segments in zip(batch, generated, strict=True)
        ]

    return transcribe


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _transcript(uri: str, samples: np.ndarray, language: str | None, segments: list[Segment]) -> Transcript:
    duration = round(len(samples) / SAMPLE_RATE, 3)
    kept = within_recording(segments, duration)
    text = " ".join(segment.text for segment in kept)
    return Transcript(uri, duration, language, text, kept)


def _subtitle_time(seconds: float, separator: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def render(transcripts: list[Transcript], fmt: str) -> str:
    """text: the transcript (one `audio<TAB>text` line per file when several); json: everything; srt and
    vtt: the segments of one file as subtitles."""
    if fmt == "json":
        return json.dumps([asdict(t) for t in transcripts], ensure_ascii=False, indent=2) + "\n"
    if fmt in ("srt", "vtt"):
        (transcript,) = transcripts
        separator = "," if fmt == "srt" else "."
        cues = [
            f"{index}\n{_subtitle_time(s.start, separator)} --> {_subtitle_time(s.end, separator)}\n"
            f"{s.text}\n"
            for index, s in enumerate(transcript.segments, start=1)
        ]
        return "\n".join(cues) if fmt == "srt" else "WEBVTT\n\n" + "\n".join(cues)
    if len(transcripts) == 1:
        return transcripts[0].text + "\n"
    return "".join(f"{t.audio}\t{t.text}\n" for t in transcripts)


def run(uris: Sequence[str], args: TranscribeArguments) -> list[Transcript]:
    """Check the inputs, load the model, then transcribe batch by batch."""
    args.validate()
    if args.format in ("srt", "vtt") and len(uris) > 1 and not args.output_dir:
        raise ConfigError(
            f"--format {args.format} holds the subtitles of one recording: give --output-dir DIR for a file "
            "per input"
        )
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise ModelError(f"--model {model_dir}: no such directory")
    if is_ctranslate2(model_dir) and args.adapter:
        raise ConfigError("--adapter needs a Hugging Face --model: a CTranslate2 export is merged already")
    if not is_ctranslate2(model_dir) and (args.vad_filter or args.word_timestamps):
        raise ConfigError(
            "--vad-filter and --word-timestamps are faster-whisper's: give a CTranslate2 --model"
        )
    root = Path(args.local_files_root) if args.local_files_root else None
    refs, access = resolve_inputs(uris, root)
    language = args.language or exported_language(model_dir, Path(args.adapter) if args.adapter else None)
    make = ctranslate2_transcriber if is_ctranslate2(model_dir) else transformers_transcriber
    transcribe = make(model_dir, args, language)
    transcripts: list[Transcript] = []
    audio = ((shown_uri(uri), samples) for uri, samples in read_audio(uris, refs, access))
    with tqdm(total=len(uris), desc="transcribing", unit="file", disable=len(uris) < 2) as progress:
        while batch := list(islice(audio, args.batch_size)):
            transcripts += transcribe(batch)
            progress.update(len(batch))
    return transcripts


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    uris, flags = argv[:split], argv[split:]
    if not uris and "--help" not in flags and "-h" not in flags:
        raise ConfigError(USAGE)
    load_env_file()
    parser = PipelineArgumentParser(
        (TranscribeArguments,),
        prog=PROG,
        usage=USAGE.removeprefix("usage: "),
        description="Transcribe local files, s3:// URIs or http(s) URLs with a merged Whisper, base + "
        "adapter, or a CTranslate2 export (faster-whisper). S3 access comes from the environment or .env.",
        groups=HELP_GROUPS,
    )
    (args,) = parse_config((TranscribeArguments,), flags, parser=parser)
    # outputs refused before any work
    if args.output:
        check_writable(args.output, "--output", folder=False)
    paths = _output_paths(uris, args) if args.output_dir else []
    transcripts = run(uris, args)
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        for path, transcript in zip(paths, transcripts, strict=True):
            path.write_text(render([transcript], args.format), encoding="utf-8")
        return 0
    text = render(transcripts, args.format)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _output_paths(uris: Sequence[str], args: TranscribeArguments) -> list[Path]:
    """<output-dir>/<input's name>.<format's extension>; two inputs of one name are refused."""
    directory = Path(args.output_dir)
    check_writable(directory, "--output-dir")
    names = [f"{_input_path(uri).stem}.{EXTENSIONS[args.format]}" for uri in uris]
    if len(set(names)) < len(names):
        raise ConfigError(f"two inputs would both be written as one file in --output-dir {directory}")
    return [directory / name for name in names]


def _input_path(uri: str) -> PurePosixPath:
    """The path an input names: a URL's decoded (`http%20clip.wav?X-Amz-...` -> `http clip.wav`), a Label
    Studio local file's from its query (`/data/local-files/?d=calls/a%20b.wav` -> `calls/a b.wav`)."""
    parsed = urlsplit(uri)
    if parsed.path.startswith(LOCAL_FILES_PREFIX):
        return PurePosixPath(local_files_path(parsed) or parsed.path)
    if uri.startswith(("http://", "https://")):
        return PurePosixPath(unquote(parsed.path))
    return PurePosixPath(uri.split("?", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
