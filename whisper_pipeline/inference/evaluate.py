"""Baseline vs fine-tuned: WER/CER of the base model and of base + adapter on the same utterances.

    python -m whisper_pipeline.inference.evaluate --model ./model --adapter outputs/adapter
        [--data-dir processed_data --split validation | --annotations heldout.json
         | --label-studio-url URL --project ID] [--ctranslate2 outputs/ct2]

Utterances come from a feature cache (the validation split by default), or from a Label Studio export that
is prepared first like a training export (same S3 settings, every recording held out, no augmentation) into
its own cache, so a rerun costs seconds. The adapter is merged into the base before it generates, as
users deploy it. Where the split holds recordings kept whole (longer than 30 s, several utterances, or
noise only: see prepare/windows.is_long_form), each model also transcribes them whole with Whisper's
long-form algorithm and is scored on them (see longform.py); --ctranslate2 adds the faster-whisper export
on the same utterances and recordings, read from their audio with prepare_data.py's flags and settings
(S3, Label Studio's files under their roots or through its server). Writes `evaluation.json`,
`evaluation.md` (the tables and the worst utterances with their word alignment), `predictions.jsonl` and
`long_form.jsonl` under --output-dir.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jiwer
import torch
from tqdm.auto import tqdm

from whisper_pipeline.cache import (
    SOURCE_COLUMNS,
    SPLITS,
    PreparedCache,
    clean_rows,
    open_cache,
    whole_recordings,
)
from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.constants import MAX_TARGET_POSITIONS, PRECISIONS
from whisper_pipeline.errors import ConfigError, ModelError, exit_on_user_error
from whisper_pipeline.inference.longform import (
    LongFormArguments,
    LongRecording,
    Span,
    cached_recordings,
    score_long_form,
    transcribe_cached,
)
from whisper_pipeline.inference.transcribe import (
    TranscribeArguments,
    ctranslate2_transcriber,
    is_ctranslate2,
    locate_inputs,
    read_audio,
)
from whisper_pipeline.prepare.audio import cut
from whisper_pipeline.prepare.run import (
    AUDIO_SOURCE_FIELDS,
    LABELLING_FIELDS,
    SERVER_FIELDS,
    AnnotationSource,
    PrepareArguments,
    run_prepare,
)
from whisper_pipeline.prepare.sources import AudioAccess, AudioRef
from whisper_pipeline.train.batches import CacheRows, feature_batch, model_inputs
from whisper_pipeline.train.metrics import SCORES, normalize_for_scoring, percent, score, utterance_wers
from whisper_pipeline.train.modeling import (
    TORCH_DTYPES,
    check_adapter_files,
    limit_new_tokens,
    load_base_model,
    load_trained,
    resolve_precision,
)
from whisper_pipeline.writable import check_writable

if TYPE_CHECKING:
    import datasets

PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>


@dataclass
class EvaluateArguments(AnnotationSource, LongFormArguments):
    """Settings of `python -m whisper_pipeline.inference.evaluate` (flags, or keys of a YAML/JSON file);
    those of AnnotationSource read a held-out --annotations export or --project as prepare_data.py does."""

    model: str = field(default="./model", metadata={"help": "Base Whisper directory."})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter to compare with the base (omit: the base alone)."}
    )
    data_dir: str = field(default="processed_data", metadata={"help": "Feature cache to evaluate on."})
    split: str = field(default="validation", metadata={"help": "Cache split: validation or train."})
    annotations: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate on this Label Studio export (local path or s3://) instead of --data-dir: it is "
            "prepared into --eval-cache-dir first (a no-op when current)."
        },
    )
    eval_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache for --annotations (default: <output-dir>/cache)."}
    )
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "Where results are written."})
    language: str | None = field(default=None, metadata={"help": "Forced language (default: the cache's)."})
    task: str | None = field(default=None, metadata={"help": "Forced task (default: the cache's)."})
    batch_size: int = field(default=8, metadata={"help": "Utterances generated at once."})
    max_new_tokens: int = field(
        default=MAX_TARGET_POSITIONS - PROMPT_TOKENS,
        metadata={"help": "Longest generated transcript in tokens (Whisper's limit by default)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32.", "choices": PRECISIONS},
    )
    max_examples: int | None = field(default=None, metadata={"help": "Evaluate only the first N."})
    worst: int = field(default=10, metadata={"help": "Worst utterances listed with their alignment."})
    ctranslate2: str | None = field(
        default=None,
        metadata={
            "help": "A CTranslate2 export (`export ctranslate2`), scored with faster-whisper on the same "
            "utterances and recordings (read from their audio, reached as prepare_data.py reaches it)."
        },
    )

    def validate(self) -> None:
        if self.project is not None and self.annotations:
            raise ConfigError(f"--project and --annotations {self.annotations} name two exports: give one")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be positive")
        if self.adapter:  # before the base model is evaluated, not after
            check_adapter_files(Path(self.adapter))
        check_writable(self.output_dir, "--output-dir")
        if (self.annotations or self.project is not None) and self.eval_cache_dir:
            check_writable(self.eval_cache_dir, "--eval-cache-dir")
        if self.ctranslate2 and not is_ctranslate2(Path(self.ctranslate2)):  # before any model runs
            raise ModelError(
                f"--ctranslate2 {self.ctranslate2} holds no model.bin: give the folder `export ctranslate2` "
                "wrote"
            )


HELP_GROUPS = {
    "data": ("data_dir", "split", "max_examples", "annotations", "eval_cache_dir"),
    "annotations (with --annotations or --project)": (*SERVER_FIELDS, *LABELLING_FIELDS),
    "audio": AUDIO_SOURCE_FIELDS,
    "model": ("model", "adapter", "ctranslate2", "precision"),
    "generation": ("language", "task", "batch_size", "max_new_tokens"),
    "long-form": tuple(f.name for f in fields(LongFormArguments)),
    "outputs": ("output_dir", "worst"),
}


@dataclass(frozen=True)
class Utterances:
    """What is evaluated: the cache rows (features), references, and where each comes from."""

    features: CacheRows
    references: list[str]
    sources: list[dict[str, Any]]  # segment_id, audio_uri, start, end
    recordings: datasets.Dataset  # the split's WHOLE_RECORDING rows (long-form)
    language: str
    task: str
    description: str


def load_utterances(args: EvaluateArguments, environ: Mapping[str, str] | None = None) -> Utterances:
    """Clean (not augmented) rows of the chosen split, or of the prepared --annotations export."""
    if args.annotations or args.project is not None:
        cache, split = _prepare_annotations(args, environ), "validation"
    else:
        cache, split = open_cache(Path(args.data_dir), model_dir=Path(args.model)), args.split
    rows = clean_rows(cache.train if split == "train" else cache.validation, args.max_examples)
    if not len(rows):
        raise ConfigError(f"no utterances to evaluate in the {split} split of {cache.root}")
    settings = cache.report.get("settings", {})
    language, task = args.language or settings.get("language"), args.task or settings.get("task")
    if not language or not task:
        raise ConfigError("the cache report does not say its language/task: pass --language and --task")
    source = (
        args.annotations
        or (f"Label Studio project {args.project}" if args.project is not None else None)
        or f"{cache.root} ({split})"
    )
    return Utterances(
        features=CacheRows(rows),
        references=list(rows["text"]),
        sources=rows.select_columns(list(SOURCE_COLUMNS)).to_list(),
        recordings=whole_recordings(cache.train if split == "train" else cache.validation),
        language=language,
        task=task,
        description=f"{len(rows)} utterances of {source}",
    )


def _prepare_annotations(args: EvaluateArguments, environ: Mapping[str, str] | None) -> PreparedCache:
    """The export through prepare_data.py's own path, every recording in the validation split."""
    cache_dir = Path(args.eval_cache_dir or Path(args.output_dir) / "cache")
    source = {name.name: getattr(args, name.name) for name in fields(AnnotationSource)}
    prepare_args = PrepareArguments(
        **source,
        **({"annotations": args.annotations} if args.annotations else {}),
        output_dir=str(cache_dir),
        model=args.model,
        language=args.language or "vi",
        task=args.task or "transcribe",
        val_fraction=1.0,
        augment_copies=0,
        max_window_regions=1,  # short-form: each utterance alone; long-form: the recordings kept whole
    )
    run_prepare(prepare_args, environ=environ)
    return open_cache(cache_dir, model_dir=Path(args.model))


