"""The Docker image and compose file, run for real: `make test-container` (marked `container`, not in `make
test`: building the image takes minutes).

What a user does on a GPU host, on this CPU machine: the same Dockerfile on a local Debian bookworm base
(debootstrap + docker import, kept as an image for later runs) with a CPU torch from the machine's wheel
folder and its CA bundle (build-extras/), `docker compose up pipeline` with docker-compose.cpu.yml as a
non-root host user with fresh folders, against moto S3 over TLS with a private CA on the tiny model:
prepare and training; `docker compose stop` mid-training leaves a checkpoint that the next `up` resumes.
Needs a running Docker engine (Debian's docker.io: `dockerd --storage-driver vfs &`) and debootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.checkout import copy_checkout

# Building the image on the vfs storage driver takes minutes per layer: past the suite's 600 s timeout.
pytestmark = [pytest.mark.e2e, pytest.mark.container, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "whisper-pipeline-base:bookworm"
IMAGE_TAG = "container-test"
PROJECT = "wpcontainertest"
STEPS_AFTER_RESUME = 3


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def _compose_command() -> list[str]:
    """`docker compose` (the plugin) where it exists, else Debian's `docker-compose`."""
    if _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    assert found, "neither `docker compose` nor docker-compose is installed"
    return [found]


def ensure_base_image() -> None:
    """A Debian bookworm image made here (no registry): debootstrap minbase, imported once, then reused."""
    if _run(["docker", "image", "inspect", BASE_IMAGE]).returncode == 0:
        return
    assert shutil.which("debootstrap"), "debootstrap is missing: apt-get install debootstrap"
    with tempfile.TemporaryDirectory(prefix="bookworm-") as root:
        result = _run(["debootstrap", "--variant=minbase", "bookworm", root, "http://deb.debian.org/debian"])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True
        )
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr


def _local_torch_wheel() -> Path:
    """The CPU torch wheel of the machine's pip wheel folder (PIP_FIND_LINKS / pip's find-links)."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = _run(["pip", "config", "list"]).stdout if shutil.which("pip") else ""
    folders += [line.split("=", 1)[1].strip("'") for line in listed.splitlines() if "find-links" in line]
    wheels = [wheel for folder in folders for wheel in Path(folder).glob("torch-2.13.0+cpu-*.whl")]
    assert wheels, f"no torch-2.13.0+cpu wheel in the pip wheel folders {folders}"
    return wheels[0]


def _host_user() -> tuple[int, int]:
    """The invoking user, or a non-root stand-in when the tests run as root."""
    return (os.getuid(), os.getgid()) if os.getuid() else (4242, 4242)


class Deployment:
    """A fresh copy of the project, as a user has it after `git clone` + .env + `make up`'s folders."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.compose = _compose_command()

    def write_env(self, **changes: str | None) -> None:
        settings = {**self.env, **changes}
        text = "".join(f"{key}={value}\n" for key, value in settings.items() if value is not None)
        (self.root / ".env").write_text(text)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return _run([*self.compose, *args], cwd=self.root, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.compose, *args], cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def exit_code(self) -> int:
        container = self.run("ps", "-q", "pipeline").stdout.strip()
        return int(_run(["docker", "inspect", "-f", "{{.State.ExitCode}}", container]).stdout)

    def train_logs(self) -> list[Path]:
        return sorted((self.root / "outputs" / "logs").glob("train-*.log"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model_dir, staged_corpus, s3_tls_server):
    assert _run(["docker", "info"]).returncode == 0, "no Docker engine: dockerd --storage-driver vfs &"
    ensure_base_image()
    root = tmp_path_factory.mktemp("clone") / "whisper-pipeline"
    copy_checkout(root)
    os.link(_local_torch_wheel(), root / "build-extras" / _local_torch_wheel().name)
    ca_bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copy(ca_bundle, root / "build-extras" / "ca-bundle.crt")  # pip's trust behind this TLS proxy
    shutil.copytree(tiny_model_dir, root / "model")
    uid, gid = _host_user()
    for folder in ("processed_data", "outputs", "adapters"):  # what `make up` creates as the user
        (root / folder).mkdir()
        os.chown(root / folder, uid, gid)
    (root / "configs" / "container_prepare.yaml").write_text(
        yaml.safe_dump(
            {
                "annotations": staged_corpus.annotations_uri,
                "model": "./model",
                "output_dir": "processed_data",
                "val_fraction": 0.25,
                "augment_copies": 1,
            }
        )
    )
    # No scheduled evaluation or save: the only checkpoint before the end is the one the stop writes.
    (root / "configs" / "container_train.yaml").write_text(
        yaml.safe_dump(
            {
                "model": "./model",
                "data_dir": "processed_data",
                "output_dir": "outputs",
                "max_steps": 100000,
                "per_device_train_batch_size": 2,
                "per_device_eval_batch_size": 8,
                "lora_r": 4,
                "lora_alpha": 8,
                "eval_strategy": "no",
                "save_strategy": "no",
                "load_best_model_at_end": False,
                "eval_on_start": False,
                "logging_steps": 1,
                "disable_tqdm": True,
                "generation_max_length": 16,
            }
        )
    )
    env = {
        **s3_tls_server.env(staged_corpus.bucket),
        "AWS_CA_BUNDLE": "/certs/ca.pem",
        "CA_BUNDLE_FILE": str(s3_tls_server.ca_bundle),
        "HOST_UID": str(uid),
        "HOST_GID": str(gid),
        "PREPARE_CONFIG": "configs/container_prepare.yaml",
        "TRAIN_CONFIG": "configs/container_train.yaml",
        "COMPOSE_FILE": "docker-compose.yml:docker-compose.cpu.yml",
        "COMPOSE_PROJECT_NAME": PROJECT,
        "BASE_IMAGE": BASE_IMAGE,
        "TORCH_INDEX_URL": "https://pypi.org/simple",  # torch's dependencies; torch itself: build-extras/
        "IMAGE_TAG": IMAGE_TAG,
        # vfs copies the image's 3.6 GB into each new container: minutes, past compose's 60 s default.
        "COMPOSE_HTTP_TIMEOUT": "900",
    }
    deployment = Deployment(root, env)
    deployment.write_env()
    started = time.monotonic()
    built = deployment.run("build", "pipeline", timeout=3600)
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    print(f"\nimage built in {time.monotonic() - started:.0f} s")
    yield deployment
    deployment.write_env()
    deployment.run("down", "--volumes")


@pytest.fixture(scope="module")
def stopped_and_resumed(deployment):
    """`up` until training logs its first loss, `stop`, then `up` again to the end."""
    started = time.monotonic()
    first = deployment.popen("up", "pipeline")
    deadline = time.monotonic() + 900
    # TensorBoard's event file is opened when training begins, after the stop handler is in place.
    while not list((deployment.root / "outputs").glob("runs/*/events.*")) and first.poll() is None:
        assert time.monotonic() < deadline, "training did not start in 15 minutes"
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-5000:]
    stopped = deployment.run("stop", "pipeline")
    first_output = first.communicate(timeout=600)[0]
    assert stopped.returncode == 0, stopped.stderr
    first_code = deployment.exit_code()
    print(f"first up (prepare + training until stopped): {time.monotonic() - started:.0f} s")
    # The configs are mounted: the next run's shorter max_steps needs no rebuild.
    (checkpoint,) = (deployment.root / "outputs").glob("checkpoint-*")
    config = deployment.root / "configs" / "container_train.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["max_steps"] = int(checkpoint.name.split("-")[1]) + STEPS_AFTER_RESUME
    config.write_text(yaml.safe_dump(settings))
    started = time.monotonic()
    second = deployment.run("up", "--exit-code-from", "pipeline", "pipeline", timeout=1200)
    print(f"second up (cache current, resumed training): {time.monotonic() - started:.0f} s")
    return first_code, first_output, second


