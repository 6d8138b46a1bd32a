"""Transcribe audio with a merged Whisper, base + adapter, or a CTranslate2 export (faster-whisper).

    python -m whisper_pipeline.transcribe AUDIO... --model outputs/ct2|outputs/merged [--adapter DIR]
        [--language vi] [--format text|json|srt] [--output FILE]

AUDIO: local files or s3:// URIs (S3 settings from the environment or .env), in any format the pipeline
decodes. Audio longer than 30 s is transcribed in 30 s windows; segments carry timestamps where the runtime
gives them (faster-whisper always; Hugging Face models through the ASR pipeline's timestamps).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisper_pipeline.audio import AudioDecodeError, decode_audio
from whisper_pipeline.audio_sources import (
    AudioSourceError,
    S3Settings,
    load_env_file,
    make_s3_client,
    read_bytes,
    resolve_audio_uri,
)
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import CHUNK_SECONDS, SAMPLE_RATE
from whisper_pipeline.errors import ConfigError, ModelError, PipelineError, exit_on_user_error
from whisper_pipeline.modeling import TORCH_DTYPES, load_base_model, load_trained, resolve_precision

FORMATS = ("text", "json", "srt")


@dataclass
class TranscribeArguments:
    """Settings of `python -m whisper_pipeline.transcribe` (the audio comes first, before any flag)."""

    model: str = field(
        default="outputs/merged", metadata={"help": "Merged Whisper, base, or CTranslate2 dir."}
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter on a base --model (HF only)."})
    language: str = field(default="vi", metadata={"help": "Language to transcribe in."})
    task: str = field(default="transcribe", metadata={"help": "transcribe or translate."})
    format: str = field(default="text", metadata={"help": "text, json or srt.", "choices": list(FORMATS)})
    output: str | None = field(default=None, metadata={"help": "Write here instead of standard output."})
    beam_size: int = field(default=1, metadata={"help": "1: greedy decoding."})
    batch_size: int = field(default=8, metadata={"help": "30 s windows decoded at once (HF models)."})
    local_files_root: str | None = field(
        default=None, metadata={"help": "Root of Label Studio /data/local-files/ paths."}
    )


@dataclass(frozen=True)
class Segment:
    start: float | None
    end: float | None
    text: str


@dataclass(frozen=True)
class Transcript:
    audio: str
    duration: float
    text: str
    segments: list[Segment]


def is_ctranslate2(model_dir: Path) -> bool:
    return (model_dir / "model.bin").is_file()


def load_audio(uris: Sequence[str], args: TranscribeArguments) -> list[tuple[str, np.ndarray]]:
    """Each input decoded to 16 kHz mono; an unreadable one is a one-line error naming it."""
    settings = S3Settings.from_env(os.environ)
    client = None
    root = Path(args.local_files_root) if args.local_files_root else None
    loaded = []
    for uri in uris:
        plain_path = not uri.startswith(("s3://", "/data/")) and "://" not in uri
        location = str(Path(uri).resolve()) if plain_path else uri
        try:
            ref = resolve_audio_uri(location, default_bucket=None, local_files_root=root)
            if ref.kind == "s3" and client is None:
                client = make_s3_client(settings)
            loaded.append((uri, decode_audio(read_bytes(ref, client), name=uri)))
        except (AudioSourceError, AudioDecodeError) as error:
            raise PipelineError(f"cannot read {uri}: {error}") from None
    return loaded


def transcribe_ctranslate2(
    audio: list[tuple[str, np.ndarray]], args: TranscribeArguments
) -> list[Transcript]:
    from faster_whisper import WhisperModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = WhisperModel(args.model, device=device, compute_type="default")
    transcripts = []
    for uri, samples in audio:
        segments, _ = model.transcribe(
            samples,
            language=args.language,
            task=args.task,
            beam_size=args.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        found = [Segment(round(s.start, 2), round(s.end, 2), s.text.strip()) for s in segments]
        transcripts.append(_transcript(uri, samples, found))
    return transcripts


def transcribe_transformers(
    audio: list[tuple[str, np.ndarray]], args: TranscribeArguments
) -> list[Transcript]:
    """transformers' ASR pipeline: 30 s windows with overlap, merged, with segment timestamps."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast, pipeline

    precision = resolve_precision("auto")
    model_dir = Path(args.model)
    model = (
        load_trained(model_dir, Path(args.adapter), precision=precision, merge=True)
        if args.adapter
        else load_base_model(model_dir, precision=precision)
    )
    processor_dir = Path(args.adapter) if args.adapter else model_dir
    recognizer = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=WhisperTokenizerFast.from_pretrained(str(processor_dir)),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(str(processor_dir)),
        chunk_length_s=CHUNK_SECONDS,
        batch_size=args.batch_size,
        device=0 if torch.cuda.is_available() else -1,
        dtype=TORCH_DTYPES[precision],
    )
    transcripts = []
    for uri, samples in audio:
        result = recognizer(
            {"raw": samples, "sampling_rate": SAMPLE_RATE},
            return_timestamps=True,
            generate_kwargs={"language": args.language, "task": args.task, "num_beams": args.beam_size},
        )
        found = [
            Segment(
                *(round(t, 2) if t is not None else None for t in chunk["timestamp"]), chunk["text"].strip()
            )
            for chunk in result.get("chunks", [])
        ]
        transcripts.append(_transcript(uri, samples, found, text=result["text"].strip()))
    return transcripts


def _transcript(
    uri: str, samples: np.ndarray, segments: list[Segment], text: str | None = None
) -> Transcript:
    segments = [segment for segment in segments if segment.text]
    joined = text if text is not None else " ".join(segment.text for segment in segments)
    return Transcript(uri, round(len(samples) / SAMPLE_RATE, 3), joined, segments)


def _srt_time(seconds: float | None) -> str:
    milliseconds = round((seconds or 0.0) * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d},{rest % 1000:03d}"


def render(transcripts: list[Transcript], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(t) for t in transcripts], ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        blocks = []
        for transcript in transcripts:
            for segment in transcript.segments:
                end = segment.end if segment.end is not None else transcript.duration
                blocks.append(
                    f"{len(blocks) + 1}\n{_srt_time(segment.start)} --> {_srt_time(end)}\n{segment.text}\n"
                )
        return "\n".join(blocks)
    if len(transcripts) == 1:
        return transcripts[0].text + "\n"
    return "".join(f"{t.audio}\t{t.text}\n" for t in transcripts)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    uris, flags = argv[:split], argv[split:]
    if not uris:
        raise ConfigError("usage: python -m whisper_pipeline.transcribe AUDIO... --model DIR [--flags]")
    load_env_file()
    (args,) = parse_config((TranscribeArguments,), flags)
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise ModelError(f"--model {model_dir}: no such directory")
    if args.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    audio = load_audio(uris, args)
    if is_ctranslate2(model_dir):
        if args.adapter:
            raise ConfigError(
                "--adapter works with a Hugging Face --model; a CTranslate2 model is merged already"
            )
        transcripts = transcribe_ctranslate2(audio, args)
    else:
        transcripts = transcribe_transformers(audio, args)
    text = render(transcripts, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
