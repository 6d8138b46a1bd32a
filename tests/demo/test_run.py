"""The demo's own arguments: a count of nothing is refused before minutes of synthesis and training."""

import pytest

from whisper_pipeline.demo.run import main


@pytest.mark.parametrize(
    "flag", ["--long-recordings", "--heldout-sentences", "--transcribe-clips", "--recordings"]
)
def test_a_count_of_zero_is_one_line_exit_2(flag, tmp_path, capsys):
    assert main(["--workdir", str(tmp_path / "demo"), flag, "0"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip() == f"error: {flag} must be at least 1, got 0"
    assert not (tmp_path / "demo").exists()
