"""prepare_data.py on what a real Label Studio (1.23.2) writes: projects made with its built-in ASR
templates, tasks imported as local files, uploads and http URLs, annotations posted as its editor submits
them, exports downloaded from its API, prepared with default flags; and straight from the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.label_studio import LabelStudioServer
from whisper_pipeline.cache import open_cache
from whisper_pipeline.constants import SAMPLE_RATE, TIME_PRECISION
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.run import SERVER_EXPORT_NAME, PrepareArguments, run_prepare
from whisper_pipeline.testing.http_files import HttpFileServer
from whisper_pipeline.testing.synthetic import Part, compose, encode_audio, synthesize

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
HELLO, WEATHER, THANKS = "Xin chào các bạn.", "Hôm nay trời đẹp quá.", "Cảm ơn bạn rất nhiều."
NOISE_TEXT = "[ồn]"


def _write(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(samples, SAMPLE_RATE, "wav"))
    return path


def _prepare(tmp_path: Path, model: Path, **flags) -> dict:
    """prepare with default control flags: only where things are, and no augmentation or validation."""
    environ = flags.pop("environ", {})
    args = PrepareArguments(
        model=str(model),
        output_dir=str(tmp_path / "cache"),
        val_fraction=0.0,
        augment_copies=0,
        num_workers=1,
        **flags,
    )
    return run_prepare(args, AugmentationSettings(), environ=environ).report


def _kept(cache_dir: Path) -> dict[str, list[dict]]:
    rows = open_cache(cache_dir).train.select_columns(["audio_uri", "text", "start", "end", "labels"])
    kept: dict[str, list[dict]] = {}
    for row in rows.to_list():
        kept.setdefault(row["audio_uri"], []).append(row)
    return kept


def _region(region_id: str, start: float, end: float, label: str, text: str | None) -> list[dict]:
    """A region as the editor submits it: a labels result and, if typed, a per-region textarea result."""
    span = {"start": start, "end": end, "channel": 0}
    results = [
        {"value": {**span, "labels": [label]}, "id": region_id, "from_name": "labels", "to_name": "audio",
         "type": "labels", "origin": "manual"},
    ]  # fmt: skip
    if text is not None:
        results.append(
            {"value": {**span, "text": [text]}, "id": region_id, "from_name": "transcription",
             "to_name": "audio", "type": "textarea", "origin": "manual"}
        )  # fmt: skip
    return results


def test_whole_file_template_keeps_each_short_file_whole_and_counts_long_ones(
    label_studio: LabelStudioServer, tiny_model_dir, tmp_path
):
    """The built-in "Automatic Speech Recognition" template: one transcription per file, no regions."""
    folder = label_studio.files_root / "asr"
    hello, weather = synthesize(HELLO), synthesize(WEATHER)
    _write(folder / "hello.wav", hello)
    _write(folder / "weather.wav", weather)
    _write(folder / "long.wav", np.concatenate([hello, np.zeros(31 * SAMPLE_RATE, np.float32)]))
    project = label_studio.create_project("asr", label_studio.template("automatic-speech-recognition"))
    label_studio.add_local_storage(project, folder)
    typed = {"hello.wav": [HELLO], "weather.wav": ["Hôm nay\ntrời đẹp quá."], "long.wav": [HELLO]}
    for task in label_studio.tasks(project):
        name = task["data"]["audio"].rsplit("/", 1)[-1]
        result = {"value": {"text": typed[name]}, "id": f"id-{name[:4]}", "from_name": "transcription",
                  "to_name": "audio", "type": "textarea", "origin": "manual"}  # fmt: skip
        label_studio.annotate(task["id"], [result])
    export = tmp_path / "export.json"
    export.write_bytes(label_studio.export(project))

    report = _prepare(
        tmp_path, tiny_model_dir, annotations=str(export), local_files_root=str(label_studio.files_root),
        max_skip_fraction=0.5,
    )  # fmt: skip
    assert report["controls"]["text_from_name"] == "transcription"
    assert report["controls"]["label_from_name"] is None
    assert report["controls"]["audio_key"] == "audio"
    assert report["skips"]["by_reason"] == {"unsegmented_over_30s": 1}
    kept = _kept(tmp_path / "cache")
    assert {uri.rsplit("/", 1)[-1]: [row["text"] for row in rows] for uri, rows in kept.items()} == {
        "hello.wav": [HELLO],
        "weather.wav": [WEATHER],
    }
    for uri, (row,) in kept.items():
        duration = len(hello if uri.endswith("hello.wav") else weather) / SAMPLE_RATE
        assert (row["start"], row["end"]) == (0.0, pytest.approx(duration, abs=1 / SAMPLE_RATE))
        # the end timestamp is the decoded duration's: <|start|> text <|end|> <|endoftext|>
        assert row["labels"][-2] - row["labels"][3] == round(duration / TIME_PRECISION)


@pytest.fixture(scope="module")
def segments_project(label_studio: LabelStudioServer, tmp_path_factory):
    """The built-in "ASR using Segments" template (Labels "labels": Speech / Noise, a required per-region
    transcription, so Noise regions carry typed text too) over a local file, an upload and an http URL."""
    staging = tmp_path_factory.mktemp("segments-audio")
    hello, weather, thanks = synthesize(HELLO), synthesize(WEATHER), synthesize(THANKS)
    buzz = np.full(SAMPLE_RATE // 2, 0.01, np.float32)
    recordings = {
        "local": compose([Part(hello, HELLO), Part(buzz, NOISE_TEXT, "Noise"), Part(weather, WEATHER)]),
        "upload": compose([Part(thanks, THANKS), Part(buzz, NOISE_TEXT, "Noise")]),
        "http": compose([Part(weather, WEATHER, "speech")]),  # the label in another case
    }
    _write(label_studio.files_root / "segments" / "local.wav", recordings["local"][0])
    _write(staging / "upload.wav", recordings["upload"][0])
    _write(staging / "web" / "http clip.wav", recordings["http"][0])
    files = HttpFileServer(staging / "web").__enter__()
    project = label_studio.create_project(
        "segments", label_studio.template("automatic-speech-recognition-using-segments")
    )
    label_studio.add_local_storage(project, label_studio.files_root / "segments")
    label_studio.upload(project, staging / "upload.wav")
    http_url = f"{files.url}/http%20clip.wav?X-Amz-Signature=secret-signature&X-Amz-Expires=600"
    label_studio.import_tasks(project, [{"audio": http_url}])
    for task in label_studio.tasks(project):
        uri = task["data"]["audio"]
        kind = "upload" if "/upload/" in uri else "local" if "local-files" in uri else "http"
        results = [
            result
            for index, region in enumerate(recordings[kind][1])
            for result in _region(f"{kind[:3]}{index}", region.start, region.end, region.label, region.text)
        ]
        label_studio.annotate(task["id"], results)
    expected = {"local": f"{HELLO} {WEATHER}", "upload": THANKS, "http": WEATHER}
    yield project, expected, files
    files.__exit__(None, None, None)


def _by_kind(kept: dict[str, list[dict]]) -> dict[str, str]:
    """Each recording's kept text (its windows' in order), by where its audio came from."""

    def kind(uri: str) -> str:
        return "upload" if "/upload/" in uri else "local" if "local-files" in uri else "http"

    return {kind(uri): " ".join(row["text"] for row in rows if row["text"]) for uri, rows in kept.items()}


def test_segments_template_keeps_speech_never_noise_text_from_three_sources(
    label_studio: LabelStudioServer, segments_project, tiny_model_dir, tmp_path
):
    project, expected, files = segments_project
    export = tmp_path / "export.json"
    export.write_bytes(label_studio.export(project))
    report = _prepare(
        tmp_path, tiny_model_dir, annotations=str(export),
        local_files_root=str(label_studio.files_root), upload_root=str(label_studio.upload_root),
    )  # fmt: skip
    assert report["controls"]["label_from_name"] == "labels"
    assert report["controls"]["found_in"]["label_from_name"] == "export"
    assert report["skips"]["by_reason"] == {"excluded_label": 2}
    kept = _kept(tmp_path / "cache")
    assert _by_kind(kept) == expected
    assert not any(NOISE_TEXT in row["text"] for rows in kept.values() for row in rows)
    serialized = json.dumps(report)
    assert "secret-signature" not in serialized and "X-Amz" not in serialized
    assert "/http clip.wav" in files.requests


def test_straight_from_the_server_with_default_flags(
    label_studio: LabelStudioServer, segments_project, tiny_model_dir, tmp_path
):
    """--label-studio-url and --project, the key from the environment; audio of local files and uploads
    through the server; the export kept in the output folder; a rerun is current; the key never shown."""
    project, expected, _ = segments_project
    output = tmp_path / "cache"
    command = [
        sys.executable, "prepare_data.py", "--project", str(project), "--model", str(tiny_model_dir),
        "--output-dir", str(output), "--val-fraction", "0", "--augment-copies", "0", "--num-workers", "1",
    ]  # fmt: skip
    env = {**os.environ, **label_studio.env}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 'labels "labels" (label config)' in first.stdout
    assert _by_kind(_kept(output)) == expected
    kept_export = json.loads((output / SERVER_EXPORT_NAME).read_bytes())
    assert len(kept_export) == 3
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "cache is current" in again.stdout, again.stdout + again.stderr[-2000:]
    for text in (
        first.stdout,
        first.stderr,
        again.stdout,
        again.stderr,
        (output / "prepare_report.json").read_text(),
    ):
        assert label_studio.token not in text

    wrong = subprocess.run(
        command, cwd=REPO, env={**env, "LABEL_STUDIO_API_KEY": "not-the-key"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2 and "LABEL_STUDIO_API_KEY" in wrong.stderr, wrong.stderr[-2000:]
    assert "not-the-key" not in wrong.stderr + wrong.stdout
