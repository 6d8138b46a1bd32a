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
import soundfile as sf

from tests.fixtures.label_studio import LabelStudioServer, region_results
from whisper_pipeline.cache import open_cache
from whisper_pipeline.constants import SAMPLE_RATE, TIME_PRECISION
from whisper_pipeline.errors import ConfigError
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.http import HttpAccess, HttpSettings, origin
from whisper_pipeline.prepare.label_studio import LabelStudioClient, LabelStudioSettings
from whisper_pipeline.prepare.report import format_summary
from whisper_pipeline.prepare.run import (
    SERVER_EXPORT_NAME,
    PrepareArguments,
    PrepareSummary,
    main,
    run_prepare,
)
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


def _run(tmp_path: Path, model: Path, **flags) -> PrepareSummary:
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
    return run_prepare(args, AugmentationSettings(), environ=environ)


def _prepare(tmp_path: Path, model: Path, **flags) -> dict:
    return _run(tmp_path, model, **flags).report


def _kept(cache_dir: Path) -> dict[str, list[dict]]:
    rows = open_cache(cache_dir).train.select_columns(["audio_uri", "text", "start", "end", "labels"])
    kept: dict[str, list[dict]] = {}
    for row in rows.to_list():
        kept.setdefault(row["audio_uri"], []).append(row)
    return kept


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


