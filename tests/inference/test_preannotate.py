"""preannotate: the shape of a prediction, the model's identity, what a prediction saves an annotator
(units); and, with a real Label Studio (1.23.2) server and the tiny model, predictions posted into a
segments project and a whole-file project, reruns that post nothing, a dry run, and file mode (e2e)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.label_studio import LabelStudioServer
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.errors import ConfigError
from whisper_pipeline.inference.export import CTranslate2Arguments, to_ctranslate2
from whisper_pipeline.inference.preannotate import (
    ModelIdentity,
    PreannotateArguments,
    PreannotateSummary,
    main,
    model_identity,
    prediction_shape,
    region_segments,
    run_preannotate,
    score_predictions,
    select_tasks,
)
from whisper_pipeline.inference.transcribe import (
    Segment,
    TranscribeArguments,
    Transcript,
    transformers_transcriber,
)
from whisper_pipeline.prepare.annotations import AnnotationSettings
from whisper_pipeline.prepare.audio import decode_audio
from whisper_pipeline.testing.synthetic import encode_audio, synthesize

REPO = Path(__file__).resolve().parents[2]
# the built-in templates' configs as Label Studio 1.23.2 ships them (annotation_templates/)
SEGMENTS_CONFIG = """<View>
  <Labels name="labels" toName="audio"><Label value="Speech" /><Label value="Noise" /></Labels>
  <Audio name="audio" value="$audio"/>
  <TextArea name="transcription" toName="audio" rows="2" editable="true" perRegion="true" required="true" />
</View>"""
WHOLE_FILE_CONFIG = """<View>
  <Audio name="audio" value="$audio" zoom="true" hotkey="ctrl+enter" />
  <Header value="Transcribe the audio" />
  <TextArea name="transcription" toName="audio" rows="4" editable="true" maxSubmissions="1" />
