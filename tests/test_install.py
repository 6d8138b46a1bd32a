"""The package installed editable (as scripts/setup_env.sh installs it) puts its commands on PATH, and they
run from any folder. Installed into a virtual environment of the test's own, which sees the shared one's
packages through a .pth line: the environment the tests run in is never modified."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with only this package installed in it (editable, no index, no build isolation)."""
    venv = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "shared-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, "--no-build-isolation", "-e", str(REPO)], check=True, capture_output=True)
    return venv


def test_console_scripts_are_installed_and_import_from_another_folder(installed, tmp_path):
    """Every console script of pyproject.toml resolves to its function (one process loads them all)."""
    assert set(SCRIPTS) == {f"whisper-{name}" for name in ("prepare", "train", "evaluate", "export",
                                                           "transcribe", "preannotate", "demo")}  # fmt: skip
    assert all((installed / "bin" / name).is_file() for name in SCRIPTS)
    check = (
        "from importlib.metadata import entry_points\n"
        "scripts = entry_points(group='console_scripts')\n"
        f"print(sorted(s.name for s in scripts if s.name in {sorted(SCRIPTS)!r} and callable(s.load())))"
    )
    loaded = subprocess.run(
        [str(installed / "bin" / "python"), "-c", check], cwd=tmp_path, capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == repr(sorted(SCRIPTS))


@pytest.mark.parametrize("name", ["whisper-export", "whisper-prepare"])
def test_console_script_help_from_another_folder(installed, tmp_path, name):
    """Two of them run for real (the export's help lists its commands; prepare starts its fork server)."""
    ran = subprocess.run(
        [str(installed / "bin" / name), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"usage: {name}")
    assert not list(tmp_path.iterdir())  # nothing written where it ran