def test_speech_transcription_template_straight_from_the_server(
    label_studio: LabelStudioServer, tiny_model_dir, tmp_path
):
    """The built-in "Speech Transcription" template (Labels "label"; per-region TextArea and Choices shown
    for Speech only, so a Noise region is a labels result alone), read with --project, its audio through
    the server."""
    hello, weather = synthesize(HELLO), synthesize(WEATHER)
    buzz = np.full(SAMPLE_RATE // 2, 0.01, np.float32)
    samples, regions = compose([Part(hello, HELLO), Part(buzz, "", "Noise"), Part(weather, WEATHER)])
    _write(label_studio.files_root / "speech-transcription" / "call.wav", samples)
    project = label_studio.create_project("speech", label_studio.template("speech-transcription"))
    label_studio.add_local_storage(project, label_studio.files_root / "speech-transcription")
    results = []
    for index, region in enumerate(regions):
        span = {"start": region.start, "end": region.end, "channel": 0}
        region_id, label = f"st{index}", region.label.capitalize()
        results.append(
            {"value": {**span, "labels": [label]}, "id": region_id, "from_name": "label", "to_name": "audio",
             "type": "labels", "origin": "manual"}
        )  # fmt: skip
        if label == "Speech":
            results += [
                {"value": {**span, "text": [region.text]}, "id": region_id, "from_name": "transcription",
                 "to_name": "audio", "type": "textarea", "origin": "manual"},
                {"value": {**span, "choices": ["Neutral"]}, "id": region_id, "from_name": "sentiment",
                 "to_name": "audio", "type": "choices", "origin": "manual"},
            ]  # fmt: skip
    (task,) = label_studio.tasks(project)
    label_studio.annotate(task["id"], results)

    report = _prepare(
        tmp_path, tiny_model_dir, label_studio_url=label_studio.url, project=project, environ=label_studio.env
    )
    assert report["controls"]["text_from_name"] == "transcription"
    assert report["controls"]["label_from_name"] == "label"
    assert report["controls"]["found_in"]["label_from_name"] == "label config"
    assert report["skips"]["by_reason"] == {"excluded_label": 1}
    assert _by_kind(_kept(tmp_path / "cache")) == {"local": f"{HELLO} {WEATHER}"}  # the Noise region cut out


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
            for result in region_results(
                f"{kind[:3]}{index}", region.start, region.end, region.label, region.text
            )
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


def test_label_config_flag_and_a_changed_http_file_is_recomputed_alone(
    label_studio: LabelStudioServer, segments_project, tiny_model_dir, tmp_path, capsys
):
    """prepare_data.py's flags with --label-config FILE.xml: the controls named by it; an unchanged rerun
    is current; an http file changed on its server (same duration, other content) is recomputed, the others
    reused."""
    project, expected, files = segments_project
    export, config = tmp_path / "export.json", tmp_path / "config.xml"
    export.write_bytes(label_studio.export(project))
    config.write_text(label_studio.template("automatic-speech-recognition-using-segments"), encoding="utf-8")
    output = tmp_path / "cache"
    argv = [
        "--annotations", str(export), "--label-config", str(config), "--model", str(tiny_model_dir),
        "--output-dir", str(output), "--val-fraction", "0", "--augment-copies", "0", "--num-workers", "1",
        "--local-files-root", str(label_studio.files_root), "--upload-root", str(label_studio.upload_root),
    ]  # fmt: skip
    assert main(argv) == 0
    assert 'labels "labels" (label config)' in capsys.readouterr().out
    assert _by_kind(_kept(output)) == expected
    assert main(argv) == 0
    assert "cache is current" in capsys.readouterr().out

    clip = files.root / "http clip.wav"
    original = clip.read_bytes()
    samples, _ = sf.read(clip, dtype="float32")
    try:
        _write(clip, samples * 0.5)
        assert main(argv) == 0
        assert "cache is current" not in capsys.readouterr().out
        recordings = json.loads((output / "prepare_report.json").read_text())["recordings"]
        assert (recordings["computed"], recordings["reused"]) == (1, 2)
        assert _by_kind(_kept(output)) == expected
    finally:
        clip.write_bytes(original)


def test_a_personal_access_token_reads_the_project_and_a_new_annotation_rebuilds(
    label_studio: LabelStudioServer, segments_project, personal_access_token, tiny_model_dir, tmp_path
):
    """LABEL_STUDIO_API_KEY a personal access token: exchanged for access tokens (Bearer) for the API and
    the audio served by the server; a rerun is current until an annotation is posted, then rebuilds."""
    project, expected, _ = segments_project
    environ = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": personal_access_token}
    first = _run(tmp_path, tiny_model_dir, project=project, environ=environ)
    assert not first.current and _by_kind(_kept(tmp_path / "cache")) == expected
    assert _run(tmp_path, tiny_model_dir, project=project, environ=environ).current

    (task,) = [task for task in label_studio.tasks(project) if task["data"]["audio"].startswith("http://")]
    (previous,) = label_studio.api("GET", f"/api/tasks/{task['id']}/annotations")
    corrected = "Hôm nay trời đẹp."
    edited = [
        {**result, "value": {**result["value"], "text": [corrected]}}
        if result["type"] == "textarea"
        else result
        for result in previous["result"]
    ]
    label_studio.annotate(task["id"], edited)  # the newest annotation is the one read
    try:
        rebuilt = _run(tmp_path, tiny_model_dir, project=project, environ=environ)
        assert not rebuilt.current and "cache is current" not in format_summary(rebuilt)
        assert (rebuilt.report["recordings"]["computed"], rebuilt.report["recordings"]["reused"]) == (1, 2)
        assert _by_kind(_kept(tmp_path / "cache")) == {**expected, "http": corrected}
    finally:
        label_studio.annotate(task["id"], previous["result"])  # the fixture's annotation, newest again
    for path in (tmp_path / "cache").iterdir():
        if path.is_file():
            assert personal_access_token.encode() not in path.read_bytes()


def test_an_expired_access_token_is_exchanged_again(
    label_studio: LabelStudioServer, segments_project, personal_access_token
):
    """Access tokens last minutes, a run hours: a 401 to a Bearer token exchanges the personal access token
    again and repeats the request once."""
    project = segments_project[0]
    settings = LabelStudioSettings(label_studio.url, personal_access_token)
    http = HttpAccess(
        HttpSettings(
            token=settings.api_key,
            token_origin=origin(settings.url),
            token_refresh_url=settings.token_refresh_url,
        )
    )
    client = LabelStudioClient(settings, http)
    assert "<Labels" in client.label_config(project)
    http._access_token = "expired"  # as an access token the server no longer accepts
    assert "<Labels" in client.label_config(project)
    assert http._access_token != "expired"
    wrong = LabelStudioSettings(label_studio.url, personal_access_token[:-4] + "AAAA")  # a bad signature
    bad = HttpAccess(
        HttpSettings(
            token=wrong.api_key, token_origin=origin(wrong.url), token_refresh_url=wrong.token_refresh_url
        )
    )
    with pytest.raises(ConfigError, match=r"rejected LABEL_STUDIO_API_KEY \(401\)") as rejected:
        LabelStudioClient(wrong, bad).label_config(project)
    assert personal_access_token[:20] not in str(rejected.value)


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
