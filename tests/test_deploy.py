"""Checks of what runs on GPU hosts: run_pipeline.sh (shellcheck, its arguments and signals), Dockerfile
(hadolint), compose. The image itself runs in tests/e2e/test_container.py (`make test-container`)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.checkout import copy_checkout

REPO = Path(__file__).resolve().parents[1]
COMPOSE_ENV = {
    "MIG_DEVICE_UUID": "MIG-4f9c2a1e-0000-5000-8000-000000000001",
    "CA_BUNDLE_FILE": "./certs/ca.pem",
    "PREPARE_CONFIG": "configs/prepare.yaml",
    "TRAIN_CONFIG": "configs/train.yaml",
    "HOST_UID": "1234",
    "HOST_GID": "5678",
}
CPU = {"COMPOSE_FILE": "docker-compose.yml:docker-compose.cpu.yml"}


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is missing: run scripts/setup_env.sh"
    return found


@pytest.mark.parametrize(
    "script", ["run_pipeline.sh", "scripts/setup_env.sh", "scripts/setup_labelstudio.sh", ".ci/run"]
)
def test_shell_scripts_are_shellcheck_clean(script):
    result = subprocess.run([_tool("shellcheck"), script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_and_copies_no_secrets():
    lines = (REPO / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert not any(line.startswith(("COPY .env", "ADD .env")) for line in lines)
    assert not any(line.startswith("ENV") and "SECRET" in line for line in lines)


def _compose(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    project = copy_checkout(tmp_path / "project")
    (project / ".env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return subprocess.run(
        [_tool("docker-compose"), "config"], cwd=project, capture_output=True, text=True, timeout=60
    )


def test_compose_reserves_the_mig_device_mounts_the_ca_and_binds_tensorboard_to_localhost(tmp_path):
    result = _compose(tmp_path, COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    pipeline = config["services"]["pipeline"]
    (device,) = pipeline["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == [COMPOSE_ENV["MIG_DEVICE_UUID"]] and device["capabilities"] == ["gpu"]
    assert pipeline["user"] == "1234:5678" and pipeline["init"] is True
    assert pipeline["command"][-3:] == ["--", "--resume-from-checkpoint", "auto"]
    # Debian's docker-compose prints short volume and port syntax: host:container[:mode].
    assert any(v.endswith(":/certs/ca.pem:ro") for v in pipeline["volumes"]), pipeline["volumes"]
    assert any(v.endswith(":/app/model:ro") for v in pipeline["volumes"]), pipeline["volumes"]
    (port,) = config["services"]["tensorboard"]["ports"]
    assert str(port).startswith("127.0.0.1:"), port
    assert config["services"]["tensorboard"]["profiles"] == ["tensorboard"]


@pytest.mark.parametrize("name", ["MIG_DEVICE_UUID", "HOST_UID", "TRAIN_CONFIG"])
def test_compose_names_a_missing_required_variable(tmp_path, name):
    env = {key: value for key, value in COMPOSE_ENV.items() if key != name}
    result = _compose(tmp_path, env)
    assert result.returncode != 0
    assert f"set {name} in .env" in result.stderr


def test_ca_bundle_file_is_optional_and_the_cpu_file_reserves_no_gpu(tmp_path):
    env = {
        key: value for key, value in COMPOSE_ENV.items() if key not in ("CA_BUNDLE_FILE", "MIG_DEVICE_UUID")
    }
    result = _compose(tmp_path, {**env, **CPU})
    assert result.returncode == 0, result.stderr
    pipeline = yaml.safe_load(result.stdout)["services"]["pipeline"]
    assert "deploy" not in pipeline and pipeline["network_mode"] == "host"
    assert "/dev/null:/certs/ca.pem:ro" in pipeline["volumes"]


def test_every_path_the_configs_name_is_mounted_or_in_the_image(tmp_path):
    """configs/*.yaml run in the container from /app: each folder they name must be a mount or a COPY."""
    result = _compose(tmp_path, COMPOSE_ENV)
    volumes = yaml.safe_load(result.stdout)["services"]["pipeline"]["volumes"]
    mounted = {Path(volume.split(":")[1]) for volume in volumes}
    assert Path("/app/configs") in mounted  # edited configs need no rebuild
    copied = {
        Path("/app") / name
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for name in line.split()[1:-1]
    }
    for config in sorted(REPO.glob("configs/**/*.yaml")):
        values = yaml.safe_load(config.read_text())
        for key in ("model", "adapter", "data_dir", "output_dir"):
            if key in values and "://" not in str(values[key]):
                path = Path("/app") / values[key]
                assert any(path == root or root in path.parents for root in mounted | copied), (config, key)


