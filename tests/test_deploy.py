"""Static checks of what runs on GPU hosts: run_pipeline.sh (shellcheck), Dockerfile (hadolint), compose."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_ENV = {
    "MIG_DEVICE_UUID": "MIG-4f9c2a1e-0000-5000-8000-000000000001",
    "CA_BUNDLE_FILE": "./certs/ca.pem",
    "PREPARE_CONFIG": "configs/prepare.yaml",
    "TRAIN_CONFIG": "configs/train.yaml",
}


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
    project = tmp_path / "project"
    shutil.copytree(
        REPO, project, ignore=shutil.ignore_patterns(".venv", ".git", "model", "outputs", "demo_data")
    )
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
    assert pipeline["environment"]["AWS_CA_BUNDLE"] == "/certs/ca.pem"
    # Debian's docker-compose prints short volume and port syntax: host:container[:mode].
    assert any(v.endswith(":/certs/ca.pem:ro") for v in pipeline["volumes"]), pipeline["volumes"]
    assert any(v.endswith(":/app/model:ro") for v in pipeline["volumes"]), pipeline["volumes"]
    (port,) = config["services"]["tensorboard"]["ports"]
    assert str(port).startswith("127.0.0.1:"), port
    assert config["services"]["tensorboard"]["profiles"] == ["tensorboard"]


def test_compose_names_a_missing_required_variable(tmp_path):
    env = {key: value for key, value in COMPOSE_ENV.items() if key != "MIG_DEVICE_UUID"}
    result = _compose(tmp_path, env)
    assert result.returncode != 0
    assert "MIG_DEVICE_UUID" in result.stderr


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
