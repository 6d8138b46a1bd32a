"""An output that cannot be written is one line and exit code 2 in every command, before any work: no
model loaded, no cache read, no prediction generated (no progress bar on stderr)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.disk import read_only
from whisper_pipeline.demo import run as demo
from whisper_pipeline.errors import OutputError
from whisper_pipeline.inference import evaluate, export, transcribe
from whisper_pipeline.prepare import run as prepare
from whisper_pipeline.train import run as train
from whisper_pipeline.writable import check_writable


def commands(model: Path, cache: Path, audio: Path, out: str) -> dict[str, tuple]:
    """Each command with valid inputs (the work would start) and `out` as its output."""
    model_flag = ["--model", str(model)]
    return {
        "prepare": (prepare.main, ["--annotations", "export.json", *model_flag, "--output-dir", out]),
        "train": (train.main, [*model_flag, "--data-dir", str(cache), "--output-dir", out]),
        "evaluate": (evaluate.main, [*model_flag, "--data-dir", str(cache), "--output-dir", out]),
        "merge": (export.main, ["merge", *model_flag, "--adapter", str(model), "--output", out]),
        "ctranslate2": (export.main, ["ctranslate2", *model_flag, "--output", out]),
        "transcribe": (transcribe.main, [str(audio), *model_flag, "--output", out]),
        "transcribe --output-dir": (transcribe.main, [str(audio), *model_flag, "--output-dir", out]),
        "demo": (demo.main, ["--tiny", *model_flag, "--workdir", out]),
    }


@pytest.mark.parametrize(
    "name",
    ["prepare", "train", "evaluate", "merge", "ctranslate2", "transcribe", "transcribe --output-dir", "demo"],
)
def test_output_under_a_file_is_one_line_before_any_work(
    name, tiny_model_dir, prepared_cache, speech_clips, tmp_path, capsys
):
    blocker = tmp_path / "results"
    blocker.write_text("a regular file, not a folder\n")
    out = str(blocker / "out")
    audio = speech_clips[0].paths["wav"]
    main, argv = commands(tiny_model_dir, prepared_cache, audio, out)[name]
    assert main(argv) == 2
    flag = argv[argv.index(out) - 1]
    captured = capsys.readouterr()
    assert captured.err == f"error: {flag} {out} cannot be written: {blocker} is a file, not a folder\n"
    assert not captured.out
    assert blocker.read_text() == "a regular file, not a folder\n"


def test_missing_adapter_is_refused_before_the_base_model_is_evaluated(
    tiny_model_dir, prepared_cache, tmp_path, capsys
):
    out = tmp_path / "evaluation"
    argv = ["--model", str(tiny_model_dir), "--data-dir", str(prepared_cache), "--output-dir", str(out)]
    assert evaluate.main([*argv, "--adapter", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: --adapter {tmp_path / 'missing'}: no such directory\n"  # no progress bar
    assert not out.exists()


def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    refused = rf"cannot be written: {re.escape(str(folder))}: (Permission denied|Operation not permitted)$"
    with read_only(folder):  # chmod for a user, chattr +i for root: neither may add an entry
        with pytest.raises(OutputError, match=refused):
            check_writable(folder / "outputs" / "adapter", "--output-dir")
        with pytest.raises(OutputError, match=refused):
            check_writable(folder / "out.srt", "--output", folder=False)


def test_writable_outputs_pass_and_leave_nothing(tmp_path):
    check_writable(tmp_path / "new" / "deeper", "--output-dir")
    check_writable(tmp_path / "out.txt", "--output", folder=False)
    assert list(tmp_path.iterdir()) == []  # neither folders made nor probe files left
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "file", "--output-dir")
    with pytest.raises(OutputError, match="is a folder, not a file"):
        check_writable(tmp_path, "--output", folder=False)
