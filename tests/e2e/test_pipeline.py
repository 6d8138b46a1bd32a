"""End to end as a user runs it: the demo command (corpus -> moto S3 over TLS -> run_pipeline.sh ->
evaluation) with the tiny model, then run_pipeline.sh's own contract (no-op prepare, exit codes, logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The demo command twice and run_pipeline.sh: minutes of real commands (`make test`, not test-fast).
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRAIN_FLAGS = (
    "--max-steps 2 --per-device-train-batch-size 4 --generation-max-length 16 --long-form-max-new-tokens 16 "
    "--disable-tqdm true"
)


@pytest.fixture(scope="module")
def demo_run(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    command = [
        sys.executable, "-m", "whisper_pipeline.demo.run", "--tiny", "--model", str(tiny_model_dir),
        "--workdir", str(workdir), "--recordings", "8", "--heldout-sentences", "3",
        f"--train-flags={TRAIN_FLAGS}", "--eval-max-new-tokens", "16",
        # one long recording within one window: the long-form path, without a random model's many windows
        "--long-recordings", "1", "--long-seconds", "15",
    ]  # fmt: skip
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return workdir, first


@pytest.mark.timeout(1200)  # the demo_run fixture: a demo run of a few minutes
def test_demo_runs_the_whole_loop_and_reports_where_everything_is(demo_run):
    workdir, first = demo_run
    outputs = workdir / "outputs"
    for name in ("adapter/adapter_model.safetensors", "metrics.json", "predictions_validation.jsonl"):
        assert (outputs / name).is_file(), name
    assert any(outputs.glob("runs/**/events.out.tfevents.*"))
    assert list((outputs / "logs").glob("prepare-*.log")) and list((outputs / "logs").glob("train-*.log"))
    summary = json.loads((outputs / "demo_summary.json").read_text())
    assert set(summary["heldout"]) == {"base", "adapter", "ctranslate2"}
    assert summary["corpus"]["heldout_sentences"] == 3
    assert "demo summary" in first.stdout and str(outputs / "adapter") in first.stdout
    evaluation = json.loads((outputs / "evaluation" / "evaluation.json").read_text())
    # every held-out utterance alone (the three clips and those of the long recording); noise-only clips
    # are not scored short-form
    heldout = json.loads((workdir / "corpus" / "heldout_export.json").read_text())
    texts = [
        text
        for task in heldout
        for r in task["annotations"][0]["result"]
        for text in r["value"].get("text", [])
    ]
    assert evaluation["examples"] == len(texts) > 4 and (outputs / "evaluation" / "evaluation.md").is_file()
    assert set(summary["long_form"]) == {"base", "adapter", "ctranslate2"}
    assert all(
        scores["recordings"] == 1 and scores["noise_recordings"] == 3
        for scores in summary["long_form"].values()
    )
    assert (
        set(summary["novel"]) == {"base", "adapter"} and summary["corpus"]["novel_unseen_word_share"] >= 0.25
    )
    assert "whole recordings (long-form" in first.stdout and "subtitles" in first.stdout
    assert (outputs / "merged" / "model.safetensors").is_file() and (outputs / "ct2" / "model.bin").is_file()
    assert [set(item) for item in summary["transcripts"]] == [
        {"audio", "reference", "merged", "ctranslate2"}
    ] * 3
    assert "deployed" in first.stdout
    # the held-out export pre-annotated by both models as a next batch, each prediction scored
    assert set(summary["preannotation"]) == {"base", "fine-tuned"}
    for name, scores in summary["preannotation"].items():
        predictions = json.loads((outputs / "preannotations" / f"{name}.json").read_text())
        assert scores["tasks"] == len(predictions) == len(heldout)
        assert scores["reference_words"] == sum(len(text.split()) for text in texts)
    assert "pre-annotation of the held-out export" in first.stdout


def test_heldout_sentences_never_occur_in_training(demo_run):
    workdir, _ = demo_run
    train = json.loads((workdir / "corpus" / "train_export.json").read_text())
    heldout = json.loads((workdir / "corpus" / "heldout_export.json").read_text())
    novel = json.loads((workdir / "corpus" / "novel_export.json").read_text())

    def texts(export):
        return {
            text
            for task in export
            for result in task["annotations"][0]["result"]
            for text in result["value"].get("text", [])
        }

    assert texts(heldout) and not texts(heldout) & texts(train)
    assert texts(novel) and not texts(novel) & texts(train)


def test_run_pipeline_stops_at_the_first_failure_with_its_exit_code(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs")}
    missing_export = str(tmp_path / "x.json")
    command = ["bash", "run_pipeline.sh", "--prepare-flag", "--annotations", "--prepare-flag", missing_export]
    command += ["--prepare-flag", "--model", "--prepare-flag", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "prepare failed with exit code 2" in result.stderr
    assert "==> train" not in result.stdout
    (log,) = (tmp_path / "logs").glob("prepare-*.log")
    assert "error:" in log.read_text()
