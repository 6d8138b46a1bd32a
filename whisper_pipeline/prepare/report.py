"""What a prepare run tells: prepare_report.json (written last, it marks the cache complete) and the
one-screen summary printed at the end of the stage."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisper_pipeline import __version__
from whisper_pipeline.cache import FORMAT_VERSION, REPORT_NAME, SPLITS, TRAIN, VALIDATION
from whisper_pipeline.config import to_plain_dict
from whisper_pipeline.prepare.sources import listings
from whisper_pipeline.prepare.worker import UNSEGMENTED_OVER_30S, RecordingOutcome, RecordingWork

if TYPE_CHECKING:
    from whisper_pipeline.prepare.run import Failures, PrepareRun, PrepareSummary, RecordingResult, WorkPlan


def recording_meta(work: RecordingWork, outcome: RecordingOutcome) -> dict[str, Any]:
    """One recording's entry of recordings.json: its split and what became of it."""
    return {
        "split": work.split,
        "rows": outcome.rows,
        "windows": outcome.windows,
        "augmented_rows": outcome.augmented_rows,
        "no_speech_rows": outcome.no_speech_rows,
        "whole_recordings": outcome.whole_recordings,
        "audio_seconds": round(outcome.audio_seconds, 3),
        "failed": outcome.failed,
        "skips": [asdict(skip) for skip in outcome.skips],
    }


def build_report(
    run: PrepareRun,
    plan: WorkPlan,
    results: dict[str, RecordingResult],
    failures: Failures,
    *,
    elapsed: float,
    cache_bytes: int,
) -> dict[str, Any]:
    """prepare_report.json: what was built from what, what was left out and why, and how fast."""

    def per_split(field_name: str) -> dict[str, Any]:
        return {
            split: sum(r.meta[field_name] for r in results.values() if r.meta["split"] == split)
            for split in SPLITS
        }

    audio_seconds = {split: round(seconds, 3) for split, seconds in per_split("audio_seconds").items()}
    controls = run.inputs.controls
    origins = Counter(result.origin for result in results.values())
    to_retry = sum(1 for result in results.values() if result.source is None)
    return {
        "format_version": FORMAT_VERSION,
        # A build with downloads to retry is complete but not current: the next run retries them.
        "fingerprint": run.fingerprint if not to_retry else f"retry-needed:{run.fingerprint}",
        "processor_fingerprint": run.settings["processor"],
        "package_version": __version__,
        "model": str(run.model_dir),
        "annotations": run.inputs.annotations,
        "controls": {
            **{key: value for key, value in asdict(controls.settings).items() if key != "exclude_labels"},
            "found_in": dict(controls.found_in),
        },
        "settings": {**to_plain_dict(run.args), "augmentation": asdict(run.augmentation)},
        "tasks": {
            "read": run.inputs.parsed.tasks_read,
            "used": len({w.task_id for work in plan.works.values() for w in work.windows}),
        },
        "regions": dict(run.inputs.parsed.regions_by_kind),
        "recordings": {
            "total": plan.recordings_total,
            "computed": origins["computed"],
            "resumed": origins["resumed"],
            "reused": origins["reused"],
            "failed": failures.failed,
            "to_retry": to_retry,
        },
        "windows": per_split("windows"),
        "examples": per_split("rows"),
        "augmented_examples": sum(r.meta["augmented_rows"] for r in results.values()),
        "no_speech_examples": per_split("no_speech_rows"),
        "whole_recordings": per_split("whole_recordings")[VALIDATION],
        "transfers": {
            "objects": run.access.s3.stats.objects,
            "bytes": run.access.s3.stats.bytes,
            "retries": run.access.s3.stats.retries + run.access.http.retries,
        },
        "listings": [asdict(listing) for listing in listings(list(run.inputs.refs.values()))],
        "audio_seconds": audio_seconds,
        "skips": {
            "by_reason": dict(failures.by_reason),
            "items": [asdict(skip) for skip in failures.skips],
        },
        "elapsed_seconds": round(elapsed, 3),
        "audio_seconds_per_second": round(sum(audio_seconds.values()) / elapsed, 2),
        "cache_bytes": cache_bytes,
    }


def format_summary(summary: PrepareSummary) -> str:
    """The one-screen summary printed at the end of the stage."""
    report = summary.report
    if summary.current:
        return (
            f"cache is current: {report['examples']['train']} train + {report['examples']['validation']} "
            f"validation examples in {report.get('settings', {}).get('output_dir', '')} "
            f"(fingerprint {report['fingerprint'][:12]}); nothing to do (--force rebuilds)"
        )
    recordings, skips = report["recordings"], report["skips"]["by_reason"]
    controls = report["controls"]
    found_in = controls["found_in"]
    label = f'"{controls["label_from_name"]}"' if controls["label_from_name"] else "none"
    lines = [
        "prepare_data.py summary",
        f"  annotations  {report['annotations']}",
        f'  controls     text "{controls["text_from_name"]}" ({found_in["text_from_name"]}), labels {label} '
        f"({found_in['label_from_name']}), audio ${controls['audio_key']} ({found_in['audio_key']})",
        f"  tasks        {report['tasks']['used']} used of {report['tasks']['read']} read",
        f"  recordings   {recordings['total']}: {recordings['computed']} computed, "
        f"{recordings['resumed']} resumed, {recordings['reused']} reused, {recordings['failed']} failed, "
        f"{recordings['to_retry']} to retry",
    ]
    for split in (TRAIN, VALIDATION):
        lines.append(
            f"  {split:<12} {report['windows'][split]} windows, {report['examples'][split]} examples, "
            f"{report['audio_seconds'][split] / 60:.1f} audio-min"
        )
    lines += [
        f"  augmented    {report['augmented_examples']} examples",
        f"  no-speech    {sum(report['no_speech_examples'].values())} examples (excluded audio, no text)",
        "  long-form    " + _whole_recordings(report["whole_recordings"]),
        f"  skips        {sum(skips.values())}"
        + (": " + ", ".join(f"{reason} {count}" for reason, count in skips.items()) if skips else ""),
        f"  speed        {report['elapsed_seconds']:.1f} s, "
        f"{report['audio_seconds_per_second']:.0f} audio-seconds per second",
        f"  cache        {report['cache_bytes'] / 2**20:.1f} MiB in {report['settings']['output_dir']}"
        f" (report: {Path(report['settings']['output_dir']) / REPORT_NAME})",
    ]
    if skips.get(UNSEGMENTED_OVER_30S):
        lines.append(
            f"  note         {skips[UNSEGMENTED_OVER_30S]} whole-file transcriptions of recordings over "
            f"{report['settings']['max_window_seconds']:g} s were left out: draw regions with a "
            'transcription each (Label Studio\'s "ASR using Segments" template) to train on them'
        )
    if recordings["to_retry"]:
        lines.append(
            f"  note         {recordings['to_retry']} downloads failed transiently: rerun to retry them"
        )
    return "\n".join(lines)


def _whole_recordings(count: int) -> str:
    if not count:
        return "none (no validation recording over 30 s, of several utterances, or of noise only)"
    recordings = "recording" if count == 1 else "recordings"
    return f"{count} validation {recordings} kept whole (transcribed at the end of training)"
