"""SIGTERM (docker stop) mid-training: a checkpoint of the last step, exit 143, and `--resume-from-checkpoint
auto` continues from it. A real train_model.py process on the tiny model gets the signal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Steps enough never to finish before the signal; no evaluation or scheduled save, so the only checkpoint
# is the one the stop writes.
FLAGS = [
    "--per-device-train-batch-size", "2", "--lora-r", "4", "--lora-alpha", "8",
    "--eval-strategy", "no", "--save-strategy", "no", "--load-best-model-at-end", "false",
    "--eval-on-start", "false", "--logging-steps", "1", "--disable-tqdm", "true",
    "--generation-max-length", "16", "--per-device-eval-batch-size", "8",
]  # fmt: skip


def _train(tiny_model_dir, prepared_cache, output_dir, *extra: str) -> list[str]:
    return [
        sys.executable, "train_model.py", "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
        "--output-dir", str(output_dir), *FLAGS, *extra,
    ]  # fmt: skip


def test_sigterm_saves_a_checkpoint_that_resume_auto_continues(tiny_model_dir, prepared_cache, tmp_path):
    output_dir = tmp_path / "outputs"
    log = tmp_path / "train.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = _train(tiny_model_dir, prepared_cache, output_dir, "--max-steps", "100000")
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        # TensorBoard's event file is opened when training begins, after the handler is in place.
        while not list(output_dir.glob("runs/*/events.*")) and process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    output = log.read_text()
    assert code == 128 + signal.SIGTERM, output[-3000:]
    (checkpoint,) = output_dir.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert step >= 1 and (checkpoint / "trainer_state.json").is_file()
    (error,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert f"checkpoint-{step} saved" in error and "--resume-from-checkpoint auto" in error
    assert "Traceback" not in output

    resumed = subprocess.run(
        [*_train(tiny_model_dir, prepared_cache, output_dir), "--max-steps", str(step + 2),
         "--resume-from-checkpoint", "auto"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    config = yaml.safe_load((output_dir / "train_config.yaml").read_text())
    assert config["resolved"]["resume_from_checkpoint"] == str(checkpoint)
    metrics = yaml.safe_load((output_dir / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == step + 2
