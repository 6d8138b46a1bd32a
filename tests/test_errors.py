"""How a command ends: one line for the user's mistakes, the exit code it returned otherwise."""

from __future__ import annotations

import subprocess
import sys

from whisper_pipeline.errors import EXIT_USER_ERROR, ConfigError, exit_on_user_error


def test_a_user_error_is_one_line_and_its_exit_code(capsys):
    @exit_on_user_error
    def main() -> int:
        raise ConfigError("--seed must be an integer")

    assert main() == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: --seed must be an integer\n"


def test_exit_without_collecting_keeps_the_exit_code_and_what_was_printed(tmp_path):
    script = (
        "from whisper_pipeline.errors import exit_without_collecting\n"
        "class Cycle:\n"
        "    def __init__(self): self.me = self\n"
        "cycles = [Cycle() for _ in range(1000)]\n"
        "print('done', flush=False)\n"
        "exit_without_collecting(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (3, "done\n")
