"""report.html: curves with the baseline, every evaluation and the best step, the worst utterances with a word
diff and a player where the audio can be fetched, every setting; opened in headless Chromium without a
console message (the file must render alone: no script, nothing fetched)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from whisper_pipeline.train.report import audio_player, render_report, word_diff, write_report

METRICS = {
    "baseline": {"step": 0, "loss": 3.2, "wer": 0.62},
    "evaluations": [{"step": 10, "loss": 2.1, "wer": 0.41}, {"step": 20, "loss": 1.9, "wer": 0.44}],
    "best": {"step": 10, "wer": 0.41},
    "train": {"global_step": 20, "loss_history": [{"step": s, "loss": 4.0 - s / 10} for s in range(1, 21)]},
}
SETTINGS = {"arguments": {"model": "./model", "learning_rate": 0.001}, "resolved": {"language": "vi"}}


def predictions(audio: Path) -> list[dict]:
    return [
        {"segment_id": f"{i}/0000", "audio_uri": uri, "start": 0.5, "end": 2.0, "reference": ref,
         "hypothesis": hyp, "normalized_wer": wer}
        for i, (uri, ref, hyp, wer) in enumerate([
            (str(audio), "xin chào các bạn", "xin chào bạn nhé", 0.5),
            ("s3://bucket/call.mp3", "hôm nay trời đẹp", "hôm nay trời đẹp", 0.0),
            ("s3://bucket/<b>odd</b>.wav", "one two three", "one too", 0.67),
        ])
    ]  # fmt: skip


def test_word_diff_marks_each_edit_on_normalized_words():
    assert word_diff("Xin chào các bạn.", "xin chào bạn") == "xin chào <del>các</del> bạn"
    assert word_diff("one two", "one two three") == "one two <ins>three</ins>"
    assert word_diff("one two", "one too") == "one <span class='sub'>two → too</span>"
    assert word_diff("", "hallucinated <text>") == "<ins>hallucinated &lt;text&gt;</ins>"


def test_audio_player_only_where_a_browser_can_fetch_the_source(tmp_path):
    local = audio_player(str(tmp_path / "a b.wav"), 1.0, 2.5)
    assert local.startswith("<audio controls") and "a%20b.wav#t=1.00,2.50" in local
    assert "<audio" not in audio_player("s3://bucket/call.mp3", 0, 1)  # no presigned credential in the file


def test_report_holds_curves_worst_utterances_and_settings(tmp_path):
    page = render_report(METRICS, predictions(tmp_path / "clip.wav"), SETTINGS)
    assert page.count("<svg") == 2
    assert page.count("stroke-dasharray") == 2  # the best step marked on both charts
    wer_points = re.findall(r"WER step (\d+): ([\d.]+)%", page)
    assert wer_points == [("0", "62.0"), ("10", "41.0"), ("20", "44.0")]  # baseline and every evaluation
    assert page.index("<code>2/0000") < page.index("<code>0/0000") < page.index("<code>1/0000")  # worst first
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page  # sources escaped
    assert "learning_rate" in page and "0.001" in page
    assert not re.search(r"<script|<link|https?://(?!www\.w3\.org/2000/svg)", page)  # nothing fetched


def test_report_renders_in_headless_chromium_without_console_messages(tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/setup_env.sh"
    path = write_report(tmp_path, METRICS, predictions(tmp_path / "clip.wav"), SETTINGS)
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()]  # fmt: skip
    ran = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert [line for line in ran.stderr.splitlines() if ":CONSOLE" in line] == []
    assert ran.stdout.count("<svg") == 2 and ran.stdout.count("<audio") == 1
