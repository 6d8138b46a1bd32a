#!/usr/bin/env bash
# Prepare a fresh machine: the Debian tools the pipeline and its tests call (when missing; chromium
# renders report.html in a test) and a virtual environment with the pinned requirements and this package,
# editable, with its commands (whisper-prepare, whisper-train, ...: pyproject.toml) on the venv's PATH
# (requirements re-installed only when a requirements file changes).
# Usage: scripts/setup_env.sh [requirements file]   (default: requirements-dev.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

requirements="${1:-requirements-dev.txt}"
venv="${VENV:-.venv}"

# command -> Debian package
declare -A debian_packages=(
  [espeak-ng]=espeak-ng [sox]=sox [ffmpeg]=ffmpeg [ffprobe]=ffmpeg
  [shellcheck]=shellcheck [docker-compose]=docker-compose [chromium]=chromium
)
missing=()
for tool in "${!debian_packages[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${debian_packages[$tool]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "Installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.requirements-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$requirements")"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$requirements"
  touch "$stamp"
fi

# The end-to-end tests run a real Label Studio: in a virtual environment of its own.
if [ "$requirements" = "requirements-dev.txt" ]; then
  scripts/setup_labelstudio.sh
fi

# Editable: the commands run this checkout's code (--no-deps: requirements.txt holds the pins); again when
# pyproject.toml (its commands) changes. Not into a venv linked from another checkout: that would point
# its commands here.
installed="$venv/.editable-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -L "$venv" ] && [ ! -f "$installed" ]; then
  "$venv/bin/python" -m pip install -q --no-deps -e .
  touch "$installed"
fi