def transcribe_features(
    model, utterances: Utterances, *, batch_size: int, max_new_tokens: int, tokenizer, label: str
) -> list[str]:
    """Greedy generation in the utterances' language and task, batch by batch."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    limit_new_tokens(model, max_new_tokens)
    hypotheses: list[str] = []
    total = len(utterances.references)
    with torch.inference_mode():
        for start in tqdm(range(0, total, batch_size), desc=f"evaluating {label}", unit="batch"):
            batch = feature_batch(utterances.features.take(range(start, min(start + batch_size, total))))
            ids = model.generate(
                **model_inputs(batch, dtype=dtype, device=device),
                language=utterances.language,
                task=utterances.task,
            )
            hypotheses += [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return hypotheses


def alignment_text(reference: str, hypothesis: str) -> str:
    """jiwer's word alignment (REF/HYP/edit marks) on normalised text, for reading what went wrong."""
    aligned = jiwer.process_words(normalize_for_scoring(reference) or "∅", normalize_for_scoring(hypothesis))
    return jiwer.visualize_alignment(aligned, show_measures=False).strip()


def run_evaluation(args: EvaluateArguments, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score the base and (if given) the adapter, merged into it, on the same utterances and whole
    recordings, and the CTranslate2 export if given; write and return the results. `environ`: where S3's
    and Label Studio's settings are read (default: the process's)."""
    from transformers import WhisperTokenizerFast

    args.validate()
    environ = os.environ if environ is None else environ
    precision = resolve_precision(args.precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utterances = load_utterances(args, environ)
    recordings = cached_recordings(utterances.recordings) if args.long_form else []
    # the CTranslate2 export's audio located before any model runs: what cannot be read is said at once,
    # not after the base and the adapter are scored
    audio = _ctranslate2_audio(args, utterances, recordings, environ) if args.ctranslate2 else None
    tokenizer = WhisperTokenizerFast.from_pretrained(args.model)
    candidates = {"base": None, **({"adapter": args.adapter} if args.adapter else {})}
    hypotheses: dict[str, list[str]] = {}
    long_form: dict[str, list[list[Span]]] = {}
    for name, adapter in candidates.items():
        model = (
            load_trained(Path(args.model), Path(adapter), precision=precision, merge=True)
            if adapter
            else load_base_model(Path(args.model), precision=precision)
        )
        model.to(device=device, dtype=TORCH_DTYPES[precision]).eval()
        hypotheses[name] = transcribe_features(
            model,
            utterances,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            tokenizer=tokenizer,
            label=name,
        )
        if recordings:
            long_form[name] = transcribe_cached(
                model,
                utterances.recordings,
                tokenizer=tokenizer,
                language=utterances.language,
                task=utterances.task,
                max_new_tokens=args.long_form_max_new_tokens,
                label=name,
            )
        del model
        gc.collect()
    if audio is not None:
        exported = _ctranslate2(args, utterances, recordings, audio)
        hypotheses["ctranslate2"], long_form["ctranslate2"] = exported
    results = _results(args, utterances, hypotheses, precision)
    if recordings:
        results["long_form"] = {
            name: score_long_form(recordings, outputs) for name, outputs in long_form.items()
        }
        _write_long_form(Path(args.output_dir), recordings, long_form)
    _write(Path(args.output_dir), results, utterances, hypotheses)
    return results


@dataclass(frozen=True)
class _Audio:
    """The recordings the CTranslate2 export reads: their URIs as the cache names them, where each is,
    and how it is reached."""

    uris: list[str]
    refs: list[AudioRef]
    access: AudioAccess


def _ctranslate2_audio(
    args: EvaluateArguments,
    utterances: Utterances,
    recordings: Sequence[LongRecording],
    environ: Mapping[str, str],
) -> _Audio:
    """Each recording the utterances come from, located as prepare_data.py located it (the same flags:
    S3's default bucket, Label Studio's roots or its server, allowed buckets and hosts) and checked."""
    _, access = args.connect(environ)
    uris = sorted({source["audio_uri"] for source in utterances.sources} | {r.uri for r in recordings})
    return _Audio(uris, locate_inputs(uris, access), access)


def _ctranslate2(
    args: EvaluateArguments, utterances: Utterances, recordings: Sequence[LongRecording], audio: _Audio
) -> tuple[list[str], list[list[Span]]]:
    """The export through faster-whisper (`transcribe`'s own transcriber): it takes audio, not the cache's
    features, so each recording is read and decoded again; its utterances are cut from it as prepare cut
    them, and the long-form ones transcribed whole."""
    options = TranscribeArguments(
        model=args.ctranslate2, task=utterances.task, max_new_tokens=args.max_new_tokens
    )
    transcribe = ctranslate2_transcriber(Path(args.ctranslate2), options, utterances.language)
    clips_by_uri: dict[str, list[int]] = {}
    for i, source in enumerate(utterances.sources):
        clips_by_uri.setdefault(source["audio_uri"], []).append(i)
    whole_uris = {recording.uri for recording in recordings}
    texts: dict[int, str] = {}
    whole: dict[str, list[Span]] = {}
    reading = read_audio(audio.uris, audio.refs, audio.access)
    for uri, samples in tqdm(reading, total=len(audio.uris), desc="ctranslate2", unit="file"):
        for i in clips_by_uri.get(uri, []):
            source = utterances.sources[i]
            texts[i] = transcribe([(uri, cut(samples, source["start"], source["end"]))])[0].text
        if uri in whole_uris:
            (transcript,) = transcribe([(uri, samples)], max_new_tokens=args.long_form_max_new_tokens)
            whole[uri] = [Span(s.start, s.end, s.text) for s in transcript.segments]
    return [texts[i] for i in range(len(utterances.sources))], [whole[r.uri] for r in recordings]


def _write_long_form(
    output_dir: Path, recordings: Sequence[LongRecording], outputs: dict[str, list[list[Span]]]
) -> None:
    """long_form.jsonl: each model's segments of each whole recording, beside its reference."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "long_form.jsonl", "w", encoding="utf-8") as handle:
        for name, segments_by_recording in outputs.items():
            for recording, segments in zip(recordings, segments_by_recording, strict=True):
                record = {
                    "model": name,
                    "audio": recording.uri,
                    "reference": recording.reference,
                    "segments": [vars(span) for span in segments],
                }
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _results(
    args: EvaluateArguments, utterances: Utterances, hypotheses: dict[str, list[str]], precision: str
) -> dict[str, Any]:
    references = utterances.references
    scores = {name: score(references, texts) for name, texts in hypotheses.items()}
    results: dict[str, Any] = {
        "model": args.model,
        "adapter": args.adapter,
        "data": utterances.description,
        "examples": len(references),
        "language": utterances.language,
        "task": utterances.task,
        "precision": precision,
        "scores": scores,
    }
    if "adapter" in scores and scores["base"]["wer"] > 0:
        results["relative_wer_reduction"] = 1 - scores["adapter"]["wer"] / scores["base"]["wer"]
    ranked = "adapter" if "adapter" in hypotheses else "base"
    per_utterance = utterance_wers(references, hypotheses[ranked])
    order = sorted(range(len(references)), key=lambda i: -per_utterance[i]["normalized_wer"])
    results["worst"] = [
        {
            **utterances.sources[i],
            "model": ranked,
            "reference": references[i],
            "hypothesis": hypotheses[ranked][i],
            "normalized_wer": per_utterance[i]["normalized_wer"],
            "alignment": alignment_text(references[i], hypotheses[ranked][i]),
        }
        for i in order[: args.worst]
    ]
    return results


def format_table(results: dict[str, Any]) -> str:
    """The Markdown table of scores (percent), one row per model."""
    lines = [
        "| model | WER | CER | normalized WER | normalized CER |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, scores in results["scores"].items():
        cells = " | ".join(f"{100 * scores[key]:.1f}%" for key in SCORES)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def format_markdown(results: dict[str, Any]) -> str:
    parts = [
        f"# Evaluation: {results['data']}",
        "",
        f"Model `{results['model']}`"
        + (f", adapter `{results['adapter']}`" if results["adapter"] else "")
        + f"; language {results['language']}, {results['task']}, {results['precision']}, greedy decoding.",
        "",
        format_table(results),
        "",
    ]
    if "relative_wer_reduction" in results:
        parts += [f"Relative WER reduction: {100 * results['relative_wer_reduction']:.1f}%", ""]
    if results.get("long_form"):
        parts += ["## Whole recordings (long-form)", "", format_long_form_table(results["long_form"]), ""]
    parts += [f"## Worst utterances ({results['worst'][0]['model']})" if results["worst"] else "", ""]
    for item in results["worst"]:
        parts += [
            f"- `{item['segment_id']}` {item['audio_uri']} [{item['start']:.2f}-{item['end']:.2f} s], "
            f"normalized WER {100 * item['normalized_wer']:.0f}%",
            "",
            "```",
            item["alignment"],
            "```",
            "",
        ]
    return "\n".join(parts)


def _write(
    output_dir: Path, results: dict[str, Any], utterances: Utterances, hypotheses: dict[str, list[str]]
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(
        json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (output_dir / "evaluation.md").write_text(format_markdown(results), encoding="utf-8")
    per_model = {name: utterance_wers(utterances.references, texts) for name, texts in hypotheses.items()}
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for i, reference in enumerate(utterances.references):
            record = {**utterances.sources[i], "reference": reference}
            for name, texts in hypotheses.items():
                record[name] = {"hypothesis": texts[i], **per_model[name][i]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def format_long_form_table(long_form: dict[str, Any]) -> str:
    """Whole recordings, one row per model: what users deploy (see longform.py)."""
    lines = [
        "| model (long-form) | WER | normalized WER | deletions | coverage | timestamp error | noise words "
        "| loops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in long_form.items():
        error = "n/a" if s.get("timestamp_error") is None else f"{s['timestamp_error']:.2f} s"
        lines.append(
            f"| {name} | {percent(s.get('wer'))} | {percent(s.get('normalized_wer'))} | "
            f"{percent(s.get('deletions'))} | {percent(s.get('coverage'))} | {error} | {s['noise_words']} | "
            f"{percent(s['loops'])} |"
        )
    return "\n".join(lines)


def format_summary(results: dict[str, Any], output_dir: str) -> str:
    lines = [f"evaluation of {results['data']}", format_table(results)]
    if results.get("long_form"):
        lines.append(format_long_form_table(results["long_form"]))
    if "relative_wer_reduction" in results:
        lines.append(f"relative WER reduction: {100 * results['relative_wer_reduction']:.1f}%")
    lines.append(f"details: {Path(output_dir) / 'evaluation.md'}, {Path(output_dir) / 'evaluation.json'}")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    from whisper_pipeline.prepare.sources import load_env_file

    load_env_file()
    parser = PipelineArgumentParser(
        (EvaluateArguments,),
        prog=as_typed("whisper-evaluate", f"python -m {__spec__.name}"),
        description="Baseline vs fine-tuned: WER/CER of the base model and of base + adapter on the same "
        f"utterances (and recordings kept whole). {CONFIG_NOTE}",
        groups=HELP_GROUPS,
    )
    (args,) = parse_config((EvaluateArguments,), sys.argv[1:] if argv is None else argv, parser=parser)
    results = run_evaluation(args)
    print(format_summary(results, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