</View>"""
ALL_TASKS = "exportType=JSON&download_all_tasks=true"  # the export with unannotated tasks
MAX_NEW_TOKENS = 8  # a random model writes up to Whisper's 448 tokens per window otherwise


def _segment(start: float, end: float, text: str, logprob: float | None = None, tokens: int | None = None):
    return Segment(start, end, text, avg_logprob=logprob, tokens=tokens)


def test_regions_without_length_join_a_neighbour():
    segments = [
        _segment(0.0, 0.0, "a", -1.0, 1),  # before any region: joins the next
        _segment(0.0, 1.5, "b", -2.0, 3),
        _segment(1.5, 1.5, "c", -4.0, 4),  # joins the one before
        _segment(2.0, 3.0, "d"),
    ]
    regions = region_segments(segments)
    assert [(r.start, r.end, r.text) for r in regions] == [(0.0, 1.5, "a b c"), (2.0, 3.0, "d")]
    assert regions[0].avg_logprob == pytest.approx((-1.0 * 1 - 2.0 * 3 - 4.0 * 4) / 8)
    assert regions[0].tokens == 8
    assert [r.text for r in region_segments([_segment(1.0, 1.0, "x")])] == ["x"]


def test_prediction_shape_follows_the_labelling_config():
    transcript = Transcript(
        "a.wav", 4.0, "vi", "xin chào các bạn",
        [_segment(0.5, 1.5, "xin chào", math.log(0.5), 2), _segment(1.5, 3.0, "các bạn", math.log(0.8), 2)],
    )  # fmt: skip
    args = PreannotateArguments(annotations="x", output="y")
    task = [{"id": 1, "data": {"audio": "s3://b/a.wav"}}]

    shape = prediction_shape(task, args, SEGMENTS_CONFIG)
    results = shape.results(transcript)
    assert [(r["id"], r["type"], r["from_name"], r["to_name"]) for r in results] == [
        ("seg0000", "labels", "labels", "audio"),
        ("seg0000", "textarea", "transcription", "audio"),
        ("seg0001", "labels", "labels", "audio"),
        ("seg0001", "textarea", "transcription", "audio"),
    ]
    assert results[0]["value"] == {"start": 0.5, "end": 1.5, "channel": 0, "labels": ["Speech"]}
    assert results[1]["value"] == {"start": 0.5, "end": 1.5, "channel": 0, "text": ["xin chào"]}
    assert results[2]["score"] == 0.8

    whole = prediction_shape(task, args, WHOLE_FILE_CONFIG)
    (result,) = whole.results(transcript)
    assert result["value"] == {"text": ["xin chào các bạn"]} and result["from_name"] == "transcription"
    assert result["score"] == round(math.sqrt(0.5 * 0.8), 4)  # the geometric mean of the four tokens
    assert whole.results(Transcript("a.wav", 4.0, "vi", "", [])) == []

    with pytest.raises(ConfigError, match="--speech-label"):
        prediction_shape(task, PreannotateArguments(exclude_labels=["speech", "noise"]), SEGMENTS_CONFIG)


def test_model_version_names_base_hash_and_date_and_a_copy_is_the_same_model(tmp_path):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/models/whisper-base"})
    )
    identity = model_identity(tmp_path / "model", adapter)
    assert identity.version.startswith("whisper-base adapter ") and " trained 20" in identity.version
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "adapter_model.safetensors").write_bytes(b"weights")
    copied = model_identity(tmp_path / "model", copy)
    assert copied.made(identity.version) and not ModelIdentity("x", "0" * 12, "", True).made(identity.version)
    assert " written 20" in model_identity(copy, None).version  # a model's own weights are not trained here


def _annotated(task_id: int, audio: str, results: list[dict]) -> dict:
    return {"id": task_id, "data": {"audio": audio}, "annotations": [{"id": task_id, "result": results}]}


def _region(region_id: str, start: float, end: float, text: str) -> list[dict]:
    span = {"start": start, "end": end, "channel": 0}
    return [
        {"id": region_id, "from_name": "labels", "to_name": "audio", "type": "labels",
         "value": {**span, "labels": ["Speech"]}},
        {"id": region_id, "from_name": "transcription", "to_name": "audio", "type": "textarea",
         "value": {**span, "text": [text]}},
    ]  # fmt: skip


def _whole(text: str) -> dict:
    return {"id": "t", "from_name": "transcription", "to_name": "audio", "type": "textarea",
            "value": {"text": [text]}}  # fmt: skip


def test_score_predictions_counts_the_typing_saved():
    """Task 1 (regions): one word of six lost, boundaries off by 0.2 and 0.4 s at one end each. Task 2
    (whole file): three words, four edits (one substitution, three insertions): nothing saved."""
    export = [
        _annotated(
            1, "s3://b/1.wav", _region("a", 0.5, 2.0, "xin chào các bạn") + _region("b", 3.0, 4.0, "hôm nay")
        ),
        _annotated(2, "s3://b/2.wav", [_whole("một hai ba")]),
        {"id": 3, "data": {"audio": "s3://b/3.wav"}, "annotations": []},
    ]
    regions = _region("p", 0.7, 2.0, "xin chào bạn") + _region("q", 3.0, 4.4, "hôm nay")
    predictions = [
        {"task": 1, "model_version": "m", "result": regions},
        {"task": 2, "model_version": "m", "result": [_whole("một hai bốn năm sáu bảy")]},
        {"task": 2, "model_version": "other", "result": []},
    ]
    settings = AnnotationSettings(label_from_name="labels")
    scores = score_predictions(export, predictions, settings, model_version="m")
    assert scores["tasks"] == 2
    assert scores["reference_words"] == 9 and scores["words_saved"] == 5
    assert scores["wer"] == pytest.approx(5 / 9)
    assert scores["boundary_error"] == pytest.approx(((0.2 + 0.0) / 2 + (0.0 + 0.4) / 2) / 2)
    # a file run's tasks (data and predictions) are matched by their audio
    as_tasks = [{"data": {"audio": "s3://b/1.wav"}, "predictions": [predictions[0]]}]
    assert score_predictions(export, as_tasks, settings)["words_saved"] == 5
    assert score_predictions(export, predictions, model_version="m") == scores  # controls found in the export


def test_tasks_are_chosen_and_the_others_counted():
    identity = ModelIdentity("base", "abcdef012345", "2026-12-07", True)
    document = [
        {"id": 1, "data": {"audio": "a.wav"}, "annotations": [{"result": []}]},
        {"id": 2, "data": {"audio": "b.wav"}},
        {"id": 3, "data": {"audio": "c.wav"}},
        {"id": 4, "data": {"audio": "d.wav"}},
        {"id": 5, "data": {}},
        {"id": 6, "data": {"audio": "f.wav"}},
    ]
    existing = {2: [{"id": 20, "model_version": identity.version}], 3: [{"id": 30, "model_version": "other"}]}

    def chosen(**flags) -> tuple[list, dict]:
        outcomes = Counter()
        work = select_tasks(document, PreannotateArguments(**flags), identity, existing, "audio", outcomes)
        return [(item.task_id, item.replaces) for item in work], dict(outcomes)

    assert chosen() == (
        [(4, ()), (6, ())],
        {"annotated": 1, "already_predicted": 1, "predicted_by_another_model": 1, "no_audio": 1},
    )
    assert chosen(replace=True, limit=2) == (
        [(3, (30,)), (4, ())],
        {"annotated": 1, "already_predicted": 1, "no_audio": 1, "beyond_limit": 1},
    )
    told = PreannotateSummary("m", "project 1", {"predicted": 2, "beyond_limit": 1}).format()
    assert told.endswith(
        "\n  beyond_limit: tasks past --limit wait for the next run (a rerun goes on where this one stopped)"
    )
    assert chosen(annotated=True, tasks=[1, 2])[0] == [(1, ())]
    with pytest.raises(ConfigError, match="no task 9 in the project"):
        chosen(tasks=[1, 9])


def test_user_mistakes_are_one_line_errors(capsys, tmp_path):
    assert main(["--project", "1", "--annotations", "x.json"]) == 2
    assert main(["--annotations", "x.json"]) == 2
    assert main(["--annotations", str(tmp_path / "none.json"), "--output", str(tmp_path / "o.json"),
                 "--model", str(tmp_path)]) == 2  # fmt: skip
    assert main(["--project", "1", "--output", "p.json", "--model", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("error: give --project")
    assert errors[1] == "error: --annotations writes its predictions to --output FILE: give one"
    assert errors[2].startswith("error: ") and "none of" in errors[2]
    assert errors[3] == "error: --output is where --dry-run writes: with --project, predictions are posted"


# --- with a real Label Studio server -----------------------------------------------------------------


def _write(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(samples, SAMPLE_RATE, "wav"))
    return path


def _args(tiny_model_dir: Path, **flags) -> PreannotateArguments:
    return PreannotateArguments(
        model=str(tiny_model_dir), language="vi", max_new_tokens=MAX_NEW_TOKENS, batch_size=2, **flags
    )


def _transcribe(tiny_model_dir: Path, *paths: Path) -> list[str]:
    """What `transcribe` writes for each file alone (as each was predicted here: a batch pads its short
    recordings to its longest): the texts their predictions must hold."""
    settings = TranscribeArguments(model=str(tiny_model_dir), language="vi", max_new_tokens=MAX_NEW_TOKENS)
    transcribe = transformers_transcriber(tiny_model_dir, settings, "vi")
    return [transcribe([(path.name, decode_audio(path.read_bytes()))])[0].text for path in paths]


def _predictions(server: LabelStudioServer, project: int) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for prediction in server.api("GET", f"/api/predictions?project={project}"):
        found.setdefault(prediction["task"], []).append(prediction)
    return found


def _names(server: LabelStudioServer, project: int) -> dict[str, int]:
    return {task["data"]["audio"].rsplit("/", 1)[-1]: task["id"] for task in server.tasks(project)}


@pytest.mark.e2e
def test_segments_project_regions_rerun_replace_and_dry_run(label_studio, tiny_model_dir, tmp_path):
    """A segments project (the "ASR using Segments" template): two unannotated recordings (one over 30 s),
    one annotated, one whose audio is missing. Audio comes through the server."""
    folder = label_studio.files_root / "preannotate-segments"
    hello = synthesize("Xin chào các bạn.")
    long = np.concatenate([hello, np.zeros(30 * SAMPLE_RATE, np.float32), hello])  # two 30 s windows
    files = {name: _write(folder / name, samples) for name, samples in
             (("hello.wav", hello), ("long.wav", long), ("done.wav", hello))}  # fmt: skip
    project = label_studio.create_project("preannotate segments", SEGMENTS_CONFIG)
    label_studio.add_local_storage(project, folder)
    label_studio.import_tasks(project, [{"audio": "/data/local-files/?d=preannotate-segments/missing.wav"}])
    tasks = _names(label_studio, project)
    label_studio.annotate(tasks["done.wav"], _region("a", 0.1, 1.0, "xin chào"))
    theirs = {"task": tasks["long.wav"], "model_version": "someone else", "result": []}
    label_studio.api("POST", f"/api/projects/{project}/import/predictions", [theirs])
    env = {**os.environ, **label_studio.env}
    flags = ["--project", str(project), "--model", str(tiny_model_dir), "--language", "vi"]
    flags += ["--max-new-tokens", str(MAX_NEW_TOKENS)]

    dry = tmp_path / "dry.json"
    command = [
        sys.executable,
        "-m",
        "whisper_pipeline.inference.preannotate",
        *flags,
        "--dry-run",
        "--output",
        str(dry),
    ]
    ran = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "annotated 1, missing_object 1, predicted 1, predicted_by_another_model 1" in ran.stdout
    assert label_studio.token not in ran.stdout + ran.stderr
    assert not re.search(r"warn|generation flags|return_segments", ran.stderr, re.IGNORECASE), ran.stderr
    (would_post,) = json.loads(dry.read_text())
    assert would_post["task"] == tasks["hello.wav"]
    assert sum(map(len, _predictions(label_studio, project).values())) == 1  # only someone else's

    first = run_preannotate(_args(tiny_model_dir, project=project), environ=label_studio.env)
    assert first.outcomes == {
        "predicted": 1,
        "annotated": 1,
        "missing_object": 1,
        "predicted_by_another_model": 1,
    }
    replaced = run_preannotate(_args(tiny_model_dir, project=project, replace=True), environ=label_studio.env)
    assert replaced.outcomes == {"replaced": 1, "already_predicted": 1, "annotated": 1, "missing_object": 1}
    again = run_preannotate(_args(tiny_model_dir, project=project, replace=True), environ=label_studio.env)
    assert again.outcomes == {"already_predicted": 2, "annotated": 1, "missing_object": 1}

    posted = _predictions(label_studio, project)
    assert sorted(posted) == sorted([tasks["hello.wav"], tasks["long.wav"]])
    assert {p["model_version"] for ps in posted.values() for p in ps} == {first.model_version}
    assert posted[tasks["hello.wav"]][0]["result"] == would_post["result"]  # what the dry run wrote
    names = ("hello.wav", "long.wav")
    expected = dict(zip(names, _transcribe(tiny_model_dir, *(files[name] for name in names)), strict=True))
    for name, transcript in expected.items():
        (prediction,) = posted[tasks[name]]
        duration = len(decode_audio(files[name].read_bytes())) / SAMPLE_RATE
        results = prediction["result"]
        labels = [r for r in results if r["type"] == "labels"]
        texts = [r for r in results if r["type"] == "textarea"]
        assert labels and [r["id"] for r in labels] == [r["id"] for r in texts]
        assert all(r["value"]["labels"] == ["Speech"] and r["from_name"] == "labels" for r in labels)
        for label, text in zip(labels, texts, strict=True):
            assert 0 <= label["value"]["start"] < label["value"]["end"] <= duration + 0.01
            assert (text["value"]["start"], text["value"]["end"]) == (
                label["value"]["start"],
                label["value"]["end"],
            )
        assert " ".join(r["value"]["text"][0] for r in texts) == transcript
        assert 0 < prediction["score"] <= 1
    exported = label_studio.api("GET", f"/api/projects/{project}/export?{ALL_TASKS}")
    assert {t["id"]: t["predictions"] for t in exported}[tasks["hello.wav"]] == [
        posted[tasks["hello.wav"]][0]["id"]
    ]


@pytest.mark.e2e
def test_whole_file_project_and_file_mode(label_studio, tiny_model_dir, tmp_path):
    """The "Automatic Speech Recognition" template: one transcript per task, no regions; then the same
    project's export in file mode, whose output a new project imports with its predictions."""
    folder = label_studio.files_root / "preannotate-whole"
    audio = _write(folder / "hello.wav", synthesize("Hôm nay trời đẹp quá."))
    project = label_studio.create_project("preannotate whole file", WHOLE_FILE_CONFIG)
    label_studio.add_local_storage(project, folder)
    summary = run_preannotate(_args(tiny_model_dir, project=project), environ=label_studio.env)
    assert summary.outcomes == {"predicted": 1}
    ((prediction,),) = _predictions(label_studio, project).values()
    (result,) = prediction["result"]
    assert result["type"] == "textarea" and set(result["value"]) == {"text"}
    assert result["value"]["text"] == _transcribe(tiny_model_dir, audio)

    export, config = tmp_path / "export.json", tmp_path / "config.xml"
    export.write_text(json.dumps(label_studio.api("GET", f"/api/projects/{project}/export?{ALL_TASKS}")))
    config.write_text(WHOLE_FILE_CONFIG)  # an export without annotations names no controls
    output = tmp_path / "out" / "predictions.json"
    file_args = _args(
        tiny_model_dir, annotations=str(export), output=str(output), label_config=str(config),
        local_files_root=str(label_studio.files_root),
    )  # fmt: skip
    assert run_preannotate(file_args, environ={}).outcomes == {"predicted": 1}
    (task,) = json.loads(output.read_text())
    assert task["data"] == {"audio": "/data/local-files/?d=preannotate-whole/hello.wav"}
    assert task["predictions"][0]["result"] == prediction["result"]
    assert run_preannotate(file_args, environ={}).outcomes == {"already_predicted": 1}  # resumed, kept
    assert json.loads(output.read_text()) == [task]

    # a CTranslate2 export (faster-whisper gives each segment's mean log-probability)
    ct2 = to_ctranslate2(CTranslate2Arguments(str(tiny_model_dir), str(tmp_path / "ct2"), "float32"))
    ct2_args = _args(ct2, annotations=str(export), output=str(tmp_path / "ct2.json"),
                     label_config=str(config), local_files_root=str(label_studio.files_root))  # fmt: skip
    by_ct2 = run_preannotate(ct2_args, environ={})
    assert by_ct2.outcomes == {"predicted": 1} and " weights " in by_ct2.model_version
    ((ct2_prediction,),) = (t["predictions"] for t in json.loads((tmp_path / "ct2.json").read_text()))
    assert ct2_prediction["model_version"] == by_ct2.model_version != summary.model_version
    assert all(0 < r["score"] <= 1 for r in ct2_prediction["result"])

    imported = label_studio.create_project("preannotate imported", WHOLE_FILE_CONFIG)
    label_studio.import_tasks(imported, [task])
    ((copy,),) = _predictions(label_studio, imported).values()
    assert copy["model_version"] == summary.model_version and copy["result"] == prediction["result"]