def test_stop_mid_training_leaves_a_checkpoint_that_the_next_up_resumes(deployment, stopped_and_resumed):
    first_code, first_output, second = stopped_and_resumed
    assert first_code == 143, first_output[-5000:]
    first_log = deployment.train_logs()[0].read_text()
    (stop_line,) = [line for line in first_log.splitlines() if line.startswith("error: stopped by SIGTERM")]
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-5000:]
    assert "cache is current" in second.stdout
    outputs = deployment.root / "outputs"
    config = yaml.safe_load((outputs / "train_config.yaml").read_text())
    checkpoint = config["resolved"]["resume_from_checkpoint"]
    assert checkpoint == f"outputs/{Path(checkpoint).name}" and f"{Path(checkpoint).name} saved" in stop_line
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == int(Path(checkpoint).name.split("-")[1]) + STEPS_AFTER_RESUME
    assert (outputs / "adapter" / "adapter_model.safetensors").is_file()


def test_everything_the_runs_wrote_belongs_to_the_host_user(deployment, stopped_and_resumed):
    uid, gid = _host_user()
    written = [
        path for folder in ("processed_data", "outputs") for path in (deployment.root / folder).rglob("*")
    ]
    assert len(written) > 20
    strangers = [str(path) for path in written if (path.stat().st_uid, path.stat().st_gid) != (uid, gid)]
    assert not strangers, strangers[:5]


def test_the_image_keeps_neither_the_build_ca_nor_the_wheels(deployment, stopped_and_resumed):
    """Read from the run's own container: docker cp needs no new one (on vfs a new one costs minutes)."""
    container = deployment.run("ps", "-q", "pipeline").stdout.strip()
    listing = subprocess.run(["docker", "cp", f"{container}:/tmp", "-"], capture_output=True, timeout=600)
    assert listing.returncode == 0, listing.stderr
    assert b"build-extras" not in listing.stdout and b"ca-bundle.crt" not in listing.stdout
    image = f"whisper-pipeline:{IMAGE_TAG}"
    user = _run(["docker", "image", "inspect", "-f", "{{.Config.User}}", image]).stdout.strip()
    assert user and not user.startswith(("0", "root"))


def test_a_missing_env_setting_is_one_line_naming_it(deployment, stopped_and_resumed):
    deployment.write_env(HOST_UID=None)
    result = deployment.run("up", "pipeline", timeout=120)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "set HOST_UID in .env" in lines[0], lines
