"""evaluate on a held-out export: the short-form score, and the long-form section on the export's whole
recordings (a recording of three utterances and a noise-only one)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.inference.evaluate import main
from whisper_pipeline.testing.synthetic import NOISE, LabelStudioExport, Utterance, encode_audio, noise

pytestmark = pytest.mark.e2e


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