def test_dockerfile_builds_a_torch_that_exists_with_build_arguments():
    text = (REPO / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in text  # torch 2.13: no cu128
    assert text.startswith("#") and "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert "bitsandbytes==" in (REPO / "requirements.txt").read_text()


def _recording_python(tmp_path: Path, body: str = "") -> Path:
    """A stand-in for python that records its arguments and working folder: run_pipeline.sh's own logic."""
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD|$*" >> "{tmp_path}/calls"\n{body}\n')
    fake.chmod(0o755)
    return fake


def _pipeline(tmp_path: Path, *args: str, python: Path, **kwargs):
    env = {**os.environ, "PYTHON": str(python)}
    return subprocess.Popen(
        ["bash", str(REPO / "run_pipeline.sh"), *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def test_run_pipeline_reads_relative_paths_from_the_callers_folder_and_routes_flags(tmp_path):
    python = _recording_python(tmp_path)
    process = _pipeline(
        tmp_path, "--prepare-config", "p.yaml", "--prepare-flag=--force", "--train-config=t.yaml",
        "--prepare-flag", "--num-workers", "--prepare-flag", "2", "--learning-rate", "3e-4", python=python,
    )  # fmt: skip
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    prepare, train = (tmp_path / "calls").read_text().splitlines()
    assert prepare == f"{tmp_path}|{REPO}/prepare_data.py p.yaml --force --num-workers 2"
    assert train == f"{tmp_path}|{REPO}/train_model.py t.yaml --learning-rate 3e-4"
    assert list((tmp_path / "outputs" / "logs").glob("train-*.log"))


@pytest.mark.parametrize("flag", ["--prepare-config", "--train-config", "--prepare-flag"])
def test_run_pipeline_flag_without_its_value_is_one_line_exit_2(tmp_path, flag):
    process = _pipeline(tmp_path, flag, python=_recording_python(tmp_path))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and stderr == f"run_pipeline.sh: {flag} needs a value (see --help)\n"
    assert not (tmp_path / "calls").exists()


def test_run_pipeline_help_is_the_usage_and_nothing_else(tmp_path):
    process = _pipeline(tmp_path, "--help", python=_recording_python(tmp_path))
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0 and not stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("Stage 1") and lines[-1].startswith("Environment:")
    assert not any(line.startswith(("set ", "#!")) or "usage()" in line for line in lines)


def test_run_pipeline_passes_sigterm_to_the_running_stage_and_returns_its_code(tmp_path):
    """docker stop: SIGTERM reaches the shell (PID 1 or tini's child); the stage gets it and ends as it
    chooses (training: a checkpoint, exit 143); the shell waits for it and exits with its code."""
    body = f'trap \'echo stopped >> "{tmp_path}/calls"; exit 143\' TERM\necho ready > "{tmp_path}/ready"\n'
    body += "while :; do sleep 0.1; done"
    process = _pipeline(tmp_path, python=_recording_python(tmp_path, body), start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "prepare failed with exit code 143" in stderr
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "stopped"


def test_env_example_documents_every_variable_the_code_and_compose_read():
    documented = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    required = {
        "S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "S3_BUCKET_NAME",
        "AWS_CA_BUNDLE",
        *COMPOSE_ENV,
    }
    assert required <= documented
