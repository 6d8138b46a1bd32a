"""evaluate on a held-out export: the short-form score, and the long-form section on the export's whole
recordings (a recording of three utterances and a noise-only one); on a real Label Studio (1.23.2)
server's project (--project), the CTranslate2 export reading its upload and local file as prepare did;
user mistakes as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.label_studio import LabelStudioServer, region_results
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.inference.evaluate import EvaluateArguments, main
from whisper_pipeline.inference.export import CTranslate2Arguments, to_ctranslate2
from whisper_pipeline.testing.synthetic import (
    NOISE,
    LabelStudioExport,
    Part,
    Utterance,
    compose,
    encode_audio,
    noise,
    synthesize,
)

pytestmark = pytest.mark.e2e
HELLO, WEATHER, THANKS = "Xin chào các bạn.", "Hôm nay trời đẹp quá.", "Cảm ơn bạn rất nhiều."
MAX_NEW_TOKENS = 8  # a random model writes up to Whisper's 448 tokens per window otherwise


def test_held_out_export_gets_short_and_long_form_scores(
    whisper_base_dir, multi_utterance_recording, tmp_path, capsys
):
    noise_only = tmp_path / "noise.wav"
    burst = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), noise(1.5, seed=3)])
    noise_only.write_bytes(encode_audio(burst, SAMPLE_RATE, "wav"))
    export = LabelStudioExport(seed=5)
    export.add_task(str(multi_utterance_recording.path), multi_utterance_recording.utterances)
    export.add_task(str(noise_only), [Utterance("", 0.5, 2.0, label=NOISE)])
    output = tmp_path / "evaluation"
    code = main(
        ["--model", str(whisper_base_dir), "--annotations", str(export.write(tmp_path / "heldout.json")),
         "--output-dir", str(output), "--language", "vi", "--max-new-tokens", "64"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    # each utterance scored alone (short-form); the noise-only clip is not scored there
    assert results["examples"] == sum(1 for u in multi_utterance_recording.utterances if u.text)
    (scores,) = results["long_form"].values()
    assert (scores["recordings"], scores["noise_recordings"]) == (1, 1)
    assert 0 <= scores["deletions"] <= 1 and 0 <= scores["coverage"] <= 1 and 0 <= scores["loops"] <= 1
    assert scores["noise_words"] >= 0 and scores["timestamp_error"] >= 0  # whisper-base finds the speech
    records = [json.loads(line) for line in (output / "long_form.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["audio"]) for r in records) == sorted(
        [("base", str(multi_utterance_recording.path)), ("base", str(noise_only))]
    )
    (speech,) = (r for r in records if r["audio"] == str(multi_utterance_recording.path))
    assert speech["reference"] == " ".join(u.text for u in multi_utterance_recording.utterances if u.text)
    assert "long-form" in (output / "evaluation.md").read_text() and "long-form" in capsys.readouterr().out


def _write(path: Path, samples: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(samples, SAMPLE_RATE, "wav"))
    return path


def test_a_label_studio_project_scored_with_its_uploads_read_by_the_ctranslate2_export(
    label_studio: LabelStudioServer, personal_access_token, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """--label-studio-url and --project ("ASR using Segments" template), the key a personal access token:
    the project's annotated regions are the utterances scored, each against its transcript. --ctranslate2
    reads their audio as prepare did: an upload (two regions: a recording kept whole too) and a local file
    through the server; from the cache alone, refused in one line until their roots are given."""
    staging = tmp_path / "staging"
    upload, upload_regions = compose([Part(synthesize(HELLO), HELLO), Part(synthesize(WEATHER), WEATHER)])
    local, local_regions = compose([Part(synthesize(THANKS), THANKS)])
    files = {
        "upload": (_write(staging / "upload.wav", upload), upload_regions),
        "local": (_write(label_studio.files_root / "evaluate" / "local.wav", local), local_regions),
    }
    template = label_studio.template("automatic-speech-recognition-using-segments")
    project = label_studio.create_project("evaluate", template)
    label_studio.add_local_storage(project, label_studio.files_root / "evaluate")
    label_studio.upload(project, files["upload"][0])
    kind_of: dict[str, str] = {}
    expected: set[tuple[str, str]] = set()
    for task in label_studio.tasks(project):
        uri = task["data"]["audio"]
        kind_of[uri] = "upload" if uri.startswith("/data/upload/") else "local"
        regions = files[kind_of[uri]][1]
        results = [region_results(f"r{i}", u.start, u.end, "Speech", u.text) for i, u in enumerate(regions)]
        label_studio.annotate(task["id"], [result for region in results for result in region])
        expected |= {(uri, u.text) for u in regions}
    assert sorted(kind_of.values()) == ["local", "upload"]
    ct2 = to_ctranslate2(CTranslate2Arguments(str(tiny_model_dir), str(tmp_path / "ct2"), "float32"))
    flags = ["--model", str(tiny_model_dir), "--language", "vi", "--ctranslate2", str(ct2)]
    flags += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--long-form-max-new-tokens", str(MAX_NEW_TOKENS)]
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", personal_access_token)

    output = tmp_path / "evaluation"
    server = ["--label-studio-url", label_studio.url, "--project", str(project)]
    code = main([*server, "--output-dir", str(output), *flags])
    assert code == 0, capsys.readouterr().err[-3000:]
    results = json.loads((output / "evaluation.json").read_text(encoding="utf-8"))
    assert results["examples"] == len(expected) == 3
    assert results["data"] == f"3 utterances of Label Studio project {project}"
    assert set(results["scores"]) == {"base", "ctranslate2"}
    records = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert sorted((r["audio_uri"], r["reference"]) for r in records) == sorted(expected)
    (upload_uri,) = (uri for uri, kind in kind_of.items() if kind == "upload")
    whole = [json.loads(line) for line in (output / "long_form.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["audio"]) for r in whole) == [
        ("base", upload_uri),
        ("ctranslate2", upload_uri),
    ]
    # what the export was given: the upload's own bytes, fetched through the server as evaluate fetches them
    _, access = EvaluateArguments(label_studio_url=label_studio.url, project=project).connect(os.environ)
    assert access.read(access.resolve(upload_uri)) == files["upload"][0].read_bytes()
    capsys.readouterr()

    # the same cache without the server: Label Studio's paths name no file until their roots are given
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    cached = ["--data-dir", str(output / "cache"), *flags]
    assert main([*cached, "--output-dir", str(tmp_path / "refused")]) == 2
    stderr = capsys.readouterr().err
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: cannot read /data/") and "(or --label-studio-url to fetch it)" in line
    assert "Traceback" not in stderr and "evaluating" not in stderr  # said before any model ran
    roots = [
        "--local-files-root",
        str(label_studio.files_root),
        "--upload-root",
        str(label_studio.upload_root),
    ]
    assert main([*cached, *roots, "--output-dir", str(tmp_path / "roots")]) == 0
    again = json.loads((tmp_path / "roots" / "evaluation.json").read_text(encoding="utf-8"))
    assert (again["examples"], set(again["scores"])) == (3, {"base", "ctranslate2"})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--project", "7"], "--project needs --label-studio-url (or LABEL_STUDIO_URL)"),
        (["--ctranslate2", "{model}"], "holds no model.bin"),
        (["--project", "7", "--annotations", "export.json"], "name two exports: give one"),
    ],
    ids=["project-without-server", "ctranslate2-not-an-export", "project-and-annotations"],
)
def test_user_mistakes_are_one_line_errors(flags, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    argv = ["--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "evaluation")]
    assert main([*argv, *(flag.format(model=tiny_model_dir) for flag in flags)]) == 2
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in stderr
