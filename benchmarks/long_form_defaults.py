"""Why `--timestamp-probability 0.5` and `--prompt-probability 0.2`: the demo's training at several settings,
each adapter merged and scored on the demo's held-out export as users deploy it.

    python -m benchmarks.long_form_defaults [--workdir demo_data] [--settings 0:0.2 0.5:0.2 ...]

Needs a finished demo (`make demo`): its corpus, cache, model and settings. Every setting trains the demo's
run (configs/demo_train.yaml, seed 42) on the same cache, without evaluations during training (the final
adapter, so that no checkpoint choice mixes into the comparison), merges it, and runs `evaluate` on the
held-out export: each utterance alone (short-form WER) and the long recordings whole with Whisper's
long-form algorithm (WER, deletions, coverage, timestamp error, words on noise-only clips, loops).
Writes benchmarks/results/long_form_defaults.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.readme import table
from whisper_pipeline.demo.corpus import BUCKET, build_corpus
from whisper_pipeline.demo.run import EVALUATE, EXPORT, REPO, DemoArguments, corpus_bucket
from whisper_pipeline.train.metrics import percent

RESULTS = REPO / "benchmarks" / "results" / "long_form_defaults.json"
# the defaults first, then the form before timestamps and prompts existed, then one change at a time
DEFAULT_SETTINGS = ("0.5:0.2", "0:0", "1:0.2", "0.5:0", "0:0.2")


def run_setting(
    timestamps: float, prompts: float, *, demo: DemoArguments, heldout: str, env: dict[str, str]
) -> dict[str, Any]:
    """Train, merge and evaluate one setting; its scores and seconds."""
    workdir, model = Path(demo.workdir), Path(demo.model)
    folder = workdir / "long_form_defaults" / f"timestamps{timestamps:g}-prompts{prompts:g}"
    started = time.perf_counter()
    train = [sys.executable, "train_model.py", demo.train_config, "--model", str(model),
             "--data-dir", str(workdir / "processed_data"), "--output-dir", str(folder),
             "--timestamp-probability", str(timestamps), "--prompt-probability", str(prompts),
             "--eval-strategy", "no", "--save-strategy", "no", "--no-load-best-model-at-end",
             "--no-long-form", *shlex.split(demo.train_flags)]  # fmt: skip
    subprocess.run(train, cwd=REPO, env=env, check=True)
    trained = time.perf_counter()
    merged = folder / "merged"
    subprocess.run([*EXPORT, "merge", "--model", str(model), "--adapter", str(folder / "adapter"),
                    "--output", str(merged)], cwd=REPO, env=env, check=True)  # fmt: skip
    subprocess.run([*EVALUATE, "--model", str(merged), "--annotations", heldout,
                    "--max-new-tokens", str(demo.eval_max_new_tokens),
                    "--output-dir", str(folder / "evaluation"),
                    "--eval-cache-dir", str(workdir / "long_form_defaults" / "heldout_cache"),
                    *(["--long-form-max-new-tokens", str(demo.eval_max_new_tokens)] if demo.tiny else [])],
                   cwd=REPO, env=env, check=True)  # fmt: skip
    evaluation = json.loads((folder / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))
    return {
        "timestamp_probability": timestamps,
        "prompt_probability": prompts,
        "short_form": evaluation["scores"]["base"],
        "long_form": evaluation["long_form"]["base"],
        "seconds": {"train": round(trained - started, 1), "total": round(time.perf_counter() - started, 1)},
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = ["timestamps", "prompts", "short-form WER", "long-form WER", "deletions", "coverage",
              "timestamp error", "noise words", "loops"]  # fmt: skip
    body = [
        [
            f"{row['timestamp_probability']:g}",
            f"{row['prompt_probability']:g}",
            percent(row["short_form"]["wer"]),
            percent(row["long_form"]["wer"]),
            percent(row["long_form"]["deletions"]),
            percent(row["long_form"]["coverage"]),
            f"{row['long_form']['timestamp_error']:.2f} s",
            str(row["long_form"]["noise_words"]),
            percent(row["long_form"]["loops"]),
        ]
        for row in rows
    ]
    return table(header, body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="demo_data", help="The demo's folder (make demo builds it).")
    parser.add_argument(
        "--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="TIMESTAMPS:PROMPTS probabilities."
    )
    parser.add_argument("--results", default=str(RESULTS), help="Where the JSON goes.")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    summary = workdir / "outputs" / "demo_summary.json"
    if not summary.is_file():
        parser.error(f"no finished demo in {workdir}: run `make demo` first")
    # the demo's own settings: its corpus (reused, not rebuilt), model, training config and flags
    demo = DemoArguments(**json.loads(summary.read_text(encoding="utf-8"))["arguments"])
    demo.workdir = str(workdir)
    corpus = build_corpus(workdir / "corpus", demo)
    rows = []
    with corpus_bucket(workdir, corpus) as env:
        heldout = f"s3://{BUCKET}/exports/{corpus.heldout_export.name}"
        for setting in args.settings:
            timestamps, prompts = (float(value) for value in setting.split(":"))
            rows.append(run_setting(timestamps, prompts, demo=demo, heldout=heldout, env=env))
            # after every setting: an interrupted sweep keeps what it measured
            results = {"rows": rows, "markdown": markdown(rows)}
            Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
            print(markdown(rows), f"\nwrote {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
