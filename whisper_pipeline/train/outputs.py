"""What a training run leaves in --output-dir, and the one-screen summary of it.

adapter/                     best adapter: safetensors + adapter config + processor files
metrics.json                 baseline, every evaluation, best, training loss/speed/runtime
predictions_validation.jsonl reference, hypothesis and WER of every validation utterance (best model)
train_config.yaml            every resolved setting + cache fingerprint + package version
report.html                  loss/WER curves, worst validation utterances with a word diff, settings
runs/                        TensorBoard logs
checkpoint-*/                resumable checkpoints (--resume-from-checkpoint PATH|auto)

Light to import (no torch): transcribe and export read a run's train_config.yaml through it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from whisper_pipeline import __version__
from whisper_pipeline.config import to_plain_dict
from whisper_pipeline.train.metrics import ComputeMetrics, percent, utterance_wers
from whisper_pipeline.train.report import REPORT_FILE, write_report

if TYPE_CHECKING:
    from transformers import Seq2SeqTrainingArguments, TrainerState

    from whisper_pipeline.cache import PreparedCache

ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_validation.jsonl"
CONFIG_FILE = "train_config.yaml"


@dataclass(frozen=True)
class TrainingReport:
    """What the run produced (what the summary prints)."""

    output_dir: Path
    metrics: dict[str, Any]
    settings: dict[str, Any]
    first_process: bool  # only the first process prints and writes


def run_settings(
    *,
    cache: PreparedCache,
    examples: Mapping[str, int],
    resolved: Mapping[str, Any],
    arguments: Sequence[Any],
    training_args: Seq2SeqTrainingArguments,
) -> dict[str, Any]:
    """train_config.yaml: the cache trained on, what was resolved at run time, library versions and every
    argument as given (ours, then the Trainer's): `train_model.py outputs/train_config.yaml` repeats the run.
    The Trainer writes its token fields as placeholders ("<HUB_TOKEN>"); kept out, they stay unset."""
    trainer_arguments = json.loads(training_args.to_json_string())
    return {
        "package_version": __version__,
        "cache": {"data_dir": str(cache.root), "fingerprint": cache.fingerprint, "examples": dict(examples)},
        "resolved": dict(resolved),
        "versions": _versions(),
        "arguments": {
            **{key: value for group in arguments for key, value in to_plain_dict(group).items()},
            **{key: None if key.endswith("_token") else value for key, value in trainer_arguments.items()},
        },
    }


def write_config(output_dir: Path, settings: Mapping[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(settings), sort_keys=False, allow_unicode=True, width=110)
    (output_dir / CONFIG_FILE).write_text(
        f"# {CONFIG_FILE}: every setting of this run, resolved.\n{text}", encoding="utf-8"
    )


def read_config(output_dir: Path) -> dict[str, Any] | None:
    """A run's train_config.yaml (beside its adapter/ and checkpoints); None if absent or unreadable."""
    try:
        settings = yaml.safe_load((Path(output_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return settings if isinstance(settings, dict) else None


def trained_language_and_task(adapter_dir: Path) -> tuple[str | None, str | None]:
    """The language and task an adapter was trained for, from its run's train_config.yaml (if any)."""
    resolved = (read_config(Path(adapter_dir).parent) or {}).get("resolved")
    if not isinstance(resolved, dict):
        return None, None
    return resolved.get("language"), resolved.get("task")


def write_results(
    output_dir: Path, model, processor, metrics: Mapping[str, Any], sources: Sequence[Mapping[str, Any]], best
) -> None:
    """The best adapter, metrics.json, the validation predictions and report.html (first process only)."""
    from whisper_pipeline.train.modeling import save_adapter

    save_adapter(model, processor, output_dir / ADAPTER_DIR)
    (output_dir / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    predictions = _write_predictions(output_dir / PREDICTIONS_FILE, sources, best, processor.tokenizer)
    write_report(output_dir, metrics, predictions, read_config(output_dir))


def _scores(entry: Mapping[str, Any], prefix: str = "eval_") -> dict[str, Any]:
    """An evaluation's metrics without their prefix (wer, cer, ..., loss, runtime, samples_per_second)."""
    record = {key.removeprefix(prefix): value for key, value in entry.items() if key.startswith(prefix)}
    return {key: value for key, value in record.items() if key != "steps_per_second"}


def metrics_record(
    state: TrainerState, best_metric: str | None, train_metrics: Mapping[str, Any], best: Mapping[str, Any]
) -> dict:
    """metrics.json: the baseline (step 0), every evaluation, the best model's scores and training figures."""
    evaluations = [
        {"step": entry["step"], "epoch": entry.get("epoch"), **_scores(entry)}
        for entry in state.log_history
        if "eval_wer" in entry
    ]
    baseline = next((entry for entry in evaluations if entry["step"] == 0), None)
    losses = [
        {"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
        for entry in state.log_history
        if "loss" in entry
    ]
    return {
        "baseline": baseline,
        "evaluations": [entry for entry in evaluations if entry["step"] != 0],
        "best": {
            "step": state.best_global_step,
            "checkpoint": state.best_model_checkpoint,
            "metric": best_metric,
            **_scores(best),
        },
        "train": {
            "loss": train_metrics.get("train_loss"),
            "runtime": train_metrics.get("train_runtime"),
            "samples_per_second": train_metrics.get("train_samples_per_second"),
            "steps_per_second": train_metrics.get("train_steps_per_second"),
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "epochs": state.epoch,
            "loss_history": losses,
        },
    }


def _write_predictions(
    path: Path, sources: Sequence[Mapping[str, Any]], prediction, tokenizer
) -> list[dict[str, Any]]:
    """One JSON line per clean validation utterance: where it is from, reference, hypothesis, its WER."""
    decode = ComputeMetrics(tokenizer).decode
    references, hypotheses = decode(prediction.label_ids), decode(prediction.predictions)
    records = [
        {**source, "reference": ref, "hypothesis": hyp, **scores}
        for source, ref, hyp, scores in zip(
            sources, references, hypotheses, utterance_wers(references, hypotheses), strict=True
        )
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return records


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "transformers", "peft", "accelerate", "datasets")}


def _score_line(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "not evaluated"
    return (
        f"WER {percent(record.get('wer'))}  CER {percent(record.get('cer'))}  (normalized: WER "
        f"{percent(record.get('normalized_wer'))}, CER {percent(record.get('normalized_cer'))})"
    )


def plural(count: float, noun: str, nouns: str | None = None) -> str:
    """`1 step`, `2 steps`, `0.5 epochs`."""
    return f"{count:g} {noun}" if count == 1 else f"{count:g} {nouns or noun + 's'}"


def _training_line(train: Mapping[str, Any], resolved: Mapping[str, Any]) -> str:
    steps = plural(train["global_step"], "step")
    if resolved.get("finished_before"):
        return f"none left: the checkpoint had finished the run ({steps}); its model evaluated and saved"
    stopped = (
        f" (stopped early, before step {train['max_steps']})"
        if train.get("max_steps") and train["global_step"] < train["max_steps"]
        else ""
    )
    epochs = plural(round(train["epochs"] or 0, 2), "epoch")
    processes = plural(resolved["world_size"], "process", "processes")
    return (
        f"{steps}{stopped}, {epochs}, {train['runtime'] or 0:.0f} s, {train['samples_per_second'] or 0:.2f} "
        f"samples/s, train loss {train['loss'] or 0:.4f}, {processes}"
    )


def format_summary(report: TrainingReport) -> str:
    """The one-screen summary printed at the end."""
    metrics, settings = report.metrics, report.settings
    cache, resolved, train, arguments = (
        settings["cache"],
        settings["resolved"],
        metrics["train"],
        settings["arguments"],
    )
    adapter = (
        f"continued adapter {arguments['adapter']}"
        if arguments["adapter"]
        else f"new LoRA r={arguments['lora_r']} alpha={arguments['lora_alpha']}"
    )
    if resolved.get("resume_from_checkpoint"):
        adapter = (
            f"{'adapter ' + arguments['adapter'] if arguments['adapter'] else 'LoRA'} continued from "
            f"{resolved['resume_from_checkpoint']} (step {resolved['resumed_at_step']})"
        )
    if resolved["unfreeze_conv"]:
        adapter += " + conv1/conv2"
    best, baseline = metrics["best"], metrics["baseline"]
    at_step = f" at step {best['step']}" if best.get("step") is not None else ""
    out = report.output_dir
    lines = [
        "train_model.py summary",
        f"  data         {cache['examples']['train']} train / {cache['examples']['validation']} validation "
        f"examples from {cache['data_dir']} (fingerprint {cache['fingerprint'][:12]})",
        f"  model        {arguments['model']} + {adapter}, "
        f"{resolved['trainable_parameters']:,} of {resolved['total_parameters']:,} parameters trained",
        f"  precision    {resolved['precision_reason']}",
        f"  training     {_training_line(train, resolved)}",
        f"  baseline     {_score_line(baseline)}",
        f"  best         {_score_line(best)}{at_step}",
    ]
    if baseline and best.get("wer") is not None and best["wer"] >= baseline["wer"]:
        lines.append("  note         fine-tuning did not improve on the starting model's WER")
    for name, scores in (metrics.get("long_form") or {}).items():
        lines.append(f"  long-form    {name:<8} {_long_form_line(scores)}")
    lines += [
        f"  outputs      {out / ADAPTER_DIR}, {out / METRICS_FILE},",
        f"               {out / PREDICTIONS_FILE}, {out / CONFIG_FILE},",
        f"               {out / REPORT_FILE} (open it in a browser)",
        f"  tensorboard  tensorboard --logdir {out / 'runs'}",
    ]
    return "\n".join(lines)


def _long_form_line(scores: Mapping[str, Any]) -> str:
    """Whole validation recordings: what users deploy (see inference/longform.py)."""
    parts = [f"{scores['recordings']} recordings"]
    if scores["recordings"]:
        error = scores["timestamp_error"]
        parts += [
            f"WER {100 * scores['wer']:.1f}%",
            f"deletions {100 * scores['deletions']:.1f}%",
            f"coverage {100 * scores['coverage']:.0f}%",
            "timestamps n/a" if error is None else f"timestamps ±{error:.2f} s",
        ]
    parts.append(f"{scores['noise_words']} words on {scores['noise_recordings']} noise-only")
    return ", ".join(parts)
